"""Zero data loss (issue #4): retries with exponential backoff, dead letters
(the dispatcher's own and the max-deliveries advisory's), and `dwctl dlq`
replay under faults: registry stopped, dispatcher killed mid-burst, an edge
that stops answering, a poison message, an interrupted replay, a partition
consumer deleted while no pull waited at it.

Retry schedules are shortened through the environment so the tests stay fast.
"""
import asyncio
import collections
import datetime
import json
import os
import signal
import subprocess
import time
import unittest

from harness import BIN, StackTest, connect, no_message, recv_text, wait_until
from cluster import RawNats  # scripts/natsproto.py's client


def msg_subject(room, partitions=16):
    """DW_MSG subject of a room: dw.msg.<FNV-1a 32 of the name mod 16>.<room>
    (dw_subj_msg in services/common)."""
    h = 2166136261
    for c in room.encode():
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return f"dw.msg.{h % partitions}.{room}"


def dlq_entries(st):
    out = st.dwctl("dlq", "list", "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def dlq_depth(st):
    """Entries in DW_DLQ, from JetStream itself (works without the service)."""
    raw = RawNats(st.nats_port)
    try:
        return json.loads(raw.request("$JS.API.STREAM.INFO.DW_DLQ", b""))["state"]["messages"]
    finally:
        raw.close()


def iso_ms(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000


def metrics(port):
    """Prometheus text of a status port as {'name{labels}': value}."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


async def drain_texts(ws, n, timeout=30):
    """The next n text frames of ws."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(got)} of {n} messages")
        got.append(await recv_text(ws, left))
    return got


async def close_all(*socks):
    """Close the clients (else the event loop's shutdown waits out each
    client's close timeout)."""
    await asyncio.gather(*(ws.close() for ws in socks))


# Short, still exponential: 150, 300, 600, 1200, 2400 ms between 6 attempts.
BASE_ENV = {
    "DW_STATUS_PORT": "0",  # many stacks per machine; the deadletter gets its own port
    "DW_MAX_DELIVER": "6",
    "DW_RETRY_BASE_MS": "150",
    "DW_RETRY_MAX_MS": "5000",
    "DW_REGISTRY_TIMEOUT_MS": "100",
    "DW_EDGE_TIMEOUT_MS": "150",
    # the clients here send faster than a person would
    "DW_MSG_RATE": "0",
    "DW_EDGE_MSG_RATE": "0",
}


class RegistryDown(StackTest):
    """Test 1: registry stopped while clients send; retries, DLQ, replay."""
    # 200, 400, 800, 1600, 3200 ms: each step longer than one attempt's
    # registry wait, so the growth shows through the timing noise.
    ENV = dict(BASE_ENV, DW_RETRY_BASE_MS="200")

    def test_registry_stopped_dead_letters_then_replay_delivers_once(self):
        st = self.stack

        async def scenario():
            clients = [await connect(st.edges[0].url) for _ in range(3)]
            await asyncio.to_thread(st.wait_conn_count, 3)
            st.registry.signal(signal.SIGSTOP)
            sent = [f"m{i:03d}" for i in range(100)]
            for i, text in enumerate(sent):
                await clients[i % 3].send(json.dumps({"action": "sendmessage", "data": text}))

            entries = await asyncio.to_thread(
                wait_until, lambda: (lambda e: e if len(e) >= 100 else None)(dlq_entries(st)), 60,
                "100 dead letters")
            self.assertEqual(len(entries), 100)
            self.assertEqual(len({e["streamSeq"] for e in entries}), 100)
            for e in entries:
                self.assertEqual(e["reason"], "registry_unavailable", e)
                self.assertEqual(e["source"], "dispatcher")
                self.assertEqual(e["room"], "lobby")
                self.assertEqual(e["subject"], msg_subject("lobby"))
                self.assertEqual(e["attempts"], 6)
                times = [iso_ms(t) for t in e["attemptTimes"]]
                self.assertEqual(len(times), 6, e)
                self.assertEqual(times[0], iso_ms(e["firstFailure"]))
                self.assertEqual(times[-1], iso_ms(e["lastFailure"]))
                gaps = [b - a for a, b in zip(times, times[1:])]
                for k, gap in enumerate(gaps):
                    # never before the scheduled delay ...
                    self.assertGreaterEqual(gap, 200 * 2 ** k - 2, (k, gaps))
                # ... and the gaps grow (the delay doubles each time)
                self.assertEqual(gaps, sorted(gaps), gaps)
                self.assertGreater(gaps[-1], gaps[0] + 1000, gaps)
            # Nothing reached anyone while the registry was away.
            for ws in clients:
                self.assertIsNone(await no_message(ws, 0.05))

            # A max-deliveries advisory for a message already dead-lettered
            # (as when the dispatcher's Term is lost) adds nothing.
            dl_port = st.deadletter.status_port
            raw = RawNats(st.nats_port)
            for e in entries[:3]:
                raw.publish("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.DW_MSG.dispatcher",
                            json.dumps({"type": "io.nats.jetstream.advisory.v1.max_deliver",
                                        "stream": "DW_MSG", "consumer": "dispatcher",
                                        "stream_seq": e["streamSeq"], "deliveries": 6}).encode())
            raw.flush()
            raw.close()
            await asyncio.to_thread(
                wait_until,
                lambda: metrics(dl_port).get("dw_deadletter_advisory_duplicates_total") == 3,
                15, "the advisories to be handled")
            self.assertEqual(len(dlq_entries(st)), 100)
            m = metrics(dl_port)
            self.assertEqual(m['dw_deadletter_captured_total{source="dispatcher"}'], 100)
            self.assertEqual(m['dw_deadletter_captured_total{source="advisory"}'], 0)

            st.registry.signal(signal.SIGCONT)
            await asyncio.to_thread(wait_until, lambda: st.dwctl_ok("conn", "list"), 20,
                                    "registry back")
            r = await asyncio.to_thread(st.dwctl, "dlq", "replay", "--all")
            self.assertIn("replayed 100, skipped 0, failed 0", r.stdout)

            for ws in clients:
                got = await drain_texts(ws, 100)
                self.assertEqual(sorted(got), sent)
            for ws in clients:
                self.assertIsNone(await no_message(ws, 0.3), "delivered twice")
            self.assertEqual(dlq_entries(st), [])
            stats = json.loads(st.dwctl("dlq", "stats", "--json").stdout)
            self.assertEqual(stats["depth"], 0)
            self.assertEqual(stats["dispatcher"]["numPending"], 0)
            await asyncio.to_thread(
                wait_until, lambda: metrics(dl_port).get("dw_deadletter_replayed_total") == 100, 5,
                "replayed counter")
            await close_all(*clients)

        self.run_async(scenario(), timeout=150)


class DispatcherKilledMidBurst(StackTest):
    """Test 2: kill -9 of the dispatcher during a 10,000-message burst to 100
    clients, then restart: every client gets every message exactly once."""
    # 100 connections from one address: above the edge's per-IP defaults.
    ENV = dict(BASE_ENV, DW_ACK_WAIT_MS="2000", DW_IP_CONN_RATE="0", DW_IP_MAX_CONNS="0")

    def test_kill9_dispatcher_mid_burst_exactly_once(self):
        st = self.stack
        env = {k: v for k, v in os.environ.items() if not k.startswith("DW_")}
        bench = subprocess.Popen(
            [os.path.join(BIN, "dwbench"), "--url", st.edges[0].url, "--connections", "100",
             "--senders", "10", "--rate", "2510", "--duration", "4", "--drain", "40",
             "--log-level", "warn"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            raw = RawNats(st.nats_port)

            def stored():
                info = json.loads(raw.request("$JS.API.STREAM.INFO.DW_MSG", b""))
                return info["state"]["messages"]

            # Mid-burst: a few thousand of the 10,000 are in DW_MSG.
            wait_until(lambda: stored() >= 3000 or bench.poll() is not None, 60,
                       "the burst to be under way", interval=0.01)
            raw.close()
            self.assertIsNone(bench.poll(), "dwbench ended early")
            st.dispatcher.kill9()
            st.start_dispatcher()
            out, err = bench.communicate(timeout=90)
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.wait()
        res = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(bench.returncode, 0, f"{res}\n{err[-2000:]}")
        print(f"dwbench: {json.dumps(res)}")
        self.assertEqual(res["receivers"], 100)
        self.assertGreaterEqual(res["sent"], 10000)
        self.assertEqual(res["expected"], res["sent"] * 100)
        self.assertEqual(res["delivered"], res["expected"])
        self.assertEqual(res["lost"], 0)
        self.assertEqual(res["dup"], 0)
        self.assertEqual(res["errors"], 0)
        # and nothing needed the DLQ
        self.assertEqual(dlq_depth(st), 0)


class EdgeStopsAnswering(StackTest):
    """Test 3: an edge stopped (SIGSTOP) for longer than the retry schedule:
    its messages are dead-lettered with edge_timeout:<edge>, retries go only to
    it, and clients on the other edge got theirs once."""
    EDGES = 2
    ENV = dict(BASE_ENV, DW_EDGE_DEAD_MS="60000")

    def test_stopped_edge_dead_letters_with_its_id(self):
        st = self.stack

        async def scenario():
            b = [await connect(st.edges[1].url) for _ in range(2)]
            await asyncio.to_thread(st.wait_conn_count, 2)
            stopped_edge = st.conns()[0]["edgeId"]
            a = [await connect(st.edges[0].url) for _ in range(2)]
            await asyncio.to_thread(st.wait_conn_count, 4)
            other_edge = ({c["edgeId"] for c in st.conns()} - {stopped_edge}).pop()
            # Both edges take part once, so their delivery paths are warm.
            await a[0].send('{"action":"sendmessage","data":"warm"}')
            for ws in a + b:
                self.assertEqual(await recv_text(ws), "warm")

            st.edges[1].signal(signal.SIGSTOP)
            sent = [f"e{i}" for i in range(5)]
            for text in sent:
                await a[0].send(json.dumps({"action": "sendmessage", "data": text}))
            for ws in a:
                self.assertEqual(await drain_texts(ws, 5), sent)

            entries = await asyncio.to_thread(
                wait_until, lambda: (lambda e: e if len(e) >= 5 else None)(dlq_entries(st)), 30,
                "5 dead letters")
            self.assertEqual(len(entries), 5)
            for e in entries:
                self.assertEqual(e["reason"], f"edge_timeout:{stopped_edge}")
                self.assertEqual(e["failedEdges"], [stopped_edge])
                self.assertEqual(e["attempts"], 6)
            # Retries went only to the stopped edge: the other one never saw
            # a repeat, and its clients got each message once.
            for ws in a:
                self.assertIsNone(await no_message(ws, 0.2), "delivered twice")
            m = metrics(st.edges[0].port)
            self.assertEqual(m.get("dw_edge_duplicates_dropped_total", 0), 0)
            self.assertNotEqual(other_edge, stopped_edge)
            st.edges[1].signal(signal.SIGCONT)
            await close_all(*a, *b)

        self.run_async(scenario(), timeout=90)


def stream_msgs(st, stream):
    raw = RawNats(st.nats_port)
    try:
        return json.loads(raw.request(f"$JS.API.STREAM.INFO.{stream}", b""))["state"]["messages"]
    finally:
        raw.close()


class PoisonMessage(StackTest):
    """Test 4: a payload no dispatcher can ever deliver is dead-lettered once,
    by the dispatcher itself (reason "poison"), and does not hold up the
    rest. The deadletter service is down meanwhile: the entry waits in DW_DLQ
    and is listed once the service is back."""
    ENV = dict(BASE_ENV, DW_RETRY_BASE_MS="50")

    def test_poison_goes_to_dlq_once(self):
        st = self.stack

        async def scenario():
            ws = [await connect(st.edges[0].url) for _ in range(2)]
            await asyncio.to_thread(st.wait_conn_count, 2)
            await ws[0].send('{"action":"sendmessage","data":"before"}')
            for w in ws:
                self.assertEqual(await recv_text(w), "before")

            st.deadletter.kill9()
            raw = RawNats(st.nats_port)
            poison = b"\xff\xff\xff\xff\x0f\x01 not protobuf"
            ack = json.loads(raw.request(msg_subject("lobby"), poison))
            raw.close()
            self.assertEqual(ack["stream"], "DW_MSG")
            poison_seq = ack["seq"]

            # Everything after it keeps flowing.
            after = [f"after{i}" for i in range(20)]
            for text in after:
                await ws[1].send(json.dumps({"action": "sendmessage", "data": text}))
            for w in ws:
                self.assertEqual(await drain_texts(w, 20), after)

            await asyncio.to_thread(wait_until, lambda: dlq_depth(st) == 1, 30,
                                    "the poison message in DW_DLQ")
            st.start_deadletter()
            entries = await asyncio.to_thread(
                wait_until, lambda: dlq_entries(st), 30, "the poison message listed")
            self.assertEqual(len(entries), 1, entries)
            e = entries[0]
            self.assertEqual(e["streamSeq"], poison_seq)
            self.assertEqual(e["reason"], "poison")
            self.assertEqual(e["source"], "dispatcher")
            self.assertEqual(e["subject"], msg_subject("lobby"))
            self.assertEqual(e["payloadBytes"], len(poison))
            shown = json.loads(st.dwctl("dlq", "show", str(e["id"]), "--json").stdout)
            self.assertIsNone(shown["message"])
            self.assertTrue(shown["payloadBase64"])
            self.assertEqual(dlq_depth(st), 1)  # once
            self.assertEqual(stream_msgs(st, "DW_DLQ_ADVISORIES"), 0)
            for w in ws:
                self.assertIsNone(await no_message(w, 0.1))
            await close_all(*ws)

        self.run_async(scenario(), timeout=90)


class InterruptedReplay(StackTest):
    """Test 5: a replay interrupted by kill -9 (of dwctl, or of the deadletter
    service right after a republish was acked and before its entry was
    removed), then run again: nothing lost, nothing delivered twice."""
    ENV = dict(BASE_ENV, DW_RETRY_BASE_MS="20", DW_MAX_DELIVER="4")

    async def fill_dlq(self, clients, n, prefix):
        st = self.stack
        before = len(dlq_entries(st))
        st.registry.kill9()
        texts = [f"{prefix}{i:03d}" for i in range(n)]
        for i, text in enumerate(texts):
            await clients[i % len(clients)].send(json.dumps({"action": "sendmessage", "data": text}))
        await asyncio.to_thread(
            wait_until, lambda: len(dlq_entries(st)) >= before + n, 30, f"{n} dead letters")
        st.start_registry()
        await asyncio.to_thread(wait_until, lambda: st.dwctl_ok("conn", "list"), 20,
                                "registry back")
        return texts

    def test_replay_killed_then_rerun(self):
        st = self.stack

        async def scenario():
            clients = [await connect(st.edges[0].url) for _ in range(3)]
            await asyncio.to_thread(st.wait_conn_count, 3)
            counts = [collections.Counter() for _ in clients]

            async def collect(i, ws, stop):
                while not stop.is_set():
                    try:
                        counts[i][await asyncio.wait_for(ws.recv(), 0.1)] += 1
                    except asyncio.TimeoutError:
                        pass
            stop = asyncio.Event()
            readers = [asyncio.create_task(collect(i, ws, stop)) for i, ws in enumerate(clients)]

            # 1) kill -9 of dwctl in the middle of a paced replay.
            first = await self.fill_dlq(clients, 60, "a")
            replay = subprocess.Popen([os.path.join(BIN, "dwctl"), "dlq", "replay", "--all",
                                       "--rate", "25"], env=st.env(), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            await asyncio.to_thread(wait_until, lambda: dlq_depth(st) <= 45, 20,
                                    "the replay to be under way")
            replay.kill()
            replay.wait()
            left = dlq_depth(st)
            self.assertGreater(left, 0, "the replay finished before it was killed")
            r = await asyncio.to_thread(st.dwctl, "dlq", "replay", "--all")
            self.assertRegex(r.stdout, r"replayed \d+, skipped [01], failed 0")

            # 2) the deadletter service dies (SIGKILL) right after JetStream
            # acked a republish, before the entry is removed.
            second = await self.fill_dlq(clients, 30, "b")
            st.deadletter.kill9()
            st.start_deadletter(TEST_CRASH_AFTER_REPLAYS=7)
            r = await asyncio.to_thread(st.dwctl, "dlq", "replay", "--all", check=False)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            await asyncio.to_thread(wait_until, lambda: not st.deadletter.alive(), 10,
                                    "the deadletter service to be gone")
            self.assertEqual(dlq_depth(st), 30 - 6)  # 7th republished, not removed
            st.start_deadletter()
            r = await asyncio.to_thread(st.dwctl, "dlq", "replay", "--all")
            self.assertIn("replayed 23, skipped 1, failed 0", r.stdout)
            self.assertIn("already republished", r.stdout)
            self.assertEqual(dlq_depth(st), 0)

            want = collections.Counter({t: 1 for t in first + second})
            for i in range(len(clients)):
                await asyncio.to_thread(wait_until, lambda i=i: sum(counts[i].values()) >= 90, 20,
                                        f"client {i} to have all 90")
            await asyncio.sleep(0.3)  # not synchronisation: room for a repeat to show up
            stop.set()
            await asyncio.gather(*readers)
            for c in counts:
                self.assertEqual(c, want)
            await close_all(*clients)

        self.run_async(scenario(), timeout=150)


# 256 held at most: a cap of 16 per partition (services/dispatcher: max
# held / 16 partitions), pulled 4 at a time.
SILENT_CAP = 16


class ConsumerDeletedWithNoPullWaiting(StackTest):
    """Test 6: a partition consumer deleted while no pull request of its
    dispatcher waits there, so that nats-server has nobody to send its
    "409 Consumer Deleted" to (2.9 sends it only to the requests waiting at
    that moment), and the pulls after it go to a subject nobody answers
    (the $JS.API.> import takes them and drops them: no 503 either). Only
    the silence check can find it: pulls that hear nothing for 3 s ask
    CONSUMER.INFO, get 10014 and read the partition again.

    How no pull waits, with real parts only: the registry is stopped
    (SIGSTOP), so the dispatcher cannot resolve the room and holds what it
    fetched; at its partition cap it sends no more pulls, and the ones out
    expire (CONSUMER.INFO expires them and shows num_waiting 0). The
    consumer is deleted then, one more message is stored, the registry
    resumes: everything reaches both clients once and in order."""
    ENV = {"DW_MSG_RATE": "0", "DW_EDGE_MSG_RATE": "0", "DW_STATUS_PORT": "0",
           "DW_MAX_HELD": str(SILENT_CAP * 16), "DW_FETCH_BATCH": "4"}

    def test_deleted_consumer_found_by_the_silence_check(self):
        st = self.stack
        part = int(msg_subject("lobby").split(".")[2])
        n = SILENT_CAP + 8  # more than the cap: some wait in the stream meanwhile
        texts = [f"s{i:02d}" for i in range(n)] + ["after"]

        def js(raw, api):
            return json.loads(raw.request("$JS.API." + api, b""))

        def consumer(raw):
            names = js(raw, "CONSUMER.NAMES.DW_MSG").get("consumers") or []
            mine = [c for c in names if c.startswith(f"dwp-{part}-")]
            return mine[0] if len(mine) == 1 else None

        async def scenario():
            a, b = await connect(st.edges[0].url), await connect(st.edges[0].url)
            await asyncio.to_thread(st.wait_conn_count, 2)
            raw = RawNats(st.nats_port)
            st.registry.signal(signal.SIGSTOP)
            try:
                for t in texts[:-1]:
                    await a.send(json.dumps({"action": "sendmessage", "data": t}))
                await asyncio.to_thread(wait_until, lambda: stream_msgs(st, "DW_MSG") >= n, 10,
                                        f"{n} messages stored")
                name = await asyncio.to_thread(wait_until, lambda: consumer(raw), 10,
                                               f"partition {part}'s consumer")
                # The partition holds its cap and no pull waits: seen on two
                # looks in a row (each look expires what is overdue).
                looks = []

                def idle():
                    i = js(raw, f"CONSUMER.INFO.DW_MSG.{name}")
                    looks.append((i["num_ack_pending"], i["num_waiting"]))
                    return len(looks) > 1 and all(
                        held >= SILENT_CAP and waiting == 0 for held, waiting in looks[-2:])
                await asyncio.to_thread(wait_until, idle, 15,
                                        "the partition at its cap with no pull waiting", 0.1)
                self.assertTrue(js(raw, f"CONSUMER.DELETE.DW_MSG.{name}").get("success"))
                await a.send(json.dumps({"action": "sendmessage", "data": "after"}))
                await asyncio.to_thread(wait_until, lambda: stream_msgs(st, "DW_MSG") > n, 10,
                                        "the last message stored")
            finally:
                st.registry.signal(signal.SIGCONT)
                raw.close()
            for ws in (a, b):
                self.assertEqual(await drain_texts(ws, len(texts)), texts)
            for ws in (a, b):
                self.assertIsNone(await no_message(ws, 0.3), "delivered twice")
            await close_all(a, b)

        self.run_async(scenario(), timeout=90)
        with open(st.dispatcher.log_path, errors="replace") as f:
            log = f.read()
        mark = f'read again from its floor" partition={part} why='
        whys = [line.split(mark, 1)[1].split()[0] for line in log.splitlines() if mark in line]
        print(f"partition {part} read again: {whys}")
        self.assertIn("silent:consumer_not_found", whys)
        self.assertNotIn("consumer_deleted", whys)


if __name__ == "__main__":
    unittest.main()
