"""A well-behaved client keeps its latency while the edge is attacked
(issue #19): 500 half-open connections, a client flooding messages, a
client that reads nothing, and a storm of WebSocket connects, all at once
and kept up for the whole test (attackers.py, one process each). The good
client sends 10 runs of 50 messages, each to the lobby and back to itself
(edge -> JetStream -> dispatcher -> registry -> edge). Meanwhile 20
newcomers arrive, one every 250 ms, as a user opening the page during the
attack would: each connects and sends at once (its connect is not yet
durable), then sends 4 more messages one by one; a peer in the lobby
notes when each of their messages reaches it.

The test prints every run's p99, the worst, where messages spent their
time meanwhile (the edge's stage histograms: stored, delivered, written),
and how much CPU other work on the machine took. It checks:
- the edge's own part: its event loop was never late by more than 250 ms
  and by more than 50 ms in at most 1% of its 100 ms ticks
  (dw_edge_loop_lag_seconds), so no attacker stalls it;
- the whole path: every run's p99 under 100 ms (issue 19), 10 runs of 10.
  Before the dispatcher kept a pull request always waiting at its
  consumers and the edge answered room deliveries on arrival (issue 15),
  the worst run was 150 ms with 8 of 10 under 100 ms; since, 20-40 ms on
  a machine of its own. On a shared 2-core machine where other work takes
  more than FOREIGN_CPU_MAX of a core meanwhile, the runs measure that
  work, not the edge: the test then says so and only fails on a stall
  (STALL_S), such as the 1-1.5 s one libdw's pull once had;
- every newcomer served (connected, all 5 messages back, each at the peer
  once); its first message back and at the peer within 100 ms of its
  socket's open (the connect is made durable first), and the p99 of its
  later messages under 100 ms, judged like the runs. Four runs of the
  test (two on a quiet machine): first messages back after 2-13 ms, at the
  peer after 2-14 ms; later messages p99 9-12 ms (42 ms once, while other
  work took 0.71 of a core).
"""
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

import wsraw
from harness import Stack, wait_until
from wsraw import OP_TEXT

RUNS, MESSAGES, GOAL_S, STALL_S, FOREIGN_CPU_MAX = 10, 50, 0.100, 0.500, 0.25
# Newcomers: clients that connect while the attack and the runs go on and
# send at once (one every NEWCOMER_EVERY_S), NEWCOMER_MSGS messages each.
NEWCOMERS, NEWCOMER_MSGS, NEWCOMER_EVERY_S = 20, 5, 0.25
HZ = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))

# Per-IP limits off: every attacker here comes from 127.0.0.1, and the
# attack should reach the edge as if from many addresses. The edge-wide
# limits stay at their defaults (500 connects/s, 10,000 messages/s).
ENV = {"DW_IP_MAX_CONNS": "0", "DW_IP_CONN_RATE": "0", "DW_MSG_RATE": "50", "DW_MSG_BURST": "50"}


def p99(samples):
    """Nearest rank: with 50 samples, the largest."""
    s = sorted(samples)
    return s[math.ceil(0.99 * len(s)) - 1]


def cpu_busy():
    """Machine-wide busy CPU time so far, in seconds (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / HZ  # all but idle and iowait


def cpu_of(pids):
    """User + system CPU seconds of these processes so far (gone ones: 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / HZ


def stages(port):
    """{stage: (count, sum seconds)} of the edge's dw_edge_stage_seconds."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for kind, stage, v in re.findall(
            r'^dw_edge_stage_seconds_(count|sum)\{stage="(\w+)"\} (\S+)', text, re.M):
        c, t = out.get(stage, (0, 0.0))
        out[stage] = (int(float(v)), t) if kind == "count" else (c, float(v))
    return out


def loop_lag(port):
    """(ticks, late by more than 50 ms, late by more than 250 ms)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    b = {m.group(1): int(m.group(2)) for m in re.finditer(
        r'^dw_edge_loop_lag_seconds_bucket\{le="([^"]+)"\} (\d+)', text, re.M)}
    count = int(re.search(r"^dw_edge_loop_lag_seconds_count (\d+)", text, re.M).group(1))
    return count, count - b["0.05"], count - b["0.25"]


class Peer:
    """A lobby member that reads everything on its own thread and notes when
    each newcomer message first reached it, and how often."""

    def __init__(self, port):
        self.c = wsraw.connect(port)
        self.first, self.count = {}, {}
        self.error = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stop.is_set():
            try:
                op, payload = self.c.recv_message(0.5)
            except wsraw.Ended as e:
                if e.how == "timeout":
                    continue
                self.error = f"peer connection ended: {e.how}"
                return
            except wsraw.Closed as e:
                self.error = str(e)
                return
            if op == OP_TEXT and payload.startswith(b"new"):
                self.first.setdefault(payload, time.monotonic())
                self.count[payload] = self.count.get(payload, 0) + 1

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.c.abort()


def newcomer(port, i, start_at, out):
    """At start_at: connect, send the first message as soon as the socket is
    open, wait for its echo, then send the others one by one. out[i] gets
    the times (or the error)."""
    time.sleep(max(0.0, start_at - time.monotonic()))  # pacing of arrivals
    r = out[i] = {"sent": []}
    c = None
    try:
        t0 = time.monotonic()
        c = wsraw.connect(port)
        r["t_open"] = t_open = time.monotonic()
        r["open_s"] = t_open - t0
        rtts = []
        for k in range(NEWCOMER_MSGS):
            want = f"new{i}-{k}".encode()
            t = time.monotonic()
            c.text(json.dumps({"action": "sendmessage", "data": want.decode()}))
            r["sent"].append(want)
            while True:
                op, payload = c.recv_message(10)
                if op == OP_TEXT and payload == want:
                    break
            if k == 0:
                r["first_s"] = time.monotonic() - t_open
            else:
                rtts.append(time.monotonic() - t)
        r["rtts"] = rtts
    except Exception as e:  # what the user would see: counted as not served
        r["error"] = repr(e)
    finally:
        if c:
            c.abort()


class AbuseLatency(unittest.TestCase):
    def setUp(self):
        self.stack = Stack(edges=1, env=ENV).start()
        self.addCleanup(self.stack.cleanup)

    def run_once(self, c, tag):
        rtts = []
        for i in range(MESSAGES):
            want = f"{tag}-{i}".encode()
            t0 = time.monotonic()
            c.text(json.dumps({"action": "sendmessage", "data": want.decode()}))
            while True:
                op, payload = c.recv_message(10)
                if op == OP_TEXT and payload == want:
                    break
            rtts.append(time.monotonic() - t0)
            time.sleep(0.02)
        return rtts

    def attacker(self, *args):
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "attackers.py"), *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.addCleanup(self._stop, p)
        return p

    @staticmethod
    def _stop(p):
        p.kill()
        p.wait(10)

    def test_good_client_p99_under_attack(self):
        port = self.stack.edges[0].port
        good = wsraw.connect(port)
        self.addCleanup(good.abort)
        peer = Peer(port)
        self.addCleanup(peer.close)
        self.stack.wait_conn_count(2)
        alone = p99(self.run_once(good, "alone"))

        half_open = self.attacker("half_open", port, 500)
        attackers = {"half-open": half_open, "flooder": self.attacker("flood", port),
                     "slow reader": self.attacker("slow_reader", port),
                     "connect storm": self.attacker("storm", port, 200)}
        # Under way: 500 half-open connections held, the others reporting.
        first = {name: p.stdout.readline().strip() for name, p in attackers.items()}
        wait_until(lambda: int(half_open.stdout.readline().split()[3]) >= 500, 20,
                   "500 half-open connections")
        ours = [p.pid for p in self.stack.procs] + [p.pid for p in attackers.values()] + \
            [os.getpid()]
        lag0, st0 = loop_lag(port), stages(port)
        t0, busy0, ours0 = time.monotonic(), cpu_busy(), cpu_of(ours)

        # Newcomers arrive during the runs, under the whole attack.
        news = {}
        threads = [threading.Thread(target=newcomer, daemon=True,
                                    args=(port, i, t0 + 0.5 + i * NEWCOMER_EVERY_S, news))
                   for i in range(NEWCOMERS)]
        for t in threads:
            t.start()
        runs = []
        for r in range(RUNS):
            rtts = self.run_once(good, f"run{r}")
            runs.append((p99(rtts), sorted(rtts)[len(rtts) // 2]))
        for t in threads:
            t.join(60)
        sent = [m for r in news.values() for m in r["sent"]]
        try:
            wait_until(lambda: all(m in peer.first for m in sent) or peer.error, 10,
                       "the peer to get every newcomer message")
        except AssertionError:
            pass  # judged below, once the figures are printed
        elapsed, foreign = time.monotonic() - t0, (cpu_busy() - busy0) - (cpu_of(ours) - ours0)
        lag1, st1 = loop_lag(port), stages(port)
        last = {}
        for name, p in attackers.items():
            p.kill()
            out, _ = p.communicate(timeout=10)
            lines = [line for line in out.splitlines() if line.strip()]
            last[name] = lines[-1] if lines else first[name]
        ticks, late50, late250 = (b - a for a, b in zip(lag0, lag1))

        print(f"\ngood client alone: p99 {alone * 1000:.1f} ms")
        for i, (q, med) in enumerate(runs):
            print(f"  run {i + 1:2}: p99 {q * 1000:6.1f} ms, median {med * 1000:5.1f} ms")
        worst = max(q for q, _ in runs)
        within = sum(q < GOAL_S for q, _ in runs)
        print(f"worst p99 under attack over {RUNS} runs of {MESSAGES} messages: "
              f"{worst * 1000:.1f} ms; runs under {GOAL_S * 1000:.0f} ms: {within}/{RUNS}")
        print(f"edge event loop: {ticks} ticks, {late50} more than 50 ms late, "
              f"{late250} more than 250 ms late")
        print("edge stages meanwhile (mean): " + ", ".join(
            f"{k} {(st1[k][1] - st0.get(k, (0, 0))[1]) / n * 1000:.1f} ms"
            for k in st1 if (n := st1[k][0] - st0.get(k, (0, 0))[0]) > 0))
        share = max(foreign, 0.0) / elapsed
        print(f"other work on the machine meanwhile: {max(foreign, 0.0):.1f} CPU-s in "
              f"{elapsed:.1f} s ({share:.2f} of a core)")
        for name, line in last.items():
            print(f"  {name}: {line}")
        served = [r for r in news.values() if "rtts" in r]
        firsts = sorted(r["first_s"] for r in served)
        at_peer = sorted(peer.first[f"new{i}-0".encode()] - r["t_open"]
                         for i, r in news.items() if f"new{i}-0".encode() in peer.first)
        new_rtts = [x for r in served for x in r["rtts"]]
        ms = (lambda xs: " ".join(f"{x * 1000:.0f}" for x in xs))
        print(f"newcomers (connect under attack, send at once): {len(served)}/{NEWCOMERS} served;"
              f" handshake max {max((r['open_s'] for r in served), default=0) * 1000:.1f} ms")
        print(f"  socket open -> own first message back (ms): {ms(firsts)}")
        print(f"  socket open -> first message at a peer (ms): {ms(at_peer)}")
        if new_rtts:
            med = sorted(new_rtts)[len(new_rtts) // 2]
            print(f"  later messages: p99 {p99(new_rtts) * 1000:.1f} ms, median "
                  f"{med * 1000:.1f} ms ({len(new_rtts)} messages)")
        # Every newcomer served, every message of theirs at the peer once.
        self.assertEqual([(i, r["error"]) for i, r in news.items() if "error" in r], [])
        self.assertEqual(len(served), NEWCOMERS)
        self.assertIsNone(peer.error)
        self.assertEqual(sorted(sent), sorted(peer.count))
        self.assertEqual({m: n for m, n in peer.count.items() if n != 1}, {}, "delivered twice")
        self.assertTrue(self.stack.edges[0].alive())
        if os.environ.get("DW_SANITIZE"):
            # Sanitized binaries run several times slower: the numbers are
            # printed, the limits are for real builds.
            print("(sanitizer build: latencies not checked)")
            return
        self.assertGreater(ticks, 100)
        self.assertEqual(late250, 0, "the edge's loop stalled")
        self.assertLessEqual(late50, ticks // 100, "the edge's loop was late too often")
        if share > FOREIGN_CPU_MAX:
            print(f"(other work took more than {FOREIGN_CPU_MAX} of a core: the {GOAL_S * 1000:.0f}"
                  f" ms goal is not judged; a stall over {STALL_S * 1000:.0f} ms still fails)")
            self.assertLess(worst, STALL_S)
            self.assertLess(max(firsts + at_peer + new_rtts), STALL_S)
            return
        self.assertEqual(within, RUNS, f"worst p99 {worst * 1000:.1f} ms")
        # A newcomer's first message, counted from its socket's open (its
        # connect must be durable first), and its later ones: the same goal.
        self.assertLess(max(firsts), GOAL_S, f"first messages {ms(firsts)} ms")
        self.assertLess(max(at_peer), GOAL_S, f"first messages at the peer {ms(at_peer)} ms")
        self.assertLess(p99(new_rtts), GOAL_S, "newcomers' later messages, p99")


if __name__ == "__main__":
    unittest.main()
