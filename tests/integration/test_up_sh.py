"""scripts/up.sh (`make up`), run for real against the built binaries, on free
ports and a temp DW_DATA_DIR: it restarts what dies (a service, nats-server,
a cluster node), stops everything on SIGINT (also while a restart is
pending), and leaves nothing readable at rest (the registry is encrypted by
default; DW_REGISTRY_KEY=none is the explicit opt-out).

Everything up.sh starts is found through its pid files ($DW_DATA_DIR/run);
every PID ever seen there is killed at cleanup if still alive, and up.sh's
own process group with it, also when a test fails.
"""
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import websockets

from harness import BIN, Stack, connect, recv_text, wait_until

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
UP = os.path.join(REPO, "scripts", "up.sh")
SERVICES = ("registry", "dispatcher", "deadletter", "api", "edge")


def free_block(n, avoid=()):
    """A base port with n consecutive free loopback ports (none in avoid)."""
    for _ in range(500):
        base = random.randrange(20000, 60000 - n)
        if any(p in avoid for p in range(base, base + n)):
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports")


def http_status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def pid_alive(pid):
    """True while pid names a process that has not exited (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class UpStack:
    """One scripts/up.sh --no-build in its own session, output in a file."""

    def __init__(self, nodes=1, env=None):
        self.dir = tempfile.mkdtemp(prefix="dw-up-")
        self.data = os.path.join(self.dir, "data")
        self.run = os.path.join(self.data, "run")
        self.nodes = nodes
        self.port = free_block(14)                       # edge, mgmt, status +10..+13
        used = set(range(self.port, self.port + 14))
        self.nats_port = free_block(nodes, used)
        used |= set(range(self.nats_port, self.nats_port + nodes))
        self.env = dict(os.environ)
        for k in list(self.env):                         # nothing of the caller's stack
            if k.startswith("DW_") and k not in ("DW_SANITIZE",):
                del self.env[k]
        self.env.update({
            "DW_PORT": str(self.port), "DW_NATS_PORT": str(self.nats_port),
            "DW_DATA_DIR": self.data, "DW_NATS_NODES": str(nodes),
            "DW_BUILD_DIR": os.path.dirname(os.path.abspath(BIN)),
        })
        if nodes > 1:
            self.route_port = free_block(nodes, used)
            used |= set(range(self.route_port, self.route_port + nodes))
            self.http_port = free_block(nodes, used)
            self.env.update({"DW_NATS_ROUTE_PORT": str(self.route_port),
                             "DW_NATS_HTTP_PORT": str(self.http_port)})
        self.env.update(env or {})
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.nats_url = ",".join(f"nats://127.0.0.1:{self.nats_port + i}" for i in range(nodes))
        self.out_path = os.path.join(self.dir, "up.out")
        self.p = None
        self.seen = {}            # pid -> process name, every pid file ever read
        self.nats_names = ["nats"] if nodes == 1 else [f"nats{i}" for i in range(1, nodes + 1)]

    # -- running it --------------------------------------------------------

    def start(self, timeout=90):
        self.close_output()
        ups = self.output().count("DynamoWave is up")   # a second start appends
        self.out = open(self.out_path, "ab")
        self.p = subprocess.Popen(["bash", UP, "--no-build"], cwd=REPO, env=self.env,
                                  stdout=self.out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: self.output().count("DynamoWave is up") > ups or self.p.poll() is not None,
                   timeout, "up.sh to say the stack is up", interval=0.1)
        assert self.p.poll() is None, f"up.sh exited {self.p.returncode}:\n{self.output()[-4000:]}"
        self.pids()
        return self

    def output(self):
        try:
            with open(self.out_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def up_lines(self):
        return [ln for ln in self.output().splitlines() if ln.startswith("up.sh: ")]

    def pid(self, name):
        try:
            with open(os.path.join(self.run, f"{name}.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        self.seen[pid] = name
        return pid

    def pids(self):
        """{name: pid} of every process up.sh runs now (by its pid files)."""
        out = {}
        for f in os.listdir(self.run) if os.path.isdir(self.run) else []:
            if f.endswith(".pid") and f != "up.pid":
                pid = self.pid(f[:-4])
                if pid:
                    out[f[:-4]] = pid
        return out

    def restarts(self):
        try:
            with open(os.path.join(self.run, "restarts")) as f:
                return {a: int(b) for a, b in (ln.split() for ln in f if ln.strip())}
        except OSError:
            return {}

    def dwctl(self, *args, check=True, timeout=30):
        env = dict(self.env, DW_NATS_URL=self.nats_url, DW_NATS_USER="dwctl",
                   DW_NATS_PASSWORD_FILE=os.path.join(self.data, "secrets", "nats_dwctl"))
        r = subprocess.run([os.path.join(BIN, "dwctl"), *args], env=env, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode:
            raise AssertionError(f"dwctl {' '.join(args)}: {r.returncode} {r.stderr}")
        return r

    def ready(self):
        return (http_status(self.port, "/readyz") == 200
                and self.dwctl("status", "--timeout-ms", "1000", check=False).returncode == 0)

    def wait_restarted(self, name, old_pid, timeout=20):
        """The new PID of name, once its pid file names a live process other than old_pid."""
        def new():
            pid = self.pid(name)
            return pid if pid and pid != old_pid and pid_alive(pid) else None
        try:
            return wait_until(new, timeout, f"{name} to be restarted", interval=0.05)
        except AssertionError:
            os.system(f"ps -o pid,stat,time,wchan:20,cmd --ppid {self.p.pid} | grep -v tail; cat /proc/{self.p.pid}/stat; cat /proc/{self.p.pid}/wchan; echo; cat /proc/{self.p.pid}/status | grep -i sig")
            raise

    def stop(self, sig=signal.SIGINT, timeout=60, group=False):
        """Signal up.sh (group: its whole process group, as Ctrl-C in a
        terminal does) and wait for it; its exit status."""
        if self.p and self.p.poll() is None:
            if group:
                os.killpg(self.p.pid, sig)
            else:
                self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.p.poll() if self.p else None

    def leftovers(self):
        return {pid: name for pid, name in self.seen.items() if pid_alive(pid)}

    def sanitizer_reports(self):
        found = []
        log_dir = os.path.join(self.data, "log")
        for f in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
            with open(os.path.join(log_dir, f), errors="replace") as fh:
                found += [f"{f}: {ln.strip()}" for ln in fh
                          if any(m in ln for m in Stack.SANITIZER_MARKS)]
        return found

    def close_output(self):
        if getattr(self, "out", None):
            self.out.close()
            self.out = None

    def cleanup(self):
        """Whatever happened: nothing of this stack keeps running, no temp dir stays."""
        try:
            self.pids()
            if self.p and self.p.poll() is None:
                self.stop(signal.SIGTERM, 40)
            if self.p:
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self.p.wait(10)
            for pid, name in self.leftovers().items():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read()
                except OSError:
                    continue
                if (b"nats-server" if name.startswith("nats") else name.encode()) in cmd:
                    os.kill(pid, signal.SIGKILL)
        finally:
            self.close_output()
            shutil.rmtree(self.dir, ignore_errors=True)


async def chat_round(url, text, n=2, ua=None, conns=None, during=None):
    """n plain (AWS protocol) clients; one sends text, every one receives
    it; then during() runs (in a thread) while they are still connected."""
    kw = {"user_agent_header": ua} if ua else {}
    clients = [await connect(url, **kw) for _ in range(n)]
    try:
        if conns:
            await asyncio.to_thread(conns, n)
        await clients[0].send(json.dumps({"action": "sendmessage", "message": text}))
        for ws in clients:
            assert await recv_text(ws) == text
        if during:
            return await asyncio.to_thread(during)
    finally:
        for ws in clients:
            await ws.close()


class UpShTest(unittest.TestCase):
    maxDiff = None

    def up(self, nodes=1, env=None):
        st = UpStack(nodes, env)
        self.addCleanup(st.cleanup)
        self.addCleanup(self._report, st)
        return st.start()

    def _report(self, st):
        if self._outcome.result and (self._outcome.result.failures or self._outcome.result.errors):
            print(f"--- up.sh output ({st.out_path}) ---\n{st.output()[-6000:]}")

    def conns_at_least(self, st, timeout=20):
        def wait(n):
            def count():
                r = st.dwctl("conn", "list", "--json", check=False)
                return r.returncode == 0 and len([ln for ln in r.stdout.splitlines() if ln.strip()]) >= n
            wait_until(count, timeout, f"{n} connections in the registry", interval=0.05)
        return wait

    def chat(self, st, text, conns_timeout=20, **kw):
        return asyncio.run(asyncio.wait_for(
            chat_round(st.url, text, conns=self.conns_at_least(st, conns_timeout), **kw), 60))

    def chat_until(self, st, text, timeout=30):
        """Chat works again within timeout. Each try is a fresh pair of
        clients that gives up after 8 s: a client whose connect event could
        not be stored (no stream leader yet) is closed by the edge or never
        listed, and waiting longer for it shows nothing."""
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                self.chat(st, text, conns_timeout=8)
                return time.monotonic() - t0, tries
            except (AssertionError, OSError, asyncio.TimeoutError,
                    websockets.exceptions.WebSocketException) as e:
                print(f"chat try {tries} failed after {time.monotonic() - t0:.2f} s: {e!r}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"chat did not work again within {timeout}s "
                                         f"({tries} tries): {e!r}")

    def assert_restart_line(self, st, name, sig, count, attempt=r"\d+", delay=r"[0-9.]+"):
        pat = re.compile(rf"^up\.sh: {name} exited \(killed by {sig}\) after [0-9.]+ s: "
                         rf"restart {count} \(attempt {attempt} in a row\) in {delay} s")
        wait_until(lambda: any(pat.search(ln) for ln in st.up_lines()), 10,
                   f"the restart line of {name}")

    def test_a_service_and_nats_server_killed_are_restarted(self):
        # Backoff back to its start after 3 s up (60 s by default).
        st = self.up(env={"DW_RESTART_RESET_S": "3"})
        self.chat(st, "before")
        self.assertEqual(set(st.pids()), {"nats", *SERVICES})
        self.assertEqual(set(st.restarts().values()), {0})

        # (a) kill -9 the dispatcher: a new PID, ready again, counted, logged.
        old = st.pid("dispatcher")
        os.kill(old, signal.SIGKILL)
        new = st.wait_restarted("dispatcher", old)
        self.assertNotEqual(new, old)
        self.assert_restart_line(st, "dispatcher", "SIGKILL", 1)
        self.assertEqual(st.restarts()["dispatcher"], 1)
        wait_until(lambda: http_status(st.port + 13, "/readyz") == 200, 20, "dispatcher /readyz")
        wait_until(st.ready, 20, "dwctl status to say ready", interval=0.2)
        self.chat(st, "after the dispatcher")
        # Killed again at once, twice: the wait doubles each time.
        for n, delay in ((2, "1.0"), (3, "2.0")):
            old = st.pid("dispatcher")
            os.kill(old, signal.SIGKILL)
            st.wait_restarted("dispatcher", old)
            up_since = time.monotonic()
            self.assert_restart_line(st, "dispatcher", "SIGKILL", n, attempt=n, delay=delay)
        self.assertEqual(st.restarts()["dispatcher"], 3)
        wait_until(lambda: http_status(st.port + 13, "/readyz") == 200, 20, "dispatcher /readyz")

        # (b) kill -9 nats-server: back on the same port and store, the
        # services reconnect by themselves, new clients chat again.
        old = st.pid("nats")
        os.kill(old, signal.SIGKILL)
        st.wait_restarted("nats", old)
        self.assert_restart_line(st, "nats", "SIGKILL", 1)
        self.assertEqual(st.restarts()["nats"], 1)
        wait_until(st.ready, 30, "the stack to be ready after nats-server came back", interval=0.2)
        took, tries = self.chat_until(st, "after nats-server")
        print(f"chat worked again {took:.2f} s after the stack said it was ready ({tries} tries)")
        # The same store: the three messages of before are still in DW_MSG.
        self.assertGreaterEqual(stream_messages(st, "DW_MSG"), 3)
        # No service died from the outage.
        self.assertEqual({k: v for k, v in st.restarts().items() if v},
                         {"dispatcher": 3, "nats": 1})
        # The dispatcher has been up longer than DW_RESTART_RESET_S (the
        # nats-server part took that long; if not, this waits): killed now,
        # it is back to the first delay.
        wait_until(lambda: time.monotonic() - up_since > 3.5, 10, "3.5 s since the last restart")
        old = st.pid("dispatcher")
        os.kill(old, signal.SIGKILL)
        st.wait_restarted("dispatcher", old)
        self.assert_restart_line(st, "dispatcher", "SIGKILL", 4, attempt=1, delay="0.5")
        self.assertEqual(st.stop(), 0)
        self.assertEqual(st.leftovers(), {})
        self.assertEqual(st.sanitizer_reports(), [])

    def test_sigint_while_a_restart_is_pending_and_nothing_readable_at_rest(self):
        # A 20 s first delay: the deadletter killed below is still waiting
        # for its restart when SIGINT comes.
        st = self.up(env={"DW_RESTART_DELAY_MS": "20000"})
        tag = f"{random.getrandbits(64):016x}"
        ua, text = f"dw-up-test-agent-{tag}", f"dw-up-test-text-{tag}"

        # (d) a known User-Agent and message text through real clients.
        conns = self.chat(st, text, ua=ua, during=lambda: st.dwctl("conn", "list", "--json").stdout)
        # They were stored: the registry had the agent, DW_MSG has the message.
        self.assertIn(ua, {json.loads(ln).get("userAgent") for ln in conns.splitlines() if ln.strip()})
        self.assertGreaterEqual(stream_messages(st, "DW_MSG"), 1)
        status = json.loads(st.dwctl("registry", "status", "--json").stdout)
        self.assertTrue(status["encrypted"], status)
        self.assertNotIn("plaintext", status["key_ids"])
        st.dwctl("registry", "checkpoint")
        key = os.path.join(st.data, "secrets", "registry_key")
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)

        # (c) Ctrl-C (SIGINT to up.sh's process group, as a terminal sends
        # it) while a restart is pending: everything stops, at once, and the
        # services' last lines still show (the log tails ignore SIGINT).
        before = st.pids()
        os.kill(before["deadletter"], signal.SIGKILL)
        self.assert_restart_line(st, "deadletter", "SIGKILL", 1)
        self.assertIsNone(st.pid("deadletter"))
        t0 = time.monotonic()
        self.assertEqual(st.stop(signal.SIGINT, group=True), 0, st.output()[-3000:])
        took = time.monotonic() - t0
        self.assertLess(took, 15, "the pending restart held up the stop")
        self.assertEqual(st.leftovers(), {}, "processes of the stack still running")
        self.assertEqual([ln for ln in st.up_lines() if "SIGKILL" in ln and "did not stop" in ln], [])
        out = st.output()
        self.assertIn("up.sh: stopped", out)
        self.assertRegex(out[out.index("up.sh: stopping"):], r"\nedge +\| .*msg=\"stopped\"")
        self.assertEqual(sorted(os.listdir(st.run)), ["restarts", "up.lock"])
        print(f"stopped {len(before)} processes in {took:.2f} s")

        found = grep_tree(st.data, [ua.encode(), text.encode()])
        self.assertGreater(found["files"], 10)
        self.assertTrue(found["checkpoints"], "no registry checkpoint on disk")
        self.assertEqual(found["hits"], [], "plaintext at rest")
        self.assertEqual(st.sanitizer_reports(), [])

    def test_registry_key_none_is_an_explicit_choice_and_a_later_start_seals_the_table(self):
        """The control for the test above: without the key the agent IS
        readable in the registry's files, so finding nothing there means
        something; and up.sh says so. The next start without
        DW_REGISTRY_KEY=none makes a key and seals that table
        (dwctl registry rotate-key): the agent leaves the table's files."""
        st = self.up(env={"DW_REGISTRY_KEY": "none", "DW_RESTART_DELAY_MS": "30000"})
        self.assertTrue(any("WARNING: DW_REGISTRY_KEY=none" in ln for ln in st.up_lines()))
        key = os.path.join(st.data, "secrets", "registry_key")
        self.assertFalse(os.path.exists(key))
        tag = f"{random.getrandbits(64):016x}"
        ua = f"dw-up-test-agent-{tag}"
        # A client still connected when its edge dies: its row stays in the
        # table, and the stack is stopped before the edge's restart.
        async def connected_then_edge_killed():
            ws = await connect(st.url, user_agent_header=ua)
            await asyncio.to_thread(self.conns_at_least(st), 1)
            status = await asyncio.to_thread(st.dwctl, "registry", "status", "--json")
            os.kill(st.pid("edge"), signal.SIGKILL)
            await asyncio.wait_for(ws.wait_closed(), 10)
            return json.loads(status.stdout)

        self.assertFalse(asyncio.run(connected_then_edge_killed())["encrypted"])
        self.assert_restart_line(st, "edge", "SIGKILL", 1)
        self.assertEqual(st.stop(), 0)
        self.assertEqual(st.leftovers(), {})
        db = os.path.join(st.data, "registry", "r0", "db")
        self.assertNotEqual(grep_tree(db, [ua.encode()])["hits"], [],
                            "the control found no plaintext: the grep proves nothing")

        del st.env["DW_REGISTRY_KEY"], st.env["DW_RESTART_DELAY_MS"]
        st.start()
        self.assertTrue(os.path.exists(key))
        self.assertTrue(any("sealing them (dwctl registry rotate-key)" in ln for ln in st.up_lines()),
                        st.up_lines())
        status = json.loads(st.dwctl("registry", "status", "--json").stdout)
        self.assertTrue(status["encrypted"], status)
        self.assertEqual(status["key_ids"], [status["key_id"]])
        self.assertEqual(st.stop(), 0)
        self.assertEqual(grep_tree(db, [ua.encode()])["hits"], [])


    def test_three_node_cluster_survives_a_node_killed(self):
        """DW_NATS_NODES=3: three nodes, streams at 3 replicas, every service
        given the three URLs; kill -9 of the node the edge is connected to
        (kept down 30 s by the restart delay): chat goes on, the node comes
        back and catches up."""
        st = self.up(nodes=3, env={"DW_RESTART_DELAY_MS": "30000"})
        names = {"nats1", "nats2", "nats3"}
        self.assertEqual(set(st.pids()), names | set(SERVICES))
        self.assertTrue(any(re.match(r"up\.sh: JetStream cluster of 3 nodes up, meta leader ", ln)
                            for ln in st.up_lines()))
        info = jsz(st, 1, "?streams=true&config=true")
        streams = {d["name"]: d for a in info["account_details"] for d in a["stream_detail"]}
        for name in ("DW_MSG", "DW_CONN", "DW_DLQ"):
            self.assertEqual(streams[name]["config"]["num_replicas"], 3, name)
        self.chat(st, "three nodes")

        # The node the edge is connected to.
        node = wait_until(lambda: next((i for i in (1, 2, 3) if "edge" in connz_names(st, i)), None),
                          10, "the edge's node")
        victim = f"nats{node}"
        old = st.pid(victim)
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()
        self.assert_restart_line(st, victim, "SIGKILL", 1)
        took, tries = self.chat_until(st, "one node down", timeout=25)
        down = st.pid(victim) is None
        print(f"{victim} (the edge's) killed: chat worked {time.monotonic() - t0:.2f} s later "
              f"({tries} tries), the node {'still down' if down else 'back already'}")
        self.assertTrue(down, "the node came back before chat was tried: nothing was shown")
        # The node is restarted on its port and store and rejoins.
        st.wait_restarted(victim, old, timeout=30)
        wait_until(lambda: (jsz(st, node) or {}).get("meta_cluster", {}).get("leader"), 30,
                   f"{victim} to see a meta leader again")
        self.chat(st, "node back")
        self.assertEqual({k: v for k, v in st.restarts().items() if v}, {victim: 1})
        self.assertEqual(st.stop(), 0)
        self.assertEqual(st.leftovers(), {})
        self.assertEqual(st.sanitizer_reports(), [])

def jsz(st, node, query=""):
    """A cluster node's /jsz (its monitoring port), or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{st.http_port + node - 1}/jsz{query}",
                                    timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def connz_names(st, node):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{st.http_port + node - 1}/connz",
                                    timeout=2) as r:
            return [c.get("name") for c in json.loads(r.read())["connections"]]
    except (OSError, ValueError):
        return []


def stream_messages(st, stream):
    return json.loads(st.dwctl("status", "--json").stdout)["streams"][stream]["messages"]


def grep_tree(top, needles):
    """Every file under top searched for every needle (raw bytes)."""
    hits, files, ckpts = [], 0, False
    for d, _, fs in os.walk(top):
        if "checkpoints" in d.split(os.sep) and fs:
            ckpts = True
        for f in fs:
            path = os.path.join(d, f)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            files += 1
            with open(path, "rb") as fh:
                data = fh.read()
            hits += [f"{os.path.relpath(path, top)}: {n.decode()}" for n in needles if n in data]
    return {"hits": hits, "files": files, "checkpoints": ckpts}


if __name__ == "__main__":
    unittest.main()
