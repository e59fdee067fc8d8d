"""Registry durability: checkpoints, point-in-time restore, replicas,
encryption at rest and crash safety (issue 7).

Connection ids come from the clients themselves (the $default reply names
them), so "the registry's set equals the clients' set" compares what the
registry stores with what the sockets hold.
"""
import asyncio
import datetime
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import unittest

from harness import BIN, NATS_SERVER, Stack, StackTest, connect, recv_text, wait_until

# No periodic checkpoints: the tests take them when they mean to. No
# connection limits at the edge: the storm comes from one address.
BASE_ENV = {"DW_CHECKPOINT_INTERVAL_S": "0", "DW_IP_MAX_CONNS": "0", "DW_IP_CONN_RATE": "0",
            "DW_EDGE_CONN_RATE": "0"}


# ---- helpers -------------------------------------------------------------

async def my_id(ws):
    """The connection id the edge gave this socket (from the $default reply)."""
    await ws.send('{"action":"whoami"}')
    reply = await recv_text(ws)
    return json.loads(reply.split("Your info: ", 1)[1])["connectionID"]


async def open_clients(url, n):
    socks = [await connect(url) for _ in range(n)]
    return socks, [await my_id(ws) for ws in socks]


async def close_all(socks):
    """Close what a scenario opened: a socket left open costs asyncio.run a
    10 s close timeout at the end."""
    for ws in socks:
        await ws.close()


def rfc3339(t):
    """Unix time (float seconds) as RFC 3339 UTC with milliseconds."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def reg(st, *args, replica=None, check=True):
    """dwctl registry <args> --json, parsed."""
    argv = ["registry", *args, "--json"] + (["--replica", replica] if replica else [])
    r = st.dwctl(*argv, check=check)
    return json.loads(r.stdout) if r.returncode == 0 else None


def ids_or_none(st):
    """The registry's connection ids, or None while it does not answer."""
    r = st.dwctl("conn", "list", "--json", check=False)
    if r.returncode != 0:
        return None
    return {json.loads(line)["connectionId"] for line in r.stdout.splitlines() if line.strip()}


def wait_ids(st, want, timeout=20, what="the registry to hold the clients' set"):
    return wait_until(lambda: ids_or_none(st) == set(want), timeout, what)


def wait_state(st, state, replica=None, timeout=20):
    return wait_until(lambda: (s := reg(st, "status", replica=replica, check=False)) and
                      s["state"] == state and s["serving"] and s, timeout,
                      f"registry {replica or ''} to be {state}")


def pb_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_str(field, s):
    data = s.encode()
    return pb_varint(field << 3 | 2) + pb_varint(len(data)) + data


def conn_event_connect(conn_id, edge_id, user_id, source_ip, rooms=()):
    """A packed dw.ConnEvent (kind CONNECT), written by hand: the tests need
    no protobuf package."""
    msg = pb_varint(1 << 3) + pb_varint(1)  # kind = CONNECT
    msg += pb_str(2, conn_id) + pb_str(3, edge_id)
    for r in rooms:
        msg += pb_str(4, r)
    msg += pb_str(5, user_id) + pb_str(6, source_ip)
    msg += pb_varint(9 << 3) + pb_varint(int(time.time() * 1000))
    return msg


def conn_event_disconnect(conn_id):
    """A packed dw.ConnEvent (kind DISCONNECT)."""
    return pb_varint(1 << 3) + pb_varint(2) + pb_str(2, conn_id)


def js_publish(nats_port, subject, payload, timeout=5):
    """Publish to JetStream over the NATS text protocol and wait for the
    stream's ack; returns the ack (e.g. {"stream": "DW_CONN", "seq": 7})."""
    with socket.create_connection(("127.0.0.1", nats_port), timeout=timeout) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"INFO ")
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
                  b"SUB _INBOX.dwtest 1\r\n" +
                  b"PUB %s _INBOX.dwtest %d\r\n" % (subject.encode(), len(payload)) +
                  payload + b"\r\n")
        while True:
            line = f.readline()
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                n = int(line.split()[-1])
                ack = json.loads(f.read(n + 2)[:n])
                assert "error" not in ack, ack
                return ack
            elif not line or line.startswith(b"-ERR"):
                raise AssertionError(f"NATS said {line!r}")


def files_containing(root, needle):
    """Every file under root whose bytes contain needle (grep -r)."""
    hits = []
    for d, _, names in os.walk(root):
        for name in names:
            p = os.path.join(d, name)
            try:
                with open(p, "rb") as fh:
                    if needle in fh.read():
                        hits.append(p)
            except OSError:
                pass
    return hits


def write_key(path, key_bytes):
    with open(path, "w") as f:
        f.write(key_bytes.hex() + "\n")
    os.chmod(path, 0o600)
    return path


class DurabilityTest(StackTest):
    ENV = BASE_ENV

    def replica_dir(self, replica="r0"):
        return os.path.join(self.stack.dir, "data", "registry", replica)

    def start_replica(self, replica, **env):
        st = self.stack
        kw = st._svc("registry", dict(STATUS_PORT=0, **env))  # the stack's settings, as r0's
        return st._spawn(f"registry-{replica}", [os.path.join(BIN, "registry")],
                         st.env(**dict(kw, REPLICA_ID=replica)))


# ---- point-in-time restore ---------------------------------------------

class Restore(DurabilityTest):
    def test_restore_to_a_past_second_and_to_now(self):
        st = self.stack
        url = st.edges[0].url

        async def scenario():
            (a, b, c), (ia, ib, ic) = await open_clients(url, 3)          # t1
            await asyncio.to_thread(wait_ids, st, {ia, ib, ic})
            await b.close()                                             # t2
            await asyncio.to_thread(wait_ids, st, {ia, ic})
            # B's disconnect is stored (it was applied) before this moment,
            # so every event up to it is at or before the next whole second.
            second = int(time.time()) + 1
            await asyncio.to_thread(wait_until, lambda: time.time() > second + 0.05, 3,
                                    "the next second")
            (d,), (idd,) = await open_clients(url, 1)                    # t3
            await asyncio.to_thread(wait_ids, st, {ia, ic, idd})

            to = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
            plan = reg(st, "restore", "--to", to, "--dry-run")
            self.assertTrue(plan["dry_run"])
            self.assertNotIn("result", plan)
            self.assertEqual(ids_or_none(st), {ia, ic, idd}, "a dry run changes nothing")

            r = reg(st, "restore", "--to", to)
            self.assertEqual(r["result"]["connections"], 2)
            self.assertEqual(ids_or_none(st), {ia, ic})
            s = reg(st, "status")
            self.assertEqual(s["state"], "held")
            self.assertIsNotNone(s["restored_to"])

            # Held: newer events are not applied.
            (e,), (ie,) = await open_clients(url, 1)
            await e.close()
            self.assertEqual(ids_or_none(st), {ia, ic})

            # Restore to "now": the live set, what the clients hold.
            r = reg(st, "restore", "--to", rfc3339(time.time()))
            self.assertEqual(ids_or_none(st), {ia, ic, idd})
            self.assertEqual(r["result"]["connections"], 3)
            # Resume: it follows the stream again.
            self.assertTrue(reg(st, "resume")["was_held"])
            await asyncio.to_thread(wait_state, st, "live")
            (f,), (iff,) = await open_clients(url, 1)
            await asyncio.to_thread(wait_ids, st, {ia, ic, idd, iff})
            self.assertNotIn(ie, ids_or_none(st))
            # The restored table routes: a message reaches everyone.
            await a.send('{"action":"sendmessage","message":"after restore"}')
            for ws in (a, c, d, f):
                self.assertEqual(await recv_text(ws), "after restore")
            await close_all((a, c, d, f))

        self.run_async(scenario())

    def test_checkpoint_or_not_same_state_and_interrupted_checkpoints_never_used(self):
        st = self.stack
        url = st.edges[0].url
        ckdir = os.path.join(self.replica_dir(), "checkpoints")

        async def scenario():
            socks, ids = await open_clients(url, 4)
            await asyncio.to_thread(wait_ids, st, ids)
            ck = reg(st, "checkpoint")["checkpoint"]
            self.assertGreater(ck["applied_seq"], 0)
            self.assertEqual(ck["connections"], 4)
            await socks[0].close()
            more, more_ids = await open_clients(url, 2)
            want = set(ids[1:]) | set(more_ids)
            await asyncio.to_thread(wait_ids, st, want)
            t = time.time()
            await asyncio.to_thread(wait_until, lambda: time.time() > t + 0.02, 2, "time to pass")
            # After T: must not show in a restore to T.
            await more[0].close()
            late, late_ids = await open_clients(url, 1)
            await asyncio.to_thread(wait_ids, st, (want - {more_ids[0]}) | set(late_ids))

            with_ck = reg(st, "restore", "--to", rfc3339(t))
            self.assertEqual(with_ck["plan"]["checkpoint"]["name"], ck["name"])
            self.assertGreater(with_ck["result"]["replayed"], 0)
            set_ck = ids_or_none(st)
            self.assertEqual(set_ck, want)
            full = reg(st, "restore", "--to", rfc3339(t), "--full-replay")
            self.assertIsNone(full["plan"]["checkpoint"])
            self.assertEqual(ids_or_none(st), set_ck)
            self.assertEqual(full["result"]["applied_seq"], with_ck["result"]["applied_seq"])

            # kill -9 while checkpoints are being taken, back to back.
            stop = threading.Event()

            def hammer():
                while not stop.is_set():
                    st.dwctl("registry", "checkpoint", "--wait-ms", "2000", check=False)
            th = threading.Thread(target=hammer)
            th.start()
            try:
                await asyncio.to_thread(wait_until, lambda: len(os.listdir(ckdir)) >= 4, 10,
                                        "some checkpoints")
                st.registry.kill9()
            finally:
                stop.set()
                th.join()
            # And what a kill -9 can leave, made certain: a half-written
            # checkpoint that claims to be the newest, and a directory with
            # a checkpoint's name but no tag.
            good = os.path.join(ckdir, ck["name"])
            shutil.copytree(good, os.path.join(ckdir, ".tmp-99999999999999-1"))
            with open(os.path.join(ckdir, ".tmp-99999999999999-1", "DW_CHECKPOINT"), "w") as fh:
                fh.write("version=1\nname=29991231T000000.000Z-999999\n")
            os.makedirs(os.path.join(ckdir, "29991231T000000.000Z-999999"))

            st.start_registry()
            # It was held when killed (the last restore): it comes back held.
            await asyncio.to_thread(wait_state, st, "held")
            self.assertEqual(ids_or_none(st), set_ck)
            self.assertFalse([n for n in os.listdir(ckdir) if n.startswith(".tmp-")],
                             "half-written checkpoints are deleted at start")
            names = [c["name"] for c in reg(st, "checkpoints")["checkpoints"]]
            self.assertNotIn("29991231T000000.000Z-999999", names)
            self.assertIn(ck["name"], names)
            plan = reg(st, "restore", "--to", rfc3339(time.time()), "--dry-run")["plan"]
            self.assertIn(plan["checkpoint"]["name"], names)
            # Every listed checkpoint is whole: restoring from the newest works.
            reg(st, "restore", "--to", rfc3339(time.time()))
            reg(st, "resume")
            await asyncio.to_thread(wait_state, st, "live")
            now_set = (want - {more_ids[0]}) | set(late_ids)
            await asyncio.to_thread(wait_ids, st, now_set)

            # Offline, on the stopped replica: registry --restore-to T exits,
            # and the next start serves T, held.
            st.registry.stop()

            def offline(*flags):
                return subprocess.run([os.path.join(BIN, "registry"), "--restore-to", rfc3339(t),
                                       *flags], env=st.env(STATUS_PORT=0), capture_output=True,
                                      text=True, timeout=30)
            r = offline("--dry-run")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("dry run", r.stderr)
            r = offline()
            self.assertEqual(r.returncode, 0, r.stderr)
            st.start_registry()
            await asyncio.to_thread(wait_state, st, "held")
            self.assertEqual(ids_or_none(st), set_ck)
            reg(st, "resume")
            await asyncio.to_thread(wait_ids, st, now_set)
            await close_all(socks[1:] + more[1:] + late)

        self.run_async(scenario())


# ---- reconciliation with the live edges ---------------------------------

def conn_rows(st):
    r = st.dwctl("conn", "list", "--json")
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


class Reconcile(DurabilityTest):
    # Heartbeats often, so that reconciliation soon knows every live edge.
    ENV = dict(BASE_ENV, DW_HEARTBEAT_MS="200", DW_RECONCILE_EDGE_TTL_MS="1500")

    def corrupt(self, hidden_id):
        """Make the table wrong the ways a restore or a lost event can: a
        ghost on a live edge, a ghost on an edge that is gone, and a live
        connection the table lacks (its socket stays open). Returns the
        ghost ids."""
        st = self.stack
        edge_id = conn_rows(st)[0]["edgeId"]
        ghosts = ["GhostOnLiveEdge" + str(len(hidden_id) % 10), "GhostOnGoneEdge1"]
        js_publish(st.nats_port, "dw.conn.connect",
                   conn_event_connect(ghosts[0], edge_id, "ghost-user", "10.9.9.9"))
        js_publish(st.nats_port, "dw.conn.connect",
                   conn_event_connect(ghosts[1], "edge-long-gone", "ghost-user", "10.9.9.9"))
        js_publish(st.nats_port, "dw.conn.disconnect", conn_event_disconnect(hidden_id))
        return ghosts

    def test_reconcile_after_restore_and_on_demand(self):
        st = self.stack
        url = st.edges[0].url

        async def scenario():
            (a, b, c), ids = await open_clients(url, 3)
            live = set(ids)
            await asyncio.to_thread(wait_ids, st, live)

            # After a restore: resume reconciles on its own once caught up.
            ghosts = self.corrupt(ids[1])
            await asyncio.to_thread(wait_ids, st, (live - {ids[1]}) | set(ghosts),
                                    what="the corrupted table")
            reg(st, "restore", "--to", rfc3339(time.time()))
            self.assertEqual(ids_or_none(st), (live - {ids[1]}) | set(ghosts))
            self.assertTrue(reg(st, "resume")["was_held"])
            await asyncio.to_thread(wait_ids, st, live, what="the reconciled table")

            # The one the table had lost is routed to again.
            await a.send('{"action":"sendmessage","message":"after reconcile"}')
            for ws in (a, b, c):
                self.assertEqual(await recv_text(ws), "after reconcile")

            # On demand, with a dry run first that changes nothing.
            ghosts = self.corrupt(ids[2])
            wrong = (live - {ids[2]}) | set(ghosts)
            await asyncio.to_thread(wait_ids, st, wrong, what="the corrupted table")
            dry = reg(st, "reconcile", "--dry-run")
            self.assertTrue(dry["dry_run"])
            self.assertEqual((dry["ghosts"], dry["missing"], dry["edges_down"], dry["held"]),
                             (2, 1, 1, 3), dry)
            self.assertEqual((dry["dropped"], dry["announced"]), (0, 0))
            self.assertEqual(ids_or_none(st), wrong, "a dry run changes nothing")
            r = reg(st, "reconcile")
            self.assertEqual((r["ghosts"], r["missing"], r["edges_down"]), (2, 1, 1), r)
            self.assertEqual((r["dropped"], r["announced"]), (1, 1), r)
            await asyncio.to_thread(wait_ids, st, live, what="the reconciled table")
            # Nothing left to correct.
            r = reg(st, "reconcile")
            self.assertEqual((r["ghosts"], r["missing"], r["held"]), (0, 0, 3), r)

            # Held tables are not reconciled (their corrections would wait).
            reg(st, "restore", "--to", rfc3339(time.time()))
            r = st.dwctl("registry", "reconcile", check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("resume", r.stderr)
            reg(st, "resume")
            await asyncio.to_thread(wait_state, st, "live")
            await close_all((a, b, c))

        self.run_async(scenario())


# ---- crash safety ---------------------------------------------------------

class Crash(DurabilityTest):
    def test_kill9_during_a_storm_of_5000_connects_and_disconnects(self):
        st = self.stack
        url = st.edges[0].url

        async def scenario():
            socks, ids = await open_clients(url, 10)
            await asyncio.to_thread(wait_ids, st, ids)
            base = reg(st, "status")["applied_seq"]
            # 2,500 connections opened as fast as the edge takes them, held
            # for a second, closed when dwbench exits: 5,000 events.
            bench = subprocess.Popen(
                [os.path.join(BIN, "dwbench"), f"--url={url}", "--connections=2500", "--idle=1",
                 "--duration=1", "--sync=0", "--drain=1", "--connect-timeout=30"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                await asyncio.to_thread(
                    wait_until, lambda: (reg(st, "status", check=False) or {}).get(
                        "applied_seq", 0) > base + 1000, 30, "the storm to be under way")
                st.registry.kill9()                       # during apply
                st.start_registry()
                out, _ = await asyncio.to_thread(bench.communicate, timeout=60)
            finally:
                if bench.poll() is None:
                    bench.kill()
                    bench.wait()
            opened = json.loads(out.strip().splitlines()[-1])["opened"]
            self.assertGreaterEqual(opened, 2400, "the storm did not happen")
            await asyncio.to_thread(wait_ids, st, ids, 30)
            # Every connect and disconnect of the storm was applied.
            self.assertGreaterEqual(reg(st, "status")["applied_seq"], base + 2 * opened)

            # kill -9 during a restore (a full replay of the storm): the
            # restart finds either the old table or the restored one, whole.
            result = {}

            def restore():
                result["r"] = st.dwctl("registry", "restore", "--to", rfc3339(time.time()),
                                       "--full-replay", "--json", "--wait-ms", "20000", check=False)
            th = threading.Thread(target=restore)
            th.start()
            try:
                await asyncio.to_thread(
                    wait_until, lambda: (reg(st, "status", check=False) or {}).get("state") in
                    ("restoring", "held") or not th.is_alive(), 20, "the restore to start")
            finally:
                st.registry.kill9()
                th.join()
            st.start_registry()
            s = await asyncio.to_thread(
                wait_until, lambda: (x := reg(st, "status", check=False)) and x["serving"] and x,
                20, "the registry back")
            if s["state"] == "held":
                reg(st, "resume")
            await asyncio.to_thread(wait_state, st, "live")
            await asyncio.to_thread(wait_ids, st, ids, 30)
            await close_all(socks)
            await asyncio.to_thread(wait_ids, st, set())

        self.run_async(scenario(), timeout=120)


# ---- replicas ---------------------------------------------------------------

class Replicas(DurabilityTest):
    def test_two_replicas_one_stops_queries_answer_it_catches_up(self):
        st = self.stack
        url = st.edges[0].url

        async def scenario():
            r1 = self.start_replica("r1")
            await asyncio.to_thread(wait_state, st, "live", "r1")
            socks, ids = await open_clients(url, 3)
            await asyncio.to_thread(wait_ids, st, ids)

            st.registry.stop()                      # r0 goes away
            await asyncio.to_thread(wait_ids, st, ids, 5, "r1 to answer alone")
            more, more_ids = await open_clients(url, 2)
            await socks[0].close()
            want = set(ids[1:]) | set(more_ids)
            await asyncio.to_thread(wait_ids, st, want)
            await socks[1].send('{"action":"sendmessage","message":"r0 is down"}')
            for ws in socks[1:] + more:
                self.assertEqual(await recv_text(ws), "r0 is down")

            st.start_registry()                     # r0 returns and catches up
            s1 = reg(st, "status", replica="r1")
            await asyncio.to_thread(
                wait_until, lambda: (s := reg(st, "status", replica="r0", check=False)) and
                s["state"] == "live" and s["applied_seq"] >= s1["applied_seq"] and
                s["connections"] == len(want), 20, "r0 to catch up")

            # A third replica starts from a copy of r1's newest checkpoint.
            ck = reg(st, "checkpoint", replica="r1")["checkpoint"]
            copy = os.path.join(st.dir, "copied-checkpoint")
            shutil.copytree(ck["path"], copy)
            late, late_ids = await open_clients(url, 1)
            want |= set(late_ids)
            self.start_replica("r2", BOOTSTRAP_FROM=copy)
            await asyncio.to_thread(
                wait_until, lambda: (s := reg(st, "status", replica="r2", check=False)) and
                s["state"] == "live" and s["connections"] == len(want), 20, "r2 to catch up")
            with open(os.path.join(st.dir, "registry-r2.log")) as fh:
                self.assertIn("bootstrapped from a checkpoint", fh.read())
            r1.stop()
            st.registry.stop()
            await asyncio.to_thread(wait_ids, st, want, 10, "r2 to answer alone")
            await close_all(socks[1:] + more + late)

        self.run_async(scenario())


# ---- encryption at rest ---------------------------------------------------

class EncryptedStack(Stack):
    """nats-server with its JetStream store encrypted as deploy/nats/local.conf
    does it (chachapoly, key from $DW_JS_KEY); only that block, so that the
    test does not depend on the rest of the local setup (users, passwords)."""

    def start_nats(self):
        store = os.path.join(self.dir, "nats")
        os.makedirs(store, exist_ok=True)
        conf = os.path.join(self.dir, "nats-encrypted.conf")
        with open(conf, "w") as f:
            f.write("jetstream {\n  cipher: chachapoly\n  key: $DW_JS_KEY\n}\n")
        # Starts with letters: nats-server would read "2e3f..." as a number.
        env = dict(os.environ, DW_JS_KEY="dwjs" + os.urandom(24).hex())
        self.nats = self._spawn("nats", [NATS_SERVER, "-js", "-c", conf, "-a", "127.0.0.1",
                                         "-p", str(self.nats_port), "-sd", store], env)

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.nats_port), timeout=0.2):
                    return True
            except OSError:
                return False
        wait_until(lambda: up() or not self.nats.alive(), 10, "nats-server to accept connections")
        assert self.nats.alive(), f"nats-server died:\n{self.nats.tail()}"
        assert "ChaCha20-Poly1305" in self.nats.tail(40), "JetStream is not encrypted"


class Encryption(StackTest):
    ENV = BASE_ENV

    def setUp(self):
        self.stack = EncryptedStack(edges=1, env=dict(self.ENV))
        self.key1 = write_key(os.path.join(self.stack.dir, "key1"), os.urandom(32))
        self.key2 = write_key(os.path.join(self.stack.dir, "key2"), os.urandom(32))
        self.stack.extra_env["DW_REGISTRY_KEY_FILE"] = self.key1
        self.stack.start()
        self.addCleanup(self._cleanup)
        self._problems = self._count_problems()

    def restart_registry(self, **env):
        st = self.stack
        st.registry.stop()
        return st.start_registry(**env)

    def refused(self, **env):
        """Start the registry with env; it must exit non-zero: its log."""
        p = self.restart_registry(**env)
        wait_until(lambda: not p.alive(), 15, "the registry to refuse to start")
        self.assertNotEqual(p.p.returncode, 0)
        return p.tail(5)

    def publish_user(self, conn_id, user_id, ip):
        st = self.stack
        edge_id = st.conns()[0]["edgeId"]   # a live edge, so nothing cleans the row up
        js_publish(st.nats_port, "dw.conn.connect", conn_event_connect(conn_id, edge_id, user_id, ip))
        wait_until(lambda: conn_id in (ids_or_none(st) or ()), 10, "the published connection")
        row = json.loads(st.dwctl("conn", "get", conn_id, "--json").stdout)
        self.assertEqual(row["userId"], user_id)
        self.assertEqual(row["sourceIp"], ip)

    def test_no_personal_data_on_disk_and_no_key_no_start(self):
        st = self.stack
        user = "user-7f3a9c2e-known"
        ip = "203.0.113.77"
        text = "chat-text-5d81b0e4-known"

        async def scenario():
            socks, ids = await open_clients(st.edges[0].url, 2)
            await asyncio.to_thread(wait_ids, st, ids)
            await asyncio.to_thread(self.publish_user, "conn-with-user", user, ip)
            await socks[0].send(json.dumps({"action": "sendmessage", "message": text}))
            for ws in socks:
                self.assertEqual(await recv_text(ws), text)
            await close_all(socks)
            return ids

        ids = self.run_async(scenario())
        s = reg(st, "status")
        self.assertTrue(s["encrypted"])
        self.assertEqual(s["key_ids"], [s["key_id"]])
        reg(st, "checkpoint")   # table files too, not only the WAL
        st.registry.stop()

        regdir = os.path.join(st.dir, "data", "registry")
        natsdir = os.path.join(st.dir, "nats")
        # The search sees RocksDB's bytes: connection ids are keys, in clear.
        self.assertTrue(files_containing(regdir, ids[0].encode()))
        for needle in (user, ip, text):
            for root in (regdir, natsdir):
                self.assertEqual(files_containing(root, needle.encode()), [],
                                 f"{needle!r} in clear under {root}")

        log = self.refused(REGISTRY_KEY_FILE="")
        self.assertIn("refusing to start rather than read garbage", log)
        self.assertIn("no key is configured", log)
        log = self.refused(REGISTRY_KEY_FILE=self.key2)
        self.assertIn("not in the keyring", log)
        st.start_registry()
        wait_until(lambda: ids_or_none(st) and "conn-with-user" in ids_or_none(st), 20,
                   "the registry back with its key")

    def test_key_rotation(self):
        st = self.stack
        url = st.edges[0].url

        async def scenario():
            socks, ids = await open_clients(url, 2)
            await asyncio.to_thread(wait_ids, st, ids)
            await asyncio.to_thread(self.publish_user, "rot-user", "user-rotation-1", "198.51.100.1")
            k1 = reg(st, "status")["key_id"]
            old_ck = reg(st, "checkpoint")["checkpoint"]
            self.assertEqual(old_ck["key_ids"], [k1])

            # Key 2 current, key 1 still read.
            self.restart_registry(REGISTRY_KEY_FILE=self.key2, REGISTRY_OLD_KEY_FILES=self.key1)
            s = await asyncio.to_thread(wait_state, st, "live")
            k2 = s["key_id"]
            self.assertNotEqual(k1, k2)
            self.assertEqual(sorted(s["key_ids"]), sorted([k1, k2]))
            row = json.loads(st.dwctl("conn", "get", "rot-user", "--json").stdout)
            self.assertEqual(row["userId"], "user-rotation-1")   # a key-1 value reads
            more, more_ids = await open_clients(url, 1)          # written with key 2
            want = set(ids) | set(more_ids) | {"rot-user"}
            await asyncio.to_thread(wait_ids, st, want)

            r = reg(st, "rotate-key")
            self.assertEqual(r["key_id"], k2)
            self.assertEqual(r["rewritten"], 3)                  # the key-1 values
            self.assertEqual(r["checkpoint"]["key_ids"], [k2])
            self.assertEqual(reg(st, "status")["key_ids"], [k2])
            again = reg(st, "rotate-key")
            self.assertEqual(again["rewritten"], 0)

            # Key 1 removed: everything still reads.
            self.restart_registry(REGISTRY_KEY_FILE=self.key2)
            await asyncio.to_thread(wait_state, st, "live")
            self.assertEqual(ids_or_none(st), want)
            row = json.loads(st.dwctl("conn", "get", "rot-user", "--json").stdout)
            self.assertEqual(row["userId"], "user-rotation-1")
            # The checkpoint sealed with key 1 is passed over by a restore.
            plan = reg(st, "restore", "--to", rfc3339(time.time()), "--dry-run")["plan"]
            self.assertEqual(plan["checkpoint"]["name"], again["checkpoint"]["name"])
            self.assertEqual(plan["skipped_for_keys"], 1)
            # And key 1 alone no longer opens the table.
            log = await asyncio.to_thread(self.refused, REGISTRY_KEY_FILE=self.key1)
            self.assertIn("not in the keyring", log)
            await close_all(socks + more)

        self.run_async(scenario())


if __name__ == "__main__":
    unittest.main()
