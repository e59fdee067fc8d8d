"""Cluster fault suite (issue 14): the faultload v1 load and exactness
checker on a 3-node nats-server JetStream cluster (streams at 3 replicas)
with 2 edges, 2-3 dispatchers and 2 registry replicas, every process given
the three URLs.

Node faults: kill -9 of the node leading DW_MSG, of the node leading
DW_CONN, of the node the edges are connected to (each restarted after a
few seconds on its store and ports), and a node stopped (SIGSTOP) for 10 s.
Scaling under load: dispatchers added and removed (SIGTERM, kill -9), a
registry replica added from a checkpoint, an edge drained with SIGTERM.

Each test asserts: nothing lost (unless dead-lettered with a reason),
duplicated or out of order at any member, every send answered exactly once
and acked in the end, every client back; and for node faults, no send
blocked longer than MAX_SEND_BLOCK_S (from its first attempt to its ack,
retries after `unavailable` included). The checker's table row is printed
(also on success), with the cluster's view (who led what, where the edges
were).

  ctest --test-dir build -L cluster --output-on-failure -V     # ~6 min
  cd tests/integration && DW_BIN_DIR=$PWD/../../build/bin \\
      /usr/bin/python3 -m unittest -v test_cluster_faults.NodeFaults.test_kill9_msg_leader

DW_FAULT_SEED and DW_FAULT_LOG_DIR work as in test_faults.py.
"""
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import unittest

import websockets

import faultload
from cluster import ClusterStack
from harness import BIN, NATS_SERVER, wait_until

CONNECTIONS = 100
ROOMS = 10
RATE = 200.0
DURATION = 20.0
FAULT_WINDOW = (4.0, 6.0)
DRAIN = 35.0
MIN_ACKED = 0.9 * RATE * DURATION
# Issue 14: sends blocked at most 5 s per fault, beyond the time DW_MSG
# itself had no leader (a raft election in nats-server: 4-7 s measured on
# 2.9.10 after its leader died, longer when a stalled leader comes back;
# not configurable there). The probe below measures that time in each run.
MAX_SEND_BLOCK_S = 5.0
# After the fault is over (node back, SIGCONT), what was acked before
# reaches every member within this long. Scaling steps: the issue 13 bound.
RECOVERY_S = 5.0
# Node faults: a partition whose consumer's leader was on the node waits
# for a new consumer (an R3 create takes 0.3-6.5 s while a node is down or
# rejoining) or for its consumer's election; the registry replicas the
# same for theirs. Measured up to ~10 s after the node was back.
NODE_RECOVERY_S = 15.0
NODE_DOWN_S = 3.0
STOP_S = 10.0

# The edges wait this long for a JetStream ack before answering
# `unavailable` (default 5 s). A publish in flight when the edge's node dies,
# or sent to a stream leader that stalls, is never answered: the client's
# retry (same id) can only start after this. docs/operations.md, cluster.
ENV = dict(faultload.STACK_ENV, DW_PUBLISH_TIMEOUT_MS="2000")
EDGE_IDS = ["cluster-edge-000", "cluster-edge-001"]

SEED = int(os.environ.get("DW_FAULT_SEED") or random.SystemRandom().randrange(1 << 31))
print(f"test_cluster_faults: DW_FAULT_SEED={SEED}", file=sys.stderr)


class Probe(threading.Thread):
    """What the cluster does around a fault, sampled every `every` s:
    which node leads DW_MSG and DW_CONN (None: no answer), DW_CONN's last
    sequence and every registry replica's applied sequence; and from the
    fault on, a fresh plain WebSocket connection every second whose connect
    must become durable (the edge answers a frame only then) and visible in
    the registry (`dwctl conn get`)."""

    def __init__(self, test, every=0.25):
        super().__init__(daemon=True)
        self.t = test
        self.every = every
        self.stop = threading.Event()
        self.samples = []  # (t, {stream: leader}, conn_last, {replica: applied})
        self.connects = []  # (t_start, durable_s or None, visible_s or None)
        self.fault_t = self.heal_t = None

    def run(self):
        asyncio.run(self._main())

    def sample(self):
        st = self.t.stack
        t = time.monotonic()
        leaders, last = {}, None
        for stream in ("DW_MSG", "DW_CONN"):
            info = st.cluster.stream_info(stream, timeout=0.5)
            leaders[stream] = ((info or {}).get("cluster") or {}).get("leader")
            if stream == "DW_CONN" and info:
                last = info["state"]["last_seq"]
        applied = {}
        for r in st.registries:
            m = st.metrics(r) if r.alive() else {}
            if "dw_registry_applied_seq" in m:
                applied[r.replica] = int(m["dw_registry_applied_seq"])
        self.samples.append((t, leaders, last, applied))

    async def _main(self):
        """Samples in a worker thread; connect probes as tasks of this
        loop, so that their sockets stay open until the end."""
        sockets, tasks = [], []
        next_connect = None
        try:
            while not self.stop.is_set():
                t = time.monotonic()
                await asyncio.to_thread(self.sample)
                if self.fault_t is not None:
                    if next_connect is None:
                        next_connect = self.fault_t
                    while next_connect <= time.monotonic() and next_connect < self.fault_t + 20:
                        next_connect += 1.0
                        tasks.append(asyncio.create_task(self.connect_probe(sockets)))
                await asyncio.sleep(max(0.0, self.every - (time.monotonic() - t)))
        finally:
            for tk in tasks:
                tk.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    async def connect_probe(self, sockets):
        """Connect (retrying, alternating edges) until a frame is answered
        (the connect event is durable then), then poll the registry for the
        connection id; the socket stays open."""
        st = self.t.stack
        t0 = time.monotonic()
        rec = [t0, None, None]
        self.connects.append(rec)
        cid, i = None, 0
        while cid is None and time.monotonic() - t0 < 60:
            edge = st.edges[i % len(st.edges)]
            i += 1
            try:
                ws = await asyncio.wait_for(websockets.connect(edge.url, ping_interval=None,
                                                               close_timeout=0.5), 5)
            except (OSError, asyncio.TimeoutError, websockets.WebSocketException):
                await asyncio.sleep(0.2)
                continue
            sockets.append(ws)
            try:
                await ws.send("whoami")
                reply = await asyncio.wait_for(ws.recv(), 10)
                cid = json.loads(reply.split("Your info: ", 1)[1])["connectionID"]
            except (asyncio.TimeoutError, websockets.WebSocketException, IndexError, ValueError):
                await asyncio.sleep(0.2)
        if cid is None:
            return
        rec[1] = round(time.monotonic() - t0, 3)
        while time.monotonic() - t0 < 60:
            if await asyncio.to_thread(st.dwctl_ok, "conn", "get", cid):
                rec[2] = round(time.monotonic() - t0, 3)
                return
            await asyncio.sleep(0.1)

    def summary(self, victim=None):
        """The longest stretch from the fault without a DW_MSG / DW_CONN
        leader other than the victim; the longest a registry replica stayed
        behind a DW_CONN sequence it had seen; the connect probes."""
        out = {}
        if self.fault_t is None:
            return out
        after = [s for s in self.samples if s[0] >= self.fault_t]
        heal = self.heal_t if self.heal_t is not None else float("inf")

        def led(s, stream):  # a leader that can answer (the victim only once healed)
            return s[1][stream] and (s[1][stream] != victim or s[0] >= heal)
        for stream in ("DW_MSG", "DW_CONN"):
            ok = [s[0] for s in after if led(s, stream)]
            bad = [s[0] for s in after if not led(s, stream)]
            out[f"{stream}_unavailable_s"] = round(min(ok) - self.fault_t, 2) if bad and ok \
                else (0.0 if ok else None)
        worst = {}
        for i, (t, _, last, _) in enumerate(after):
            if last is None:
                continue
            for rid in {k for s in after for k in s[3]}:
                t_ok = next((u for u, _, _, ap in after[i:] if ap.get(rid, -1) >= last), None)
                lag = (t_ok - t) if t_ok is not None else None
                if lag is None or lag > worst.get(rid, -1):
                    worst[rid] = lag if lag is not None else float("inf")
        out["registry_behind_s"] = {k: (round(v, 2) if v != float("inf") else None)
                                    for k, v in worst.items()}
        # A probe still waiting when the probe stopped is left out if it had
        # less than 10 s (the load ended under it), and counts as never
        # otherwise.
        end = self.samples[-1][0] if self.samples else float("inf")
        done = [c for c in self.connects if c[2] is not None or c[0] < end - 10]
        durable = [c[1] for c in done]
        visible = [c[2] for c in done]
        out["connect_probes"] = [(round(c[0] - self.fault_t, 1), c[1], c[2]) for c in self.connects]
        out["connect_durable_max_s"] = None if None in durable else max(durable, default=None)
        out["connect_visible_max_s"] = None if None in visible else max(visible, default=None)
        return out


class ClusterFaultTest(unittest.TestCase):
    DISPATCHERS = 2
    REGISTRIES = 2
    ENV = ENV

    def setUp(self):
        self.rng = random.Random(f"{SEED}-{self.id()}")
        t = time.monotonic()
        self.stack = ClusterStack(nodes=3, edges=2, dispatchers=self.DISPATCHERS,
                                  registries=self.REGISTRIES, env=self.ENV,
                                  edge_ids=EDGE_IDS).start()
        self.addCleanup(self._cleanup)
        self.view = {"setup_s": round(time.monotonic() - t, 2)}
        self.probe = Probe(self)

    def _cleanup(self):
        self.probe.stop.set()
        st = self.stack
        failed = any(e for _, e in (getattr(self._outcome, "errors", None) or []) if e) or \
            not getattr(self, "_ok", False)
        st.stop()
        keep = os.environ.get("DW_FAULT_LOG_DIR")
        if keep:
            dest = os.path.join(keep, self.id().rsplit(".", 1)[-1])
            os.makedirs(dest, exist_ok=True)
            for p in st.procs + st.cluster.nodes:
                try:
                    shutil.copy(p.log_path, dest)
                except OSError:
                    pass
        if failed:
            print(st.logs())
        reports = st.sanitizer_reports()
        st.cleanup()
        if reports:
            raise AssertionError("sanitizer reports in service logs:\n" + "\n".join(reports))

    def dlq(self):
        return faultload.dwctl_dlq(os.path.join(BIN, "dwctl"), self.stack.env())

    def run_load(self, label, fault, duration=DURATION, window=FAULT_WINDOW):
        at = round(self.rng.uniform(*window), 2)
        print(f"\n{self.id()}: seed={SEED} fault at {at} s", flush=True)
        load = faultload.Load([e.url for e in self.stack.edges], connections=CONNECTIONS,
                              rooms=ROOMS, rate=RATE, duration=duration, drain=DRAIN,
                              dlq=self.dlq, log=print)
        self.load = load
        self.probe.start()
        try:
            rep = asyncio.run(asyncio.wait_for(load.run(fault, at), duration + DRAIN + 180))
        finally:
            self.probe.stop.set()
            self.probe.join(30)
        self.view.update(self.probe.summary(self.view.get("victim")))
        faultload.print_report(label, rep)
        print("cluster: " + json.dumps(self.view), flush=True)
        self.report = rep
        return rep

    def check(self, rep, max_block_s=MAX_SEND_BLOCK_S, backlog_s=RECOVERY_S):
        bad = faultload.run_problems(rep, MIN_ACKED, backlog_s)
        if max_block_s is not None:
            js = self.view.get("DW_MSG_unavailable_s")
            bound = max_block_s + (js or 0.0)
            if js is None or (rep["max_ack_s"] or 0) > bound:
                bad.append(f"a send was blocked {rep['max_ack_s']:.2f} s (bound {max_block_s} s + "
                           f"DW_MSG without a leader {js} s)")
        if bad:
            self.fail("; ".join(bad) + "\n" + json.dumps(rep, indent=1))
        self._ok = True

    # --- node faults ------------------------------------------------------

    def node_fault(self, pick, kind="kill", secs=NODE_DOWN_S):
        """fault(): pick() -> the node, at the moment of the fault; kill -9
        it and restart it after secs, or SIGSTOP it for secs."""
        cl = self.stack.cluster

        def fault():
            n = pick()
            self.view["victim"] = n.server_name
            self.view["leaders_before"] = self.leaders()
            self.view["on_victim"] = self.clients_of(n)
            self.load.mark("fault")
            t = time.monotonic()
            self.probe.fault_t = t
            if kind == "stop":
                n.pause()
                time.sleep(secs)  # the stall's length, by definition
                n.resume()
                self.probe.heal_t = time.monotonic()
            else:
                n.kill9()
                time.sleep(secs)  # how long it stays down, by definition
                cl.restart(n)
            self.probe.heal_t = time.monotonic()
            self.load.mark("heal")
            self.view["fault_s"] = round(time.monotonic() - t, 2)
            self.view["leaders_after_heal"] = self.leaders()
        return fault

    def clients_of(self, n):
        """The stack's processes connected to node n."""
        return sorted(p.name for p in self.stack.procs
                      if p.alive() and n in self.stack.cluster.connected_nodes(p.pid))

    def leaders(self):
        cl = self.stack.cluster
        out = {}
        for s in ("DW_MSG", "DW_CONN", "KV_DW_DISPATCH"):
            n = cl.leader(s)
            out[s] = n.server_name if n else None
        m = cl.meta_leader()
        out["meta"] = m.server_name if m else None
        return out

    def check_node(self, rep):
        self.after_node_fault(rep)
        self.check(rep, backlog_s=NODE_RECOVERY_S)

    def after_node_fault(self, rep):
        """Once the load is over: the node rejoined, the streams are whole
        again, every partition is held once."""
        st = self.stack
        for n in st.cluster.nodes:
            st.cluster.wait_rejoined(n, 60)
        st.cluster.wait_healthy(["DW_MSG", "DW_CONN"], 60)
        wait_until(st.partitions_settled, 30, "every partition held once")


# The streams whose leaders a node fault is about; the others are moved
# off the victim first, so that each row measures one thing.
LED = ("DW_MSG", "DW_CONN", "KV_DW_DISPATCH")


class NodeFaults(ClusterFaultTest):
    def isolate(self, stream):
        """The node leading stream, after the other streams of LED were
        moved off it."""
        cl = self.stack.cluster
        victim = wait_until(lambda: cl.leader(stream), 30, f"{stream}'s leader")
        for other in LED:
            if other != stream:
                cl.move_leader(other, [victim])
        assert cl.leader(stream) is victim, "the leader moved while the others were moved"
        return victim

    def test_kill9_msg_leader(self):
        victim = self.isolate("DW_MSG")
        rep = self.run_load("kill -9 the DW_MSG leader, back after 3 s",
                            self.node_fault(lambda: victim))
        self.check_node(rep)

    def test_kill9_conn_leader(self):
        victim = self.isolate("DW_CONN")
        rep = self.run_load("kill -9 the DW_CONN leader, back after 3 s",
                            self.node_fault(lambda: victim))
        self.check_node(rep)

    def test_kill9_edges_node(self):
        cl = self.stack.cluster
        target = self.gather_edges()
        for s in LED:
            cl.move_leader(s, [target])
        rep = self.run_load("kill -9 the edges' node (no stream leader), back after 3 s",
                            self.node_fault(lambda: target))
        self.check_node(rep)

    def test_sigstop_node_10s(self):
        cl = self.stack.cluster
        rep = self.run_load("SIGSTOP the DW_MSG leader 10 s",
                            self.node_fault(lambda: cl.leader("DW_MSG"), "stop", STOP_S),
                            duration=DURATION + STOP_S)
        if rep["lost_msgs"] and nats_server_version() < (2, 11):
            split = consumer_split_brain(self.stack)
            if split:
                # nats-server 2.9: a node that resumes after SIGSTOP may still
                # serve as the leader of a replicated consumer whose
                # leadership moved, while its store catches up; both answer
                # pulls and one delivers past messages it does not have yet
                # (fixed upstream for replicated consumers in 2.11,
                # nats-io/nats-server#6566). docs/operations.md, "Running a
                # cluster". Every other check still applies.
                self.after_node_fault(rep)
                rest = [b for b in faultload.problems(rep)
                        if not b.startswith("lost_msgs=")]
                self.assertEqual(rest, [], rep)
                self.skipTest(f"{rep['lost_msgs']} messages lost after a consumer answered from "
                              f"two leaders ({'; '.join(split[:3])}): nats-server "
                              f"{'.'.join(map(str, nats_server_version()))} bug, see docs")
        self.check_node(rep)

    def gather_edges(self, tries=8):
        """The node edge0 is connected to; edge1 is restarted (same id)
        until it is on that node too (nats.c picks a random URL of the
        list), at most `tries` times. Returns the node."""
        st = self.stack
        target = wait_until(lambda: st.cluster.connected_nodes(st.edges[0].pid), 10,
                            "edge0's NATS connection")[0]
        for _ in range(tries):
            nodes = st.cluster.connected_nodes(st.edges[1].pid)
            if nodes and all(n is target for n in nodes):
                break
            st.restart(st.edges[1])
            wait_until(lambda: st.cluster.connected_nodes(st.edges[1].pid), 10,
                       "edge1's NATS connection")
        self.view["edges_gathered"] = st.edge_nodes()
        return target


def nats_server_version():
    """nats-server's version as a tuple (2, 9, 10)."""
    out = subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True).stdout
    digits = out.strip().rsplit("v", 1)[-1].split(".")
    return tuple(int(d) for d in digits if d.isdigit())


def consumer_split_brain(st):
    """Dispatcher log lines where a partition consumer's deliveries went
    back or repeated a consumer sequence ('gap:A->B' with B <= A, or
    'order:'): the signature of two consumer leaders answering."""
    out = []
    for d in st.dispatchers:
        with open(d.log_path, errors="replace") as f:
            for line in f:
                m = re.search(r"why=gap:(\d+)->(\d+)", line)
                if (m and int(m.group(2)) <= int(m.group(1))) or "why=order:" in line:
                    out.append(line.split("msg=", 1)[-1].strip())
    return out


def find_key(obj, key):
    """The first value of key in a nested JSON object (dwctl --json)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = find_key(v, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = find_key(v, key)
            if found is not None:
                return found
    return None


class Scaling(ClusterFaultTest):
    """Services added and removed under the load: partitions move,
    replicas join, clients move; the checker stays green."""

    def steps(self, *steps):
        """fault(): run each (label, action, settled) in turn: action()
        then wait until settled() is truthy; the time each took goes to
        the view. mark('fault') before the first, mark('heal') after the
        last."""
        def fault():
            self.load.mark("fault")
            self.probe.fault_t = time.monotonic()
            for label, action, settled, timeout in steps:
                t = time.monotonic()
                action()
                got = wait_until(settled, timeout, label, 0.05)
                self.view.setdefault("steps", []).append(
                    {"step": label, "settled_s": round(time.monotonic() - t, 2),
                     "result": got if isinstance(got, (dict, list, str, int)) else True})
                time.sleep(2.0)  # the load runs on in the new shape a moment
            self.load.mark("heal")
        return fault

    def test_dispatchers_added_and_removed(self):
        """A third dispatcher joins (partitions spread over three), one
        leaves with SIGTERM (it gives its partitions back), one is killed
        with kill -9 (its lease ages out): after each step every partition
        is held once (the dw_dispatcher_partitions gauges sum to 16)."""
        st = self.stack
        added = []

        def add():
            added.append(st.start_dispatcher(wait=False))

        def term():
            st.dispatchers[0].stop()

        def kill():
            st.dispatchers[1].kill9()

        rep = self.run_load(
            "dispatchers: +1, one SIGTERM, one kill -9 (3 -> 2 -> 1)",
            self.steps(("3 dispatchers hold the 16 partitions", add,
                        lambda: st.partitions_settled(3), 30),
                       ("2 after SIGTERM", term, lambda: st.partitions_settled(2), 30),
                       ("1 after kill -9", kill, lambda: st.partitions_settled(1), 30)),
            duration=30.0, window=(3.0, 4.0))
        self.assertEqual(list(st.partitions().values()), [16])
        self.check(rep, max_block_s=MAX_SEND_BLOCK_S, backlog_s=RECOVERY_S)

    def test_registry_replica_added_from_checkpoint(self):
        """A third registry replica starts from a checkpoint of r0 (copied
        like a backup: DW_BOOTSTRAP_FROM) while the load runs and clients
        connect (the probe, one a second); once it serves, r0 and r1 are stopped (SIGTERM) for a
        few seconds, so the dispatchers' room queries are answered by the
        new replica alone; then they start again."""
        st = self.stack
        seed = os.path.join(st.dir, "seed-r2")
        state = {}

        def bootstrap():
            out = json.loads(st.dwctl("registry", "checkpoint", "--replica", "r0",
                                      "--json").stdout)
            state["checkpoint"] = out
            shutil.copytree(find_key(out, "path"), seed)
            state["r2"] = st.start_registry("r2", wait=False, BOOTSTRAP_FROM=seed)

        def r2_serves():
            r2 = state["r2"]
            if not st.ready(r2):
                return None
            stat = json.loads(st.dwctl("registry", "status", "--replica", "r2", "--json").stdout)
            return stat if stat.get("state") == "live" else None

        def only_r2():
            for r in st.registries[:2]:
                r.stop()

        def back():
            for r in st.registries[:2]:
                r.start()

        def all_live():
            return all(st.ready(r) for r in st.registries)

        rep = self.run_load(
            "registry replica added from a checkpoint, then the only one serving for 5 s",
            self.steps(("r2 bootstrapped from r0's checkpoint serves", bootstrap, r2_serves, 60),
                       ("r0 and r1 stopped (SIGTERM)", only_r2,
                        lambda: not any(r.alive() for r in st.registries[:2]), 30),
                       ("r0 and r1 back", back, all_live, 60)),
            duration=30.0, window=(3.0, 4.0))
        log = open(state["r2"].log_path).read()
        self.assertIn("bootstrapped from a checkpoint", log, "r2 did not start from the checkpoint")
        # Every replica holds the same table in the end.
        last = st.cluster.stream_info("DW_CONN")["state"]["last_seq"]

        def statuses():
            out = {}
            for rid in ("r0", "r1", "r2"):
                out[rid] = json.loads(st.dwctl("registry", "status", "--replica", rid,
                                               "--json").stdout)
            return out if all(v["applied_seq"] >= last for v in out.values()) else None
        sts = wait_until(statuses, 30, "every replica at DW_CONN's end")
        self.view["replicas"] = {k: (v["applied_seq"], v["connections"]) for k, v in sts.items()}
        self.assertEqual(len({v["connections"] for v in sts.values()}), 1, sts)
        self.check(rep, max_block_s=MAX_SEND_BLOCK_S, backlog_s=RECOVERY_S)

    def test_consumers_deleted(self):
        """Every partition consumer (dwp-*) is deleted from under the
        dispatchers while the load runs, as an operator's mistake or a
        stale consumer setup would: each dispatcher notices (a refused
        pull, or pulls that go unanswered and a consumer info that says
        "not found"), reads its partitions again under new consumers, and
        nothing is lost, repeated or reordered."""
        st = self.stack

        def fault():
            self.load.mark("fault")
            self.probe.fault_t = time.monotonic()
            with st.cluster.raw() as r:
                names = r.js("CONSUMER.NAMES.DW_MSG").get("consumers") or []
                gone = [n for n in names if n.startswith("dwp-")
                        and r.js(f"CONSUMER.DELETE.DW_MSG.{n}").get("success")]
            self.view["consumers_deleted"] = len(gone)
            self.load.mark("heal")
        rep = self.run_load("every partition consumer deleted", fault)
        self.assertGreaterEqual(self.view["consumers_deleted"], 16, self.view)
        resets = {}
        for d in st.dispatchers:
            for why in re.findall(r'read again from its floor" partition=\d+ why=(\S+)', d.tail(4000)):
                resets[why] = resets.get(why, 0) + 1
        self.view["resets"] = resets
        print("resets: " + json.dumps(resets), flush=True)
        self.check(rep, max_block_s=MAX_SEND_BLOCK_S, backlog_s=RECOVERY_S)

    def test_edge_drained_with_sigterm(self):
        """SIGTERM to one edge under the load: it closes its sockets, its
        clients reconnect to the other edge and resume with `since`."""
        st = self.stack
        victim = st.edges[1]

        def fault():
            self.load.mark("fault")
            self.probe.fault_t = time.monotonic()
            t = time.monotonic()
            code = victim.stop(timeout=15)
            self.view["edge_stop"] = {"exit": code, "took_s": round(time.monotonic() - t, 2)}
            self.load.mark("heal")
        rep = self.run_load("edge drained with SIGTERM (clients resume on the other)", fault)
        self.assertEqual(self.view["edge_stop"]["exit"], 0, victim.tail())
        self.assertGreaterEqual(rep["reconnects"], CONNECTIONS // 2, rep)
        self.assertEqual(rep["clients_per_edge"], {0: CONNECTIONS}, rep)
        self.check(rep, max_block_s=MAX_SEND_BLOCK_S, backlog_s=RECOVERY_S)


if __name__ == "__main__":
    unittest.main()
