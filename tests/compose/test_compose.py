"""The compose stack on a real Docker engine (make test-compose, part 2).

tests/compose/run.sh starts a Docker daemon of its own, builds the images
and then runs this script against it (DOCKER_HOST), which drives
docker-compose.yml as a user would and checks, step by step:

  image       non-root, no compilers, small; `docker run IMAGE edge --help`
  up          `docker-compose up -d`: every service healthy, nothing
              restarting, the registry encrypted
  aws-guide   the AWS guide's wscat steps (plain protocol) through the
              published port, and the management API on its port
  v1-room     a dynamowave.v1 room conversation with acks, history, resume
  scale       --scale edge=2 --scale dispatcher=2: clients on both edges,
              every message to every member, once
  faults      under a small load: one dispatcher stopped with `docker kill`
              and the other crashed (SIGKILL of its process), then nats
              crashed; the crashed ones restarted by the restart policy, the
              docker-killed one left stopped until `up`; every acked message
              reaches every member
  dwctl       `docker-compose run --rm dwctl status` and `dlq list`
  at-rest     the registry volume (table, WAL, checkpoints) and the JetStream
              volume hold neither a client's User-Agent nor a message text
  rotate-key  the registry key rotation of docs/security.md; at rest again
  down        `docker-compose down` leaves nothing running

Everything published listens on 127.0.0.1 only. Environment (set by run.sh):
DOCKER_HOST, DW_IMAGE, DW_NATS_IMAGE, DW_PROXY_IMAGE, DW_COMPOSE_PROJECT,
DW_COMPOSE_ENV_FILE (an empty file: a developer's .env must not leak in).
"""
import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from harness import await_until, connect, free_port, no_message, recv_text, wait_until  # noqa: E402

PROJECT = os.environ.get("DW_COMPOSE_PROJECT", "dwtest")
ENV_FILE = os.environ["DW_COMPOSE_ENV_FILE"]
IMAGE = os.environ["DW_IMAGE"]
DOCKER = os.environ.get("DW_DOCKER", "docker")
COMPOSE = os.environ.get("DW_DOCKER_COMPOSE", "docker-compose")
SERVICES = ["nats", "registry", "deadletter", "dispatcher", "api", "edge", "proxy"]
# Unique per run: what the at-rest scan looks for.
RUN_ID = secrets.token_hex(6)
USER_AGENT = f"dw-compose-witness/{RUN_ID}"
SECRET_TEXT = f"plaintext-canary-{RUN_ID}"
V1 = ["dynamowave.v1"]

TIMINGS = []


@contextlib.contextmanager
def step(name):
    print(f"--- {name}", flush=True)
    t0 = time.monotonic()
    yield
    dt = time.monotonic() - t0
    TIMINGS.append((name, dt))
    print(f"ok  {name} ({dt:.1f} s)", flush=True)


class Stack:
    """docker-compose.yml of this repository under one project name, on the
    daemon of DOCKER_HOST, with the ports published on free local ports."""

    def __init__(self):
        self.edge_port = free_port()
        self.api_port = free_port()
        self.env = dict(os.environ, DW_EDGE_PORT=str(self.edge_port), DW_API_PORT=str(self.api_port),
                        DW_EDGE_BIND="127.0.0.1", COMPOSE_PROJECT_NAME=PROJECT)
        self.url = f"ws://127.0.0.1:{self.edge_port}/"
        self.ctl = f"{PROJECT}_ctl"

    def compose(self, *args, check=True, timeout=300):
        argv = [COMPOSE, "--no-ansi", "-p", PROJECT, "--env-file", ENV_FILE,
                "-f", os.path.join(REPO, "docker-compose.yml"), *args]
        r = subprocess.run(argv, env=self.env, cwd=REPO, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({r.returncode}):\n"
                                 f"{r.stdout}{r.stderr}")
        return r

    def docker(self, *args, check=True, timeout=120):
        r = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def containers(self, service=None, all_=False):
        """Names of this project's containers (of one service), sorted."""
        args = ["ps", "--format", "{{.Names}}", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        if service:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        if all_:
            args.append("-a")
        return sorted(self.docker(*args).stdout.split())

    def inspect(self, name):
        return json.loads(self.docker("inspect", name).stdout)[0]

    def volume(self, name):
        """The host directory of one of the project's volumes."""
        return self.docker("volume", "inspect", "-f", "{{.Mountpoint}}", f"{PROJECT}_{name}").stdout.strip()

    def admin_token(self):
        with open(os.path.join(self.volume("secrets"), "admin_token")) as f:
            return f.read().strip()

    def health(self):
        """{container: (service, status, health, restarts)} of the
        long-running services (one `docker inspect` for all)."""
        names = self.containers(all_=True)
        out = {}
        for st in json.loads(self.docker("inspect", *names).stdout) if names else []:
            labels = st["Config"]["Labels"]
            if labels.get("com.docker.compose.service") in SERVICES and labels.get("com.docker.compose.oneoff") != "True":
                out[st["Name"].lstrip("/")] = (labels["com.docker.compose.service"], st["State"]["Status"],
                                               (st["State"].get("Health") or {}).get("Status"),
                                               st["RestartCount"])
        return out

    def wait_healthy(self, expect, timeout=180, what="every service healthy"):
        """Until exactly `expect` ({service: replicas}) containers run healthy."""
        def ok():
            h = self.health()
            for svc, n in expect.items():
                mine = [v for v in h.values() if v[0] == svc]
                if len(mine) != n or any(v[1:3] != ("running", "healthy") for v in mine):
                    return None
            return h
        return wait_until(ok, timeout, what, interval=1.0)

    def dwctl(self, *args, check=True):
        """dwctl in the long-running helper container (docker exec: a second,
        not the 10 s of a `docker-compose run`)."""
        r = self.docker("exec", self.ctl, "dwctl", *args, check=False, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"dwctl {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def conns(self):
        out = self.dwctl("conn", "list", "--json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def api_get(self, conn_id):
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}/@connections/{conn_id}",
                                     headers={"Authorization": f"Bearer {self.admin_token()}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError:
            return None, None

    def kill9(self, container):
        """SIGKILL of the container's main process from the host, as a crash
        or the OOM killer would: the daemon sees an unexpected exit and
        applies the restart policy. (`docker kill` would not test that: it
        disables the restart policy until the next start, by design.)"""
        st = self.inspect(container)
        pid = st["State"]["Pid"]
        assert pid > 0 and st["State"]["Running"], f"{container} is not running"
        os.kill(pid, signal.SIGKILL)
        return st["RestartCount"]

    def wait_restarted(self, container, restarts_before, timeout=120):
        def back():
            st = self.inspect(container)
            h = (st["State"].get("Health") or {}).get("Status")
            return st["RestartCount"] > restarts_before and st["State"]["Running"] and h == "healthy"
        wait_until(back, timeout, f"{container} restarted by its restart policy and healthy", interval=0.5)

    def logs(self, tail=40):
        out = []
        for c in self.containers(all_=True):
            r = self.docker("logs", "--tail", str(tail), c, check=False)
            out.append(f"--- {c} ---\n{r.stdout}{r.stderr}")
        return "\n".join(out)


# ----------------------------------------------------------- v1 clients --
class V1Client:
    """A dynamowave.v1 connection that records every message per room and
    keeps itself connected: after a drop it joins its rooms again with
    since=<last seq seen>, which replays what it missed (docs/protocol.md)."""

    def __init__(self, url, name, rooms):
        self.url, self.name, self.rooms = url, name, list(rooms)
        self.got = {r: [] for r in rooms}      # room -> [(seq, id, data)]
        self.waiters = {}                      # ref -> future (ack or error)
        self.frames = asyncio.Queue()          # everything else, for scripted steps
        self.ws = None
        self.reconnects = 0
        self.closing = False
        self.task = None

    def last_seq(self, room):
        return self.got[room][-1][0] if self.got[room] else None

    async def start(self):
        await self._connect()
        self.task = asyncio.create_task(self._run())
        return self

    async def _connect(self):
        ws = await connect(self.url + f"?name={self.name}", subprotocols=V1)
        hello = json.loads(await recv_text(ws))
        assert hello["type"] == "hello", hello
        self.conn_id = hello["connectionId"]
        for room in self.rooms:
            req = {"action": "join", "room": room, "ref": f"join-{room}"}
            if self.last_seq(room) is not None:
                req["since"] = self.last_seq(room)
            await ws.send(json.dumps(req))
            while True:  # messages of other rooms may come first
                m = json.loads(await recv_text(ws))
                if m["type"] == "joined" and m["room"] == room:
                    assert req.get("since") is None or m["recovered"], f"{self.name}: resume not recovered: {m}"
                    break
                self._record(m)
        self.ws = ws

    def _record(self, m):
        t = m.get("type")
        if t == "message":
            self.got.setdefault(m["room"], []).append((m["seq"], m["id"], m["data"]))
        elif t in ("ack", "error") and m.get("ref") in self.waiters:
            fut = self.waiters.pop(m["ref"])
            if not fut.done():
                fut.set_result(m)
        elif t in ("join", "leave"):
            pass  # presence events
        else:
            self.frames.put_nowait(m)

    async def _run(self):
        while not self.closing:
            try:
                async for raw in self.ws:
                    self._record(json.loads(raw))
            except Exception:
                pass
            if self.closing:
                return
            # Dropped: fail what waits for an answer, then resume.
            for fut in self.waiters.values():
                if not fut.done():
                    fut.set_result({"type": "error", "code": "disconnected"})
            self.waiters.clear()
            while not self.closing:
                try:
                    self.reconnects += 1
                    await self._connect()
                    break
                except Exception:
                    await asyncio.sleep(0.5)  # a reconnect backoff, not a synchronisation

    async def request(self, req, timeout=15):
        """Send a request with a fresh ref; the ack or error that answers it."""
        ref = req.setdefault("ref", f"r{secrets.token_hex(4)}")
        fut = asyncio.get_running_loop().create_future()
        self.waiters[ref] = fut
        try:
            await self.ws.send(json.dumps(req))
            return await asyncio.wait_for(fut, timeout)
        except (asyncio.TimeoutError, Exception) as e:
            self.waiters.pop(ref, None)
            return {"type": "error", "code": f"client:{type(e).__name__}"}

    async def send_until_acked(self, room, msg_id, data, deadline_s=120):
        """Send until acked, again with the same id after an error or a
        timeout (the id makes a retry idempotent). Returns (ack, attempts)."""
        deadline = time.monotonic() + deadline_s
        attempts = 0
        while time.monotonic() < deadline:
            attempts += 1
            r = await self.request({"action": "sendmessage", "room": room, "id": msg_id, "data": data})
            if r["type"] == "ack":
                assert r["id"] == msg_id and r["room"] == room, r
                return r, attempts
            wait = r.get("retry_after_ms", 300) / 1000 if r.get("code") == "rate_limited" else 0.3
            await asyncio.sleep(wait)  # retry backoff
        raise AssertionError(f"{self.name}: {msg_id} never acked")

    async def next_frame(self, typ, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: no {typ} frame")
            m = await asyncio.wait_for(self.frames.get(), left)
            if m["type"] == typ:
                return m

    async def close(self):
        self.closing = True
        if self.ws:
            await self.ws.close()
        if self.task:
            await self.task


def check_exact(receivers, room, acked):
    """What every member got of the acked messages ({id: seq}).

    lost: an acked message a member never received; duplicated: a message
    (id) a member received more than once; reused: a seq a member received
    for two different messages; out_of_order: a seq at or below the one
    before it. Returns (counts, problem lines); only `lost` breaks the
    promise this test holds the stack to (see faults())."""
    counts = dict(lost=0, duplicated=0, reused=0, out_of_order=0)
    problems = []
    for c in receivers:
        got = c.got[room]
        by_id, by_seq = {}, {}
        for seq, mid, _ in got:
            by_id.setdefault(mid, []).append(seq)
            by_seq.setdefault(seq, set()).add(mid)
        missing = [i for i in acked if i not in by_id]
        dups = {i: seqs for i, seqs in by_id.items() if len(seqs) > 1}
        reused = {s: ids for s, ids in by_seq.items() if len(ids) > 1}
        disorder = sum(1 for (a, _, _), (b, _, _) in zip(got, got[1:]) if b <= a)
        counts["lost"] += len(missing)
        counts["duplicated"] += sum(len(v) - 1 for v in dups.values())
        counts["reused"] += len(reused)
        counts["out_of_order"] += disorder
        if missing or dups or reused:
            problems.append(f"{c.name}: missing {missing[:5]}; received twice "
                            f"{[(i, seqs, acked.get(i)) for i, seqs in list(dups.items())[:5]]} "
                            f"(id, seqs received, seq acked); seqs received for two messages "
                            f"{dict(list(reused.items())[:5])}")
    return counts, problems


# ---------------------------------------------------------------- steps --
def check_image(st):
    info = json.loads(st.docker("image", "inspect", IMAGE).stdout)[0]
    size_mb = info["Size"] / 1e6
    user = info["Config"]["User"]
    print(f"    image {IMAGE}: {size_mb:.1f} MB, user {user!r}")
    assert user and user.split(":")[0] not in ("0", "root"), f"the image runs as {user!r}"
    assert size_mb < 150, f"the image is {size_mb:.0f} MB (was 97): a build tool or -dev package got in?"
    r = st.docker("run", "--rm", "--network", "none", IMAGE, "edge", "--help")
    assert "Usage: edge" in r.stdout and "DW_NATS_URL" in r.stdout, r.stdout[:500]
    r = st.docker("run", "--rm", "--network", "none", IMAGE, "id", "-u")
    assert r.stdout.strip() == "10001", r.stdout
    # No compiler, linker, build tool or development package in the runtime stage.
    probe = ("for t in cc gcc g++ c++ clang cpp ld as cmake make protoc-c; do command -v $t; done; "
             "dpkg-query -W -f '${Package}\\n' | grep -E -- '-dev$|^(gcc|g\\+\\+|cpp|clang)(-[0-9]+)?$|^(binutils|cmake|make|libtool|autoconf)'; true")
    r = st.docker("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", IMAGE, "-c", probe)
    assert not r.stdout.strip(), f"build tools in the runtime image:\n{r.stdout}"


def up(st):
    t0 = time.monotonic()
    st.compose("up", "-d", "--no-build")
    h = st.wait_healthy({s: 1 for s in SERVICES})
    print(f"    up -d to all healthy: {time.monotonic() - t0:.1f} s")
    for c, (_, _, _, restarts) in h.items():
        assert restarts == 0, f"{c} restarted {restarts} times while starting"
    secrets_c = st.containers("secrets", all_=True)
    assert len(secrets_c) == 1 and st.inspect(secrets_c[0])["State"]["ExitCode"] == 0, "secrets did not exit 0"
    reg = st.docker("logs", st.containers("registry")[0]).stderr + st.docker("logs", st.containers("registry")[0]).stdout
    assert "data at rest is encrypted" in reg and "NOT encrypted" not in reg, reg[-2000:]
    proxy = st.docker("logs", st.containers("proxy")[0])
    assert "ALERT" not in proxy.stdout + proxy.stderr, proxy.stdout + proxy.stderr
    # A helper to run dwctl in (as the dwctl user, with its own password);
    # `docker-compose run --rm dwctl` itself is checked in the dwctl step.
    st.compose("run", "-d", "--name", st.ctl, "--entrypoint", "sleep", "dwctl", "infinity")
    wait_until(lambda: st.dwctl("status", check=False).returncode == 0, 60, "dwctl status to pass")


DEFAULT_RE = re.compile(
    r'^Use the sendmessage route to send a message\. Your info: '
    r'\{"ConnectedAt":"[^"]+","Identity":\{"SourceIp":"(\d+\.\d+\.\d+\.\d+)","UserAgent":(null|"[^"]*")\},'
    r'"LastActiveAt":"[^"]+","connectionID":"([A-Za-z0-9_-]{16})"\}$')


async def aws_guide(st):
    """The guide's wscat session: two plain clients; the first one stays
    connected to the end (its User-Agent is what the at-rest scan looks for)."""
    a = await connect(st.url, user_agent_header=USER_AGENT)
    b = await connect(st.url, user_agent_header=None)
    ids = {}
    for name, ws in (("a", a), ("b", b)):
        await ws.send("test")
        m = DEFAULT_RE.match(await recv_text(ws))
        assert m, "no $default reply"
        ids[name] = m.group(3)
        assert m.group(2) == (json.dumps(USER_AGENT) if name == "a" else "null"), m.group(0)
    # Registered: the management API (127.0.0.1:DW_API_PORT, bearer token)
    # knows both; only then can a message reach both.
    for name in ids:
        await await_until(lambda n=name: st.api_get(ids[n])[0] == 200, 30, f"GET /@connections/{name}",
                          interval=0.2)
    _, body = st.api_get(ids["a"])
    assert body["Identity"]["UserAgent"] == USER_AGENT, body

    await a.send(json.dumps({"action": "sendmessage", "message": "hello, everyone!"}))
    assert await recv_text(a) == "hello, everyone!"
    assert await recv_text(b) == "hello, everyone!"
    await b.send(json.dumps({"action": "sendmessage", "data": SECRET_TEXT}))
    assert await recv_text(a) == SECRET_TEXT
    assert await recv_text(b) == SECRET_TEXT
    await a.send('{"action":"nosuchroute"}')
    assert DEFAULT_RE.match(await recv_text(a))
    assert await no_message(b, 0.3) is None, "the $default reply reached someone else"
    await b.close()
    await await_until(lambda: st.api_get(ids["b"])[0] == 410, 30, "b gone (410)", interval=0.2)
    return a, ids["a"]


async def v1_room(st):
    room = f"compose-{RUN_ID}"
    alice = await V1Client(st.url, "alice", [room]).start()
    bob = await V1Client(st.url, "bob", [room]).start()
    seqs = []
    for i in range(5):
        ack, _ = await alice.send_until_acked(room, f"a{i}", f"{SECRET_TEXT} #{i}", 30)
        seqs.append(ack["seq"])
    assert seqs == sorted(seqs) and len(set(seqs)) == 5, seqs
    await await_until(lambda: len(bob.got[room]) >= 5 and len(alice.got[room]) >= 5, 30, "5 messages at both")
    for c in (alice, bob):
        assert [(s, i) for s, i, _ in c.got[room]] == [(s, f"a{i}") for i, s in enumerate(seqs)], c.got[room]
    # Someone who joins later reads the room's history ...
    carol = await V1Client(st.url, "carol", [room]).start()
    await carol.ws.send(json.dumps({"action": "history", "room": room, "limit": 50}))
    page = await carol.next_frame("history")
    assert [(m["seq"], m["id"], m["from"]) for m in page["messages"]] == \
        [(s, f"a{i}", "alice") for i, s in enumerate(seqs)], page
    # ... and a client that reconnects with since= gets what it missed.
    await bob.close()
    for i in range(5, 8):
        await alice.send_until_acked(room, f"a{i}", f"m{i}", 30)
    dave = V1Client(st.url, "bob", [room])
    dave.got[room] = list(bob.got[room])  # resume from bob's last seq
    await dave.start()
    await await_until(lambda: [i for _, i, _ in dave.got[room]] == [f"a{i}" for i in range(8)], 30,
                      "bob's missed messages after resume")
    for c in (alice, carol, dave):
        await c.close()


async def spread_clients(st, room, n):
    """n v1 clients through the proxy; returns them and {connectionId: edgeId}
    once the registry has every one of them."""
    clients = [await V1Client(st.url, f"u{i}", [room]).start() for i in range(n)]
    ids = {c.conn_id for c in clients}

    def placed():
        m = {c["connectionId"]: c["edgeId"] for c in st.conns() if c["connectionId"] in ids}
        return m if len(m) == n else None
    return clients, await asyncio.to_thread(wait_until, placed, 30, "every client in the registry", 0.5)


async def scale(st):
    st.compose("up", "-d", "--no-build", "--scale", "edge=2", "--scale", "dispatcher=2")
    st.wait_healthy({**{s: 1 for s in SERVICES}, "edge": 2, "dispatcher": 2})
    # The proxy finds the second edge through Docker's DNS and sends it
    # clients once its /readyz answers: wait until it says so.
    proxy = st.containers("proxy")[0]

    def proxy_sees_both():
        log = st.docker("logs", proxy).stdout + st.docker("logs", proxy).stderr
        up_servers = set(re.findall(r"Server edges/(edge\d+) .*is UP", log))
        return len(up_servers) >= 2
    await asyncio.to_thread(wait_until, proxy_sees_both, 60, "the proxy to send clients to both edges", 0.5)
    room = f"scale-{RUN_ID}"
    clients, edge_of = await spread_clients(st, room, 8)
    edges = set(edge_of.values())
    assert len(edges) == 2, f"clients on {len(edges)} edge(s) only: {edge_of}"
    print(f"    8 clients over 2 edges: {sorted(list(edge_of.values()).count(e) for e in edges)}")
    acked = {}
    for k in range(40):
        sender = clients[k % len(clients)]
        ack, _ = await sender.send_until_acked(room, f"s{k}", f"{SECRET_TEXT} scale {k}", 30)
        acked[ack["id"]] = ack["seq"]
    await await_until(lambda: all(len(c.got[room]) >= len(acked) for c in clients), 60,
                      "every message at every member")
    counts, problems = check_exact(clients, room, acked)
    print(f"    {len(acked)} messages x {len(clients)} members: {counts}")
    assert not problems, "\n".join(problems)
    return clients, room


async def faults(st, clients, room):
    """Two senders at ~4 messages/s each. While they send: `docker kill` of
    one dispatcher (an operator's kill: Docker leaves it stopped) and a
    crash (SIGKILL of its process) of the other, so that for a while no
    dispatcher runs; then a crash of nats-server. The restart policy brings
    the crashed ones back, `docker-compose up` the stopped one."""
    senders = [await V1Client(st.url, f"sender{i}", [room]).start() for i in range(2)]
    members = clients + senders
    acked = {}
    attempts_total = [0]
    stop = asyncio.Event()

    async def send_loop(c, tag):
        k = 0
        while not stop.is_set():
            ack, attempts = await c.send_until_acked(room, f"{tag}-{k}", f"{SECRET_TEXT} {tag} {k}", 180)
            acked[ack["id"]] = ack["seq"]
            attempts_total[0] += attempts
            k += 1
            await asyncio.sleep(0.25)  # pacing: a small, steady load

    loops = [asyncio.create_task(send_loop(c, f"f{i}")) for i, c in enumerate(senders)]
    try:
        await await_until(lambda: len(acked) >= 20, 60, "the load to run")

        t0 = time.monotonic()
        crashed, stopped = st.containers("dispatcher")
        st.docker("kill", stopped)
        r = st.kill9(crashed)
        n0 = len(acked)
        await asyncio.to_thread(st.wait_restarted, crashed, r)
        print(f"    dispatchers: {stopped} docker-killed, {crashed} crashed and back (restart policy) "
              f"after {time.monotonic() - t0:.1f} s")
        await await_until(lambda: len(acked) >= n0 + 20, 60, "sends after the dispatcher's restart")
        # Long after the restart policy would have acted: `docker kill` is
        # an operator's decision, which Docker keeps.
        st_stopped = st.inspect(stopped)
        assert not st_stopped["State"]["Running"] and st_stopped["RestartCount"] == 0, st_stopped["State"]

        t0 = time.monotonic()
        nats = st.containers("nats")[0]
        r = st.kill9(nats)
        n1 = len(acked)
        await asyncio.to_thread(st.wait_restarted, nats, r)
        print(f"    nats killed: back and healthy after {time.monotonic() - t0:.1f} s")
        await await_until(lambda: len(acked) >= n1 + 20, 120, "sends after nats' restart")
        print(f"    sends resumed {time.monotonic() - t0:.1f} s after the kill")
        # `up` starts the stopped dispatcher again; everything that depends
        # on nats is ready again.
        await asyncio.to_thread(st.compose, "up", "-d", "--no-build", "--scale", "edge=2", "--scale", "dispatcher=2")
        await asyncio.to_thread(st.wait_healthy, {**{s: 1 for s in SERVICES}, "edge": 2, "dispatcher": 2}, 120,
                                "every service healthy after the faults")
    finally:
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
    for t in loops:
        if t.exception():
            raise t.exception()
    await await_until(lambda: all(len({i for _, i, _ in c.got[room]} & set(acked)) >= len(acked) for c in members),
                      90, "every acked message at every member")
    counts, problems = check_exact(members, room, acked)
    reconnects = sum(c.reconnects for c in members)
    print(f"    {len(acked)} acked messages ({attempts_total[0]} sends) x {len(members)} members: "
          f"{counts}, client reconnects {reconnects}")
    for line in problems:
        print(f"    {line}")
    # The promise held here: every acked message reaches every member. Not
    # (yet) held across a kill -9 of nats: a retry of a message that
    # nats-server had stored and delivered but not yet written to its
    # file is stored again (the dedup state went with the lost tail), so
    # members get it twice and the reused seqs come back in another order
    # (reported above; see the report of issue 18). Per-room order with two
    # dispatchers is issue 14's.
    assert counts["lost"] == 0, "acked messages lost:\n" + "\n".join(problems)
    for c in members:
        await c.close()


def dwctl_run(st):
    r = st.compose("run", "--rm", "dwctl", "status")
    assert "registry" in r.stdout and "DW_MSG" in r.stdout, r.stdout
    edges = [line for line in r.stdout.splitlines() if line.startswith("edge ")]
    assert len(edges) == 2, r.stdout
    r = st.compose("run", "--rm", "dwctl", "dlq", "list")
    print("    " + "\n    ".join(r.stdout.strip().splitlines()[-3:]))
    r = st.compose("run", "--rm", "dwctl", "dlq", "list", "--json")
    assert not [line for line in r.stdout.splitlines() if line.strip()], f"dead letters:\n{r.stdout}"


def scan(root, needles):
    """(files, bytes, {needle: [paths]}) of every file under root."""
    hits = {n: [] for n in needles}
    files = size = 0
    raw = [n.encode() for n in needles]
    for d, _, names in os.walk(root):
        for name in names:
            p = os.path.join(d, name)
            if not os.path.isfile(p):
                continue
            with open(p, "rb") as f:
                data = f.read()
            files += 1
            size += len(data)
            for n, b in zip(needles, raw):
                if b in data:
                    hits[n].append(os.path.relpath(p, root))
    return files, size, hits


def at_rest(st, witness_id):
    # The witness (plain client a, with USER_AGENT) is still connected: its
    # record is in the live table. A checkpoint puts it in the checkpoints too.
    rec = json.loads(st.dwctl("conn", "get", witness_id, "--json").stdout)
    assert rec["userAgent"] == USER_AGENT, rec
    status = json.loads(st.dwctl("registry", "status", "--json").stdout)
    print(f"    registry status: {json.dumps(status)[:300]}")
    st.dwctl("registry", "checkpoint")
    reg_root, js_root = st.volume("registry-data"), st.volume("nats-data")
    reg = scan(reg_root, [USER_AGENT, SECRET_TEXT])
    js = scan(js_root, [USER_AGENT, SECRET_TEXT])
    kinds = {os.path.splitext(n)[1] for d, _, ns in os.walk(reg_root) for n in ns}
    print(f"    registry volume: {reg[0]} files, {reg[1]} bytes ({', '.join(sorted(k for k in kinds if k))}); "
          f"JetStream volume: {js[0]} files, {js[1]} bytes")
    # The scan looked at real data: the table's files and a checkpoint, and a
    # JetStream store holding the run's messages.
    assert any(n.endswith((".log", ".sst")) for _, _, ns in os.walk(reg_root) for n in ns), "no RocksDB files"
    assert os.listdir(os.path.join(reg_root, "checkpoints")), "no checkpoint"
    assert js[1] > 20000, f"the JetStream store holds only {js[1]} bytes"
    found = {f"registry:{k}": v for k, v in reg[2].items() if v}
    found.update({f"jetstream:{k}": v for k, v in js[2].items() if v})
    assert not found, f"plaintext at rest: {found}"


def rotate_key(st, witness_id):
    """The registry key rotation of docs/security.md, as a compose user runs
    it: a new key next to the old one, restart, re-seal, drop the old one."""
    def status():
        return json.loads(st.dwctl("registry", "status", "--json").stdout)

    def restart_registry():
        st.compose("restart", "registry")
        st.wait_healthy({**{s: 1 for s in SERVICES}, "edge": 2, "dispatcher": 2}, 120,
                        "every service healthy after the registry's restart")
        wait_until(lambda: st.dwctl("registry", "status", check=False).returncode == 0, 60,
                   "the registry to answer")

    old = status()["key_id"]
    st.compose("run", "--rm", "--no-deps", "-e", "DW_ROTATE=registry_key", "secrets")
    restart_registry()
    mid = status()
    assert mid["key_id"] != old and old in mid["key_ids"], f"after the new key: {mid} (old {old})"
    st.dwctl("registry", "rotate-key")
    done = status()
    assert done["key_ids"] == [mid["key_id"]], f"after rotate-key: {done}"
    st.compose("run", "--rm", "--no-deps", "-e", "DW_ROTATE_DONE=registry_key", "secrets")
    restart_registry()
    final = status()
    assert final["key_id"] == mid["key_id"] and final["key_ids"] == [mid["key_id"]], final
    # The table was re-sealed, not lost: the witness is still there.
    rec = json.loads(st.dwctl("conn", "get", witness_id, "--json").stdout)
    assert rec["userAgent"] == USER_AGENT, rec
    print(f"    key {old} -> {mid['key_id']}; the table needs only the new one")


def down(st):
    st.docker("rm", "-f", st.ctl, check=False)
    st.compose("down", "--timeout", "30")
    left = st.containers(all_=True)
    assert not left, f"containers left after down: {left}"
    nets = st.docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
    assert not nets, f"networks left after down: {nets}"
    running = st.docker("ps", "-q").stdout.split()
    assert not running, f"still running: {running}"


async def chat_steps(st):
    with step("aws-guide"):
        witness, witness_id = await aws_guide(st)
    with step("v1-room"):
        await v1_room(st)
    with step("scale"):
        clients, room = await scale(st)
    with step("faults"):
        await faults(st, clients, room)
    with step("dwctl"):
        await asyncio.to_thread(dwctl_run, st)
    with step("at-rest"):
        await asyncio.to_thread(at_rest, st, witness_id)
    with step("rotate-key"):
        await asyncio.to_thread(rotate_key, st, witness_id)
        await asyncio.to_thread(at_rest, st, witness_id)
    await witness.close()


def main():
    st = Stack()
    t0 = time.monotonic()
    ok = False
    try:
        with step("image"):
            check_image(st)
        with step("up"):
            up(st)
        asyncio.run(asyncio.wait_for(chat_steps(st), 900))
        with step("down"):
            down(st)
        ok = True
    except BaseException:
        import traceback
        traceback.print_exc()
        print(st.compose("ps", check=False).stdout)
        print(st.logs())
    finally:
        st.docker("rm", "-f", st.ctl, check=False)
        st.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
        if ok:
            vols = st.docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
            if vols:
                print(f"volumes left after down -v: {vols}")
                ok = False
    print("timings: " + ", ".join(f"{n} {t:.0f} s" for n, t in TIMINGS) + f"; total {time.monotonic() - t0:.0f} s")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
