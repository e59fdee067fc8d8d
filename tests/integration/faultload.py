#!/usr/bin/python3
"""A dynamowave.v1 chat load with an exactness checker, for fault tests
(tests/integration/test_faults.py) and for measuring by hand against a
running stack (docs/benchmarks.md quotes the command behind each number).

The load (issue 13): N connections in rooms of N/R, every room with members
on each edge (member j of a room connects to edge j mod E), one sender per
room, a total send rate. Every client has a stable identity (?name=) so its
sends can be retried:

- a client whose socket drops reconnects to the other edge (then alternates,
  with backoff, until a deadline) and joins its room again with `since` = the
  last seq it saw there (or the room's seq when it first joined);
- every sendmessage carries a client `id` and a fresh `ref`; an `error`
  answer (`unavailable`, `rate_limited`, ...), a socket that drops before the
  answer, or no answer within --answer-timeout makes the client send it again
  later with the SAME id. The checker then expects the message exactly once.

The checker, once the load stopped and nothing more is owed (or a deadline
passed), counts per acked message and per member of its room (everyone
joined before the load and never leaves): lost (never received, and not in
DW_DLQ), dead-lettered (in DW_DLQ, by stream seq, with its reason),
duplicated (a member got the same id or the same seq twice), out of order (a
member got a seq lower than one it had seen), sends never answered on an
open socket, attempts answered twice, error answers by code, the longest wait
for an ack, and recovery times around the fault marks.

Standalone (with /usr/bin/python3, which has Debian's python3-websockets),
on a fresh two-edge stack it starts itself (harness.py, build/bin), with the
fault injected at 12 s (kill -9 nats-server, restarted after 3 s):

  /usr/bin/python3 tests/integration/faultload.py --stack 2 --connections 200 \\
      --rooms 20 --rate 300 --duration 45 --fault-at 12 --fault kill:nats:3 --header

or against a stack that is already running, the fault being a command:

  /usr/bin/python3 tests/integration/faultload.py --edges ws://127.0.0.1:8080/ \\
      --fault-at 12 --fault-cmd 'kill -STOP 1234' --heal-after 5 --heal-cmd 'kill -CONT 1234'

It prints one markdown table row (--header: the header too; --json: the whole
report). A running stack must let one address open many connections and send
fast: start it with DW_MSG_RATE=0 DW_IP_MAX_CONNS=0 DW_IP_CONN_RATE=0 (the
defaults allow 10 messages/s per connection and 100 connections per address).
Exit status: 0 when nothing was lost, duplicated, reordered or left
unanswered, 1 otherwise.
"""
import argparse
import asyncio
import collections
import heapq
import json
import os
import shutil
import subprocess
import sys
import time

import websockets

PROTOCOL = "dynamowave.v1"


class Attempt:
    """One sendmessage frame: a send's id with a fresh ref."""
    __slots__ = ("send", "ref", "t", "gen", "answers", "cut", "timed_out")

    def __init__(self, send, ref, t, gen):
        self.send = send
        self.ref = ref
        self.t = t
        self.gen = gen
        self.answers = []  # (time, "ack"|"error", seq or code)
        self.cut = False  # the socket dropped before an answer came
        self.timed_out = False  # no answer within answer_timeout on an open socket


class Send:
    """One chat message the load wants stored exactly once (one client id)."""
    __slots__ = ("id", "room", "k", "sender", "t_sched", "t_first", "attempts", "current", "seq",
                 "t_ack", "queued")

    def __init__(self, mid, room, k, sender, t_sched):
        self.id = mid
        self.room = room
        self.k = k
        self.sender = sender
        self.t_sched = t_sched
        self.t_first = None
        self.attempts = []
        self.current = None
        self.seq = None
        self.t_ack = None
        self.queued = False

    def __lt__(self, other):
        return self.k < other.k


class Client:
    """One v1 connection (and its reconnects) that is a member of one room."""

    def __init__(self, load, idx, name, room, edge):
        self.load = load
        self.idx = idx
        self.name = name
        self.room = room
        self.edge = edge
        self.ws = None
        self.gen = 0
        self.ready = False
        self.down = False  # gave up reconnecting
        self.seq0 = 0  # the room's seq when the first join took effect
        self.max_seq = 0
        self.seen_seqs = set()
        self.recv_ids = {}  # client id -> times received
        self.n_recv = 0
        self.dups = 0
        self.ooo = 0
        self.drops = 0
        self.reconnects = 0
        self.not_recovered = 0
        self.join_errors = 0
        self.join_waiters = {}
        # sender side (only the room's sender uses these)
        self.queue = []  # heap of Send
        self.inflight = {}  # ref -> Attempt
        self.wake = asyncio.Event()

    def url(self, edge):
        base = self.load.edges[edge]
        return f"{base}{'&' if '?' in base else '?'}name={self.name}"

    def since(self):
        return max(self.seq0, self.max_seq)

    async def connect_once(self, edge, resume):
        """Open a socket to edge, read hello, join the room (again), return
        the reader task. Raises on any failure (the caller retries)."""
        load = self.load
        ws = await asyncio.wait_for(
            websockets.connect(self.url(edge), subprotocols=[PROTOCOL], max_size=None,
                               ping_interval=None, close_timeout=1, open_timeout=load.open_timeout),
            load.open_timeout + 1)
        reader = None
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), load.open_timeout))
            if hello.get("type") != "hello":
                raise ConnectionError(f"first frame is not hello: {hello}")
            self.gen += 1
            self.ws = ws
            reader = asyncio.create_task(self.read(ws, self.gen))
            backoff = 0.1
            while True:
                ref = load.next_ref()
                fut = asyncio.get_running_loop().create_future()
                self.join_waiters[ref] = fut
                req = {"action": "join", "room": self.room, "ref": ref}
                if resume:
                    req["since"] = self.since()
                await ws.send(json.dumps(req))
                ans = await asyncio.wait_for(fut, load.answer_timeout)
                if ans.get("type") == "joined":
                    break
                self.join_errors += 1
                load.join_errors[ans.get("code")] += 1
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
            if resume and ans.get("recovered") is False:
                self.not_recovered += 1
            if not resume:
                self.seq0 = int(ans.get("seq", 0))
            self.edge = edge
            self.ready = True
            self.wake.set()
            return reader
        except BaseException:
            if reader:
                reader.cancel()
            await ws.close()
            raise

    async def read(self, ws, gen):
        load = self.load
        try:
            async for raw in ws:
                now = time.monotonic()
                load.last_frame_t = now
                o = json.loads(raw)
                t = o.get("type")
                if t == "message":
                    self.on_message(o, now)
                elif t == "ack":
                    load.on_answer(self, o, now, "ack")
                elif t in ("joined", "error") and o.get("ref") in self.join_waiters:
                    fut = self.join_waiters.pop(o["ref"])
                    if not fut.done():
                        fut.set_result(o)
                elif t == "error":
                    load.on_answer(self, o, now, "error")
                elif t in ("join", "leave"):
                    pass  # presence events: best effort, not checked here
                else:
                    load.other_frames[t] += 1
        except websockets.ConnectionClosed:
            pass
        finally:
            if not load.closing:
                # 1006 when no close frame came (a killed edge)
                load.close_codes[ws.close_code] += 1
            if self.gen == gen:
                self.ready = False
            for fut in self.join_waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("socket closed during join"))
            self.join_waiters.clear()
            self.cut_inflight(gen)

    def on_message(self, o, now):
        load = self.load
        seq = o.get("seq")
        mid = o.get("id")
        self.n_recv += 1
        load.recv_times.append(now)
        if o.get("room") != self.room or not isinstance(seq, int):
            load.foreign += 1
            return
        if mid in self.recv_ids or seq in self.seen_seqs:
            self.dups += 1
            if len(load.dup_examples) < 10:
                load.dup_examples.append(
                    {"member": self.name, "room": self.room, "seq": seq, "id": mid})
        elif seq < self.max_seq:
            self.ooo += 1
            if len(load.ooo_examples) < 10:
                load.ooo_examples.append({"member": self.name, "room": self.room,
                                          "after": self.max_seq, "seq": seq})
        if mid not in self.recv_ids:
            load.on_first_receipt(self, mid, now)
        self.recv_ids[mid] = self.recv_ids.get(mid, 0) + 1
        self.seen_seqs.add(seq)
        if seq > self.max_seq:
            self.max_seq = seq

    def cut_inflight(self, gen):
        """The socket of generation gen is gone: what it had not answered is
        sent again (same id) once the client is back."""
        for ref, a in list(self.inflight.items()):
            if a.gen == gen:
                del self.inflight[ref]
                if not a.answers:
                    a.cut = True
                    self.load.cut += 1
                    self.retry(a, 0)

    def retry(self, a, delay):
        """Send a.send again after delay, unless it was acked meanwhile or a
        newer attempt of it is already on its way."""
        s = a.send
        if s.seq is not None or s.current is not a:
            return
        if delay <= 0:
            self.requeue(s)
        else:
            asyncio.get_running_loop().call_later(delay, self.requeue, s)

    def requeue(self, s):
        if s.seq is not None or s.queued:
            return
        s.queued = True
        heapq.heappush(self.queue, s)
        self.wake.set()

    async def pump(self):
        """Write queued sends while the socket is up, at most load.window
        unanswered at a time."""
        load = self.load
        while not load.closing:
            await self.wake.wait()
            self.wake.clear()
            while (self.ready and self.queue and len(self.inflight) < load.window
                   and not load.closing):
                s = heapq.heappop(self.queue)
                s.queued = False
                if s.seq is not None:
                    continue
                now = time.monotonic()
                a = Attempt(s, load.next_ref(), now, self.gen)
                s.attempts.append(a)
                s.current = a
                if s.t_first is None:
                    s.t_first = now
                load.attempts[a.ref] = a
                self.inflight[a.ref] = a
                frame = json.dumps({"action": "sendmessage", "room": s.room, "id": s.id,
                                    "data": {"k": s.k}, "ref": a.ref})
                try:
                    await self.ws.send(frame)
                except websockets.ConnectionClosed:
                    pass  # read() sees the close and cuts what is in flight

    async def life(self, reader):
        """Follow the connection: when it drops, reconnect (the other edge
        first) and resume, until the load closes or the deadline passes."""
        load = self.load
        while True:
            try:
                await reader
            except Exception as e:  # a bug in this client: counted, never hidden
                load.client_errors.append(f"{self.name}: {e!r}")
            if load.closing:
                return
            self.drops += 1
            deadline = time.monotonic() + load.reconnect_deadline
            n = 0
            while True:
                if load.closing:
                    return
                edge = (self.edge + 1 + n) % len(load.edges)
                try:
                    reader = await self.connect_once(edge, resume=True)
                    self.reconnects += 1
                    break
                except (OSError, asyncio.TimeoutError, websockets.WebSocketException,
                        ConnectionError, json.JSONDecodeError):
                    n += 1
                    if time.monotonic() > deadline:
                        self.down = True
                        return
                    await asyncio.sleep(min(2.0, 0.05 * 2 ** n))


class Load:
    def __init__(self, edges, connections=200, rooms=20, rate=300.0, duration=45.0, drain=40.0,
                 quiet=1.0, answer_timeout=10.0, reconnect_deadline=30.0, window=100,
                 open_timeout=5.0, dlq=None, token=None, log=None):
        """edges: ws:// URLs; dlq: a callable returning DW_DLQ's entries as
        dicts (dwctl dlq list --json), or None when it cannot be read."""
        if connections % rooms:
            raise ValueError("connections must be a multiple of rooms")
        self.edges = list(edges)
        self.connections = connections
        self.rooms = rooms
        self.room_size = connections // rooms
        self.rate = rate
        self.duration = duration
        self.drain = drain
        self.quiet = quiet
        self.answer_timeout = answer_timeout
        self.reconnect_deadline = reconnect_deadline
        self.window = window
        self.open_timeout = open_timeout
        self.dlq_reader = dlq
        self.log = log or (lambda *a: None)
        self.token = token or os.urandom(3).hex()
        self.marks = []  # (what, monotonic time)
        self.closing = False
        self._ref = 0
        self.attempts = {}  # ref -> Attempt
        self.sends = {}  # client id -> Send
        self.clients = []
        self.members = collections.defaultdict(list)  # room -> [Client]
        self.recv_times = []
        self.msg_members = collections.Counter()  # id -> members that got it
        self.msg_done_t = {}  # id -> time its last member got it
        self.first_recv_t = {}  # id -> first receipt anywhere
        self.cut = 0
        self.stray_answers = 0
        self.wrong_answers = 0
        self.ack_conflicts = 0
        self.errors = collections.Counter()
        self.join_errors = collections.Counter()
        self.other_frames = collections.Counter()
        self.close_codes = collections.Counter()  # how sockets ended while the load ran
        self.foreign = 0
        self.client_errors = []
        self.loop_lag = 0.0
        self.loop_lag_at = None
        self.dup_examples = []
        self.ooo_examples = []
        self.dlq = {}  # stream seq -> reason (of our rooms)
        self.dlq_ok = None
        self.last_frame_t = 0.0
        self.t0 = self.t_stop = self.t_end = None

    def next_ref(self):
        self._ref += 1
        return self._ref

    def mark(self, what):
        """Record a moment ("fault", "heal"); callable from another thread."""
        self.marks.append((what, time.monotonic()))

    # --- answers and receipts -------------------------------------------

    def on_answer(self, client, o, now, kind):
        a = self.attempts.get(o.get("ref"))
        if a is None:
            self.stray_answers += 1
            return
        s = a.send
        a.answers.append((now, kind, o.get("seq") if kind == "ack" else o.get("code")))
        if client.inflight.pop(a.ref, None) is not None:
            client.wake.set()  # room in the window again
        if len(a.answers) > 1:
            return  # counted at the end; the first answer decided
        if kind == "ack":
            if o.get("id") != s.id or o.get("room") != s.room:
                self.wrong_answers += 1
            seq = o.get("seq")
            if s.seq is None:
                s.seq = seq
                s.t_ack = now
            elif s.seq != seq:
                self.ack_conflicts += 1
            return
        code = o.get("code")
        self.errors[code] += 1
        if code == "rate_limited":
            delay = (o.get("retry_after_ms") or 100) / 1000
        else:
            delay = min(1.0, 0.1 * 2 ** (len(s.attempts) - 1))
        client.retry(a, delay)

    def on_first_receipt(self, client, mid, now):
        self.msg_members[mid] += 1
        self.msg_done_t[mid] = now
        self.first_recv_t.setdefault(mid, now)

    # --- the run --------------------------------------------------------

    async def _connect_all(self):
        sem = asyncio.Semaphore(20)

        async def one(c):
            async with sem:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        return await c.connect_once(c.edge, resume=False)
                    except (OSError, asyncio.TimeoutError, websockets.WebSocketException,
                            ConnectionError) as e:
                        if time.monotonic() > deadline:
                            raise AssertionError(f"client {c.name} could not connect: {e!r}")
                        await asyncio.sleep(0.2)
        return await asyncio.gather(*(one(c) for c in self.clients))

    async def _schedule(self, sender, r, t_end):
        per = self.rate / self.rooms
        phase = r / self.rooms
        k = 0
        while not self.closing:
            t = self.t0 + (k + phase) / per
            if t >= t_end:
                return
            delay = t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing of the load, not synchronisation
            s = Send(f"{self.token}-{r}-{k}", sender.room, k, sender, t)
            self.sends[s.id] = s
            sender.requeue(s)
            k += 1

    async def _watch_loop(self):
        """How late this event loop runs (a stalled checker would show up as
        a gap in deliveries that the system did not cause)."""
        while not self.closing:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            lag = time.monotonic() - t - 0.05
            if lag > self.loop_lag:
                self.loop_lag, self.loop_lag_at = lag, t

    async def _watch_answers(self):
        """An attempt with no answer within answer_timeout on a socket that is
        still open is counted unanswered and sent again with the same id."""
        while not self.closing:
            now = time.monotonic()
            for c in self.clients:
                for ref, a in list(c.inflight.items()):
                    if now - a.t > self.answer_timeout:
                        del c.inflight[ref]
                        a.timed_out = True
                        c.retry(a, 0)
                        c.wake.set()
            await asyncio.sleep(0.2)

    def owed(self):
        """What the system still owes the load: unacked sends, members not
        connected, deliveries of acked messages that are not in the DLQ."""
        unacked = sum(1 for s in self.sends.values() if s.seq is None)
        # an answer still to come counts as owed too (not yet unanswered)
        unacked += sum(len(c.inflight) for c in self.clients)
        away = sum(1 for c in self.clients if not c.ready and not c.down)
        missing = 0
        for s in self.sends.values():
            if s.seq is not None and s.seq not in self.dlq:
                missing += self.room_size - self.msg_members[s.id]
        return unacked, away, missing

    async def _read_dlq(self):
        if not self.dlq_reader:
            return
        try:
            entries = await asyncio.to_thread(self.dlq_reader)
        except Exception as e:  # the deadletter service may be down: not known
            self.log(f"faultload: DLQ not readable: {e!r}")
            entries = None
        if entries is None:
            self.dlq_ok = False
            return
        rooms = {c.room for c in self.clients}
        self.dlq = {int(e["streamSeq"]): e.get("reason", "")
                    for e in entries if e.get("room") in rooms}
        self.dlq_ok = True

    async def _drain(self):
        deadline = time.monotonic() + self.drain
        last_dlq = 0.0
        while time.monotonic() < deadline:
            unacked, away, missing = self.owed()
            now = time.monotonic()
            if not unacked and not away and not missing and now - self.last_frame_t >= self.quiet:
                break
            # Deliveries still missing while nothing arrives: they may be in
            # the DLQ (each look is one dwctl call, so at most every 2 s).
            if (missing and not unacked and now - self.last_frame_t >= 1.0
                    and now - last_dlq >= 2.0):
                last_dlq = now
                await self._read_dlq()
            await asyncio.sleep(0.05)

    def setup_clients(self):
        """Client i is member i mod size of room i div size and connects to
        edge (i mod size) mod E: every room has members on every edge."""
        for i in range(self.connections):
            r, j = divmod(i, self.room_size)
            c = Client(self, i, f"fl{self.token}-{i}", f"fl{self.token}-r{r}", j % len(self.edges))
            self.clients.append(c)
            self.members[c.room].append(c)

    def room(self, r):
        return f"fl{self.token}-r{r}"

    async def run(self, fault=None, fault_at=None):
        """Connect, join, send for `duration` seconds, then drain and check.
        fault: a blocking callable run in a thread `fault_at` seconds after
        the first send; it calls mark("fault") / mark("heal"). Returns the
        report (a dict)."""
        self.setup_clients()
        tasks = []
        fault_task = None
        try:
            readers = await self._connect_all()
            tasks += [asyncio.create_task(c.life(rd)) for c, rd in zip(self.clients, readers)]
            senders = []
            for r in range(self.rooms):
                # member r mod size: the senders are spread over the edges
                c = self.members[self.room(r)][r % self.room_size]
                senders.append(c)
                tasks.append(asyncio.create_task(c.pump()))
            tasks.append(asyncio.create_task(self._watch_answers()))
            tasks.append(asyncio.create_task(self._watch_loop()))
            self.t0 = time.monotonic()
            t_end = self.t0 + self.duration
            scheds = [asyncio.create_task(self._schedule(c, r, t_end)) for r, c in enumerate(senders)]
            if fault:
                async def run_fault():
                    await asyncio.sleep(max(0.0, self.t0 + fault_at - time.monotonic()))
                    await asyncio.to_thread(fault)
                fault_task = asyncio.create_task(run_fault())
            await asyncio.gather(*scheds)
            self.t_stop = time.monotonic()
            if fault_task:
                await fault_task  # a fault still healing is part of the run
            await self._drain()
            self.t_end = time.monotonic()
            if self.dlq_reader and any(v for v in self.owed()[2:]):
                await self._read_dlq()
            elif self.dlq_reader and self.dlq_ok is None:
                await self._read_dlq()
            return self.report()
        finally:
            self.closing = True
            if fault_task and not fault_task.done():
                fault_task.cancel()
            for c in self.clients:
                c.wake.set()
            await asyncio.gather(*(c.ws.close() for c in self.clients if c.ws),
                                 return_exceptions=True)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- the checker ----------------------------------------------------

    def report(self):
        rel = (lambda t: None if t is None else round(t - self.t0, 3))
        sends = list(self.sends.values())
        acked = [s for s in sends if s.seq is not None]
        lost_msgs = lost_deliveries = dlq_msgs = dlq_deliveries = 0
        dlq_reasons = collections.Counter()
        lost_examples = []
        for s in acked:
            missing = [c for c in self.members[s.room] if s.id not in c.recv_ids]
            if not missing:
                continue
            if s.seq in self.dlq:
                dlq_msgs += 1
                dlq_deliveries += len(missing)
                dlq_reasons[self.dlq[s.seq]] += 1
            else:
                lost_msgs += 1
                lost_deliveries += len(missing)
                if len(lost_examples) < 10:
                    lost_examples.append({"seq": s.seq, "id": s.id, "room": s.room,
                                          "missing": [c.name for c in missing][:5],
                                          "acked_at": rel(s.t_ack)})
        attempts = list(self.attempts.values())
        unanswered = [a for a in attempts if not a.answers and not a.cut]
        double = [a for a in attempts if len(a.answers) > 1]
        ack_waits = [s.t_ack - s.t_first for s in acked]
        latencies = [self.msg_done_t[s.id] - s.t_ack for s in acked if s.id in self.msg_done_t
                     and self.msg_members[s.id] == self.room_size]

        faults = [t for w, t in self.marks if w == "fault"]
        heals = [t for w, t in self.marks if w == "heal"]
        t_fault = faults[0] if faults else None
        t_heal = heals[-1] if heals else (faults[-1] if faults else None)
        first_s = backlog_s = send_ok_s = None
        if t_fault is not None:
            after = [self.first_recv_t[s.id] for s in sends
                     if s.t_first is not None and s.t_first >= t_fault and s.id in self.first_recv_t]
            first_s = min(after) - t_fault if after else None
        if t_heal is not None:
            # acked before the heal, not at every member by then: when did
            # the last of them get it? (None: some never did)
            pending = [s for s in acked if s.t_ack < t_heal and s.seq not in self.dlq
                       and not (self.msg_members[s.id] == self.room_size
                                and self.msg_done_t[s.id] <= t_heal)]
            if all(self.msg_members[s.id] == self.room_size for s in pending):
                backlog_s = max([self.msg_done_t[s.id] - t_heal for s in pending], default=0.0)
            oks = [a.answers[0][0] for a in attempts
                   if a.t >= t_heal and a.answers and a.answers[0][1] == "ack"]
            send_ok_s = min(oks) - t_heal if oks else None
        # the longest stretch without any delivery while the load ran
        ts = sorted(t for t in self.recv_times if self.t0 <= t <= self.t_stop)
        points = [self.t0] + ts + [self.t_stop]
        gap_s = gap_at = None
        if self.t_stop:
            gap_s, gap_at = max((b - a, a) for a, b in zip(points, points[1:]))

        r3 = (lambda x: None if x is None else round(x, 3))
        rep = {
            "token": self.token,
            "connections": self.connections, "rooms": self.rooms, "edges": len(self.edges),
            "rate": self.rate, "duration": self.duration,
            "sends": len(sends), "acked": len(acked), "unacked": len(sends) - len(acked),
            "attempts": len(attempts), "retried_sends": sum(1 for s in sends if len(s.attempts) > 1),
            "expected_deliveries": len(acked) * self.room_size,
            "lost_msgs": lost_msgs, "lost_deliveries": lost_deliveries,
            "dlq_msgs": dlq_msgs, "dlq_deliveries": dlq_deliveries,
            "dlq_reasons": dict(dlq_reasons), "dlq_read": self.dlq_ok,
            "duplicated": sum(c.dups for c in self.clients),
            "out_of_order": sum(c.ooo for c in self.clients),
            "unanswered": len(unanswered),
            "unanswered_timed_out": sum(1 for a in unanswered if a.timed_out),
            "late_answers": sum(1 for a in attempts if a.timed_out and a.answers),
            "double_answered": len(double),
            "stray_answers": self.stray_answers, "wrong_answers": self.wrong_answers,
            "ack_conflicts": self.ack_conflicts,
            "errors": dict(self.errors), "unavailable": self.errors.get("unavailable", 0),
            "cut_by_drop": self.cut,
            "join_errors": dict(self.join_errors),
            "drops": sum(c.drops for c in self.clients),
            "close_codes": {str(k): v for k, v in sorted(self.close_codes.items(),
                                                         key=lambda kv: str(kv[0]))},
            "reconnects": sum(c.reconnects for c in self.clients),
            "not_recovered": sum(c.not_recovered for c in self.clients),
            "clients_down": sum(1 for c in self.clients if c.down),
            "clients_not_ready": sum(1 for c in self.clients if not c.ready),
            "members_without_messages": sum(1 for c in self.clients if not c.recv_ids),
            "received": sum(c.n_recv for c in self.clients),
            "foreign": self.foreign, "other_frames": dict(self.other_frames),
            "unknown_ids": sum(1 for c in self.clients for mid in c.recv_ids
                               if mid not in self.sends),
            "client_errors": self.client_errors[:10],
            "clients_per_edge": dict(collections.Counter(c.edge for c in self.clients)),
            "max_ack_s": r3(max(ack_waits, default=None)),
            "max_latency_s": r3(max(latencies, default=None)),
            "fault_at_s": rel(t_fault), "heal_at_s": rel(t_heal),
            "marks": [(w, rel(t)) for w, t in self.marks],
            "first_delivery_after_fault_s": r3(first_s),
            "max_gap_s": r3(gap_s), "max_gap_from_s": rel(gap_at),
            "loop_lag_max_s": r3(self.loop_lag), "loop_lag_at_s": rel(self.loop_lag_at),
            "backlog_after_heal_s": r3(backlog_s),
            "send_ok_after_heal_s": r3(send_ok_s),
            "drained_s": r3(self.t_end - self.t_stop) if self.t_end else None,
            "lost_examples": lost_examples,
            "dup_examples": self.dup_examples, "ooo_examples": self.ooo_examples,
            "unanswered_examples": [
                {"id": a.send.id, "ref": a.ref, "sent_at": rel(a.t), "timed_out": a.timed_out}
                for a in unanswered[:10]],
        }
        return rep


def problems(rep):
    """What makes a report not exact: the list of failed checks (empty: clean)."""
    out = []
    for key in ("lost_msgs", "duplicated", "out_of_order", "unanswered", "double_answered",
                "stray_answers", "wrong_answers", "ack_conflicts", "unacked", "clients_down",
                "not_recovered", "foreign", "unknown_ids", "client_errors"):
        if rep[key]:
            out.append(f"{key}={rep[key]}")
    return out


def run_problems(rep, min_acked, backlog_s=None):
    """problems(), and what a fault test's run must also show: enough acked
    to have checked something, every member received messages, every dead
    letter has its reason, every delivery arrived or is dead-lettered, the
    fault happened, and (backlog_s not None) what was acked before the
    recovery reached every member within backlog_s."""
    bad = problems(rep)
    if rep["acked"] < min_acked:
        bad.append(f"only {rep['acked']} acked (< {min_acked:.0f}): the load checked too little")
    if rep["members_without_messages"]:
        bad.append(f"{rep['members_without_messages']} members received nothing")
    for reason, n in rep["dlq_reasons"].items():
        if not reason:
            bad.append(f"{n} dead letters without a reason")
    if rep["received"] < rep["expected_deliveries"] - rep["dlq_deliveries"]:
        bad.append(f"received {rep['received']} < expected {rep['expected_deliveries']}")
    if not any(w == "fault" for w, _ in rep["marks"]):
        bad.append("the fault did not happen")
    if backlog_s is not None:
        b = rep["backlog_after_heal_s"]
        if b is None or b > backlog_s:
            bad.append(f"what was acked before the recovery reached every member after "
                       f"{'never' if b is None else f'{b:.2f} s'} (bound {backlog_s} s)")
    return bad


def print_report(label, rep):
    """A run's table row (HEADER first) and its report as JSON, as the fault
    tests print them."""
    print(HEADER)
    print(row(label, rep))
    print("report: " + json.dumps({k: v for k, v in rep.items() if not k.endswith("examples")}),
          flush=True)


HEADER = ("| fault | acked | lost msgs (deliveries) | DLQ | dup | out of order | unanswered "
          "| double | unavailable | max ack s | first delivery s | longest gap s | backlog s "
          "| sends ok s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def row(label, rep):
    """One markdown table row of a report."""
    def f(x):
        return "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else f"{x:,}")
    dlq = f(rep["dlq_msgs"]) if rep["dlq_read"] is not False else "?"
    return (f"| {label} | {f(rep['acked'])} | {f(rep['lost_msgs'])} ({f(rep['lost_deliveries'])}) "
            f"| {dlq} | {f(rep['duplicated'])} | {f(rep['out_of_order'])} | {f(rep['unanswered'])} "
            f"| {f(rep['double_answered'])} | {f(rep['unavailable'])} | {f(rep['max_ack_s'])} "
            f"| {f(rep['first_delivery_after_fault_s'])} | {f(rep['max_gap_s'])} "
            f"| {f(rep['backlog_after_heal_s'])} | {f(rep['send_ok_after_heal_s'])} |")


def dwctl_dlq(dwctl, env=None):
    """DW_DLQ's entries through `dwctl dlq list --json` (None when it fails)."""
    r = subprocess.run([dwctl, "dlq", "list", "--json"], capture_output=True, text=True, timeout=30,
                       env=env)
    if r.returncode != 0:
        return None
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


# What a stack started by --stack runs with: the load's clients come from
# one address and each sender sends more than the default 10 messages/s.
STACK_ENV = {"DW_MSG_RATE": "0", "DW_EDGE_MSG_RATE": "0", "DW_IP_MAX_CONNS": "0",
             "DW_IP_CONN_RATE": "0", "DW_EDGE_CONN_RATE": "0"}


def stack_fault(st, spec, load, repeat=1, between=2.0):
    """A fault() for Load.run on a harness stack, from a spec:
    kill:PROC (kill -9, no restart), kill:PROC:S (kill -9, restart after S
    seconds with the same arguments, ports and store), stop:PROC:S (SIGSTOP
    for S seconds). PROC: nats, registry, dispatcher, deadletter, api, or
    edgeN. repeat: that many times, `between` seconds apart."""
    parts = spec.split(":")
    if parts[0] not in ("kill", "stop") or len(parts) not in (2, 3) or (
            parts[0] == "stop" and len(parts) != 3):
        raise ValueError(f"fault spec {spec!r}: kill:PROC, kill:PROC:SECONDS or stop:PROC:SECONDS")
    kind, name = parts[0], parts[1]
    secs = float(parts[2]) if len(parts) == 3 else None
    if name.startswith("edge"):
        p = st.edges[int(name[4:] or 0)]
    else:
        p = getattr(st, name, None)
    if p is None:
        raise ValueError(f"fault spec {spec!r}: no process {name!r}")

    def fault():
        for i in range(repeat):
            if i:
                time.sleep(between)  # the faults' spacing, by definition
            load.mark("fault")
            if kind == "stop":
                p.pause()
                time.sleep(secs)  # the length of the stall, by definition
                p.resume()
                load.mark("heal")
            else:
                p.kill9()
                if secs is not None:
                    time.sleep(secs)  # how long it stays down, by definition
                    st.restart(p)
                    load.mark("heal")
    return fault


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="A dynamowave.v1 load with an exactness checker; prints one table row.",
        epilog="Against a running stack (--edges), the stack must allow the load: DW_MSG_RATE=0 "
               "DW_IP_MAX_CONNS=0 DW_IP_CONN_RATE=0; dwctl reads DW_NATS_URL, DW_NATS_USER, "
               "DW_NATS_PASSWORD_FILE from the environment. --stack starts its own stack "
               "(build/bin or DW_BIN_DIR) on free ports in a temp dir and removes it afterwards.")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--edges", help="comma-separated ws:// URLs of a running stack's edges")
    where.add_argument("--stack", type=int, metavar="EDGES",
                       help="start a fresh local stack with this many edges (harness.py)")
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--rooms", type=int, default=20)
    ap.add_argument("--rate", type=float, default=300.0, help="messages/s over all senders")
    ap.add_argument("--duration", type=float, default=45.0, help="seconds of sending")
    ap.add_argument("--drain", type=float, default=40.0,
                    help="seconds to wait after the load for what is still owed")
    ap.add_argument("--answer-timeout", type=float, default=10.0,
                    help="a send with no answer this long is unanswered and sent again")
    ap.add_argument("--reconnect-deadline", type=float, default=30.0)
    ap.add_argument("--fault-at", type=float, help="seconds into the load to inject the fault")
    ap.add_argument("--fault-cmd", help="shell command that injects the fault")
    ap.add_argument("--heal-after", type=float, default=0.0,
                    help="seconds after the fault command to run --heal-cmd")
    ap.add_argument("--heal-cmd", help="shell command that ends the fault (restart, SIGCONT)")
    ap.add_argument("--fault", metavar="SPEC",
                    help="with --stack: kill:PROC, kill:PROC:SECONDS (restart after), "
                         "stop:PROC:SECONDS; PROC is nats, registry, dispatcher, deadletter, "
                         "api or edgeN")
    ap.add_argument("--repeat", type=int, default=1, help="with --fault: that many times")
    ap.add_argument("--between", type=float, default=2.0,
                    help="with --repeat: seconds between the end of one fault and the next")
    ap.add_argument("--stack-env", action="append", default=[], metavar="VAR=VALUE",
                    help="with --stack: more environment for every service (repeatable)")
    ap.add_argument("--logs", metavar="DIR", help="with --stack: copy every process's log here")
    ap.add_argument("--dwctl", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "..", "..", "build", "bin", "dwctl"),
                    help="dwctl binary used to read DW_DLQ (default: build/bin/dwctl)")
    ap.add_argument("--no-dlq", action="store_true", help="do not read DW_DLQ")
    ap.add_argument("--label", help="first column of the row (default: the fault)")
    ap.add_argument("--header", action="store_true", help="print the table header first")
    ap.add_argument("--json", action="store_true", help="print the whole report as JSON too")
    a = ap.parse_args(argv)
    if (a.fault_cmd or a.fault) and a.fault_at is None:
        ap.error("a fault needs --fault-at")
    if a.fault and not a.stack:
        ap.error("--fault needs --stack (use --fault-cmd against a running stack)")
    if a.fault and a.fault_cmd:
        ap.error("--fault or --fault-cmd, not both")
    label = a.label or a.fault or a.fault_cmd or "no fault"

    st = None
    if a.stack:
        import harness  # only here: the CLI against a running stack needs none of it
        env = dict(STACK_ENV)
        for kv in a.stack_env:
            k, _, v = kv.partition("=")
            env[k] = v
        st = harness.Stack(edges=a.stack, env=env,
                           edge_ids=[f"faultload-edge{i:02d}" for i in range(a.stack)]).start()
        edges = [e.url for e in st.edges]
        dwctl_path = os.path.join(harness.BIN, "dwctl")
        dlq = None if a.no_dlq else (lambda: dwctl_dlq(dwctl_path, st.env()))
    else:
        edges = a.edges.split(",")
        dwctl = None if a.no_dlq else (a.dwctl if os.path.exists(a.dwctl) else shutil.which("dwctl"))
        dlq = (lambda: dwctl_dlq(dwctl)) if dwctl else None
    try:
        load = Load(edges, connections=a.connections, rooms=a.rooms, rate=a.rate,
                    duration=a.duration, drain=a.drain, answer_timeout=a.answer_timeout,
                    reconnect_deadline=a.reconnect_deadline, dlq=dlq,
                    log=lambda m: print(m, file=sys.stderr))
        fault = None
        if a.fault:
            fault = stack_fault(st, a.fault, load, a.repeat, a.between)
        elif a.fault_cmd:
            def fault():
                load.mark("fault")
                subprocess.run(a.fault_cmd, shell=True, check=False)
                if a.heal_cmd:
                    time.sleep(a.heal_after)  # the fault lasts this long, by definition
                    subprocess.run(a.heal_cmd, shell=True, check=False)
                    load.mark("heal")
        rep = asyncio.run(load.run(fault, a.fault_at))
    finally:
        if st:
            st.stop()
            if a.logs:
                os.makedirs(a.logs, exist_ok=True)
                for p in st.procs:
                    shutil.copy(p.log_path, a.logs)
            st.cleanup()
    if a.json:
        print(json.dumps(rep, indent=1))
    if a.header:
        print(HEADER)
    print(row(label, rep))
    bad = problems(rep)
    if bad:
        print("faultload: " + ", ".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
