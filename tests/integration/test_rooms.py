"""The dynamowave.v1 protocol: rooms, acks, resume without gaps, history,
presence, and plain-mode clients in the lobby (docs/protocol.md)."""
import asyncio
import json
import unittest

from harness import StackTest, connect, recv_text, no_message

V1 = ["dynamowave.v1"]


class V1Client:
    """A v1 connection whose frames are sorted by type as they arrive, so a
    test can wait for "the next ack" while messages interleave with it."""

    def __init__(self, ws):
        self.ws = ws
        self.queues = {}
        self.closed = False
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        try:
            async for raw in self.ws:
                m = json.loads(raw)
                self.queues.setdefault(m["type"], asyncio.Queue()).put_nowait(m)
        except Exception:
            pass
        self.closed = True

    def q(self, typ):
        return self.queues.setdefault(typ, asyncio.Queue())

    async def send(self, text):
        await self.ws.send(text)

    async def close(self):
        await self.ws.close()
        await self.reader

    def pending(self, typ):
        return self.q(typ).qsize()


async def v1(url, name=None):
    ws = await connect(url + (f"?name={name}" if name else ""), subprotocols=V1)
    c = V1Client(ws)
    hello = await recv_type(c, "hello")
    c.user = hello["user"]
    c.conn_id = hello["connectionId"]
    return c


async def recv_type(c, typ, timeout=10):
    """The next frame of that type."""
    return await asyncio.wait_for(c.q(typ).get(), timeout)


async def nothing_of(c, typ, within=0.3):
    try:
        return await asyncio.wait_for(c.q(typ).get(), within)
    except asyncio.TimeoutError:
        return None


async def join(ws, room, since=None, ref=None):
    req = {"action": "join", "room": room}
    if since is not None:
        req["since"] = since
    if ref is not None:
        req["ref"] = ref
    await ws.send(json.dumps(req))
    return await recv_type(ws, "joined")


def purge_keep(port, stream, keep):
    """$JS.API.STREAM.PURGE over the NATS text protocol (the test stack's
    NATS has no users)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.recv(4096)
        body = json.dumps({"keep": keep}).encode()
        s.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.purge 1\r\n' +
                  f"PUB $JS.API.STREAM.PURGE.{stream} _INBOX.purge {len(body)}\r\n".encode() +
                  body + b"\r\nPING\r\n")
        buf = b""
        while b'"success":true' not in buf:
            chunk = s.recv(4096)
            assert chunk, buf
            buf += chunk
            assert b'"error"' not in buf, buf


class Rooms(StackTest):
    EDGES = 2
    ENV = {"DW_MSG_RATE": "0"}  # the resume test sends 500 in a burst

    def test_rooms_isolate_and_acks_match(self):
        st = self.stack

        async def scenario():
            a = await v1(st.edges[0].url, "alice")
            b = await v1(st.edges[1].url, "bob")
            c = await v1(st.edges[1].url, "carol")
            self.assertEqual(a.user, "alice")
            j = await join(a, "r1", ref=7)
            self.assertEqual(j["ref"], 7)
            await join(b, "r2")
            await join(c, "r1")
            await join(c, "r2")

            await a.send(json.dumps({"action": "sendmessage", "room": "r1", "data": "one", "id": "m1"}))
            ack = await recv_type(a, "ack")
            self.assertEqual(ack["id"], "m1")
            got_a = await recv_type(a, "message")
            got_c = await recv_type(c, "message")
            for m in (got_a, got_c):
                self.assertEqual((m["room"], m["data"], m["id"], m["from"], m["seq"]),
                                 ("r1", "one", "m1", "alice", ack["seq"]))
            await b.send(json.dumps({"action": "sendmessage", "room": "r2", "data": {"k": [1]}}))
            ack2 = await recv_type(b, "ack")
            m = await recv_type(c, "message")
            self.assertEqual((m["room"], m["data"], m["seq"]), ("r2", {"k": [1]}, ack2["seq"]))
            # a is only in r1: it never sees r2's message.
            self.assertIsNone(await nothing_of(a, "message"))
            # Sending to a room one has not joined is refused.
            await a.send(json.dumps({"action": "sendmessage", "room": "r2", "data": "x", "ref": "q"}))
            err = await recv_type(a, "error")
            self.assertEqual((err["code"], err["ref"]), ("not_member", "q"))
            # exclude_self: the sender gets the ack, not the message.
            await c.send(json.dumps({"action": "sendmessage", "room": "r1", "data": "quiet",
                                     "exclude_self": True}))
            await recv_type(c, "ack")
            self.assertEqual((await recv_type(a, "message"))["data"], "quiet")
            self.assertIsNone(await nothing_of(c, "message"))

        self.run_async(scenario())

    def test_resume_without_gaps(self):
        st = self.stack
        n = 500

        async def scenario():
            sender = await v1(st.edges[0].url, "sender")
            await join(sender, "res")
            r = await v1(st.edges[1].url, "reader")
            await join(r, "res")
            await sender.send(json.dumps({"action": "sendmessage", "room": "res", "data": "before"}))
            first = await recv_type(r, "message")
            await r.close()  # drops; the sender goes on
            for i in range(n):
                await sender.send(json.dumps({"action": "sendmessage", "room": "res", "data": f"m{i}"}))
            await recv_type(sender, "ack")  # the one for "before"
            acks = [await recv_type(sender, "ack") for _ in range(n)]
            r2 = await v1(st.edges[1].url, "reader")
            # Live traffic keeps flowing while it resumes.
            live = asyncio.create_task(self._send_live(sender, 20))
            j = await join(r2, "res", since=first["seq"])
            self.assertTrue(j["recovered"])
            got = []
            while len(got) < n + 20:
                m = await recv_type(r2, "message")
                got.append(m)
            await live
            seqs = [m["seq"] for m in got]
            self.assertEqual(seqs, sorted(seqs), "out of order")
            self.assertEqual(len(set(seqs)), len(seqs), "duplicates")
            self.assertEqual([m["data"] for m in got[:n]], [f"m{i}" for i in range(n)])
            self.assertEqual([m["seq"] for m in got[:n]], [a["seq"] for a in acks])
            self.assertEqual([m["data"] for m in got[n:]], [f"live{i}" for i in range(20)])
            self.assertIsNone(await nothing_of(r2, "message"))

        self.run_async(scenario())

    async def _send_live(self, ws, k):
        for i in range(k):
            await ws.send(json.dumps({"action": "sendmessage", "room": "res", "data": f"live{i}"}))
            await asyncio.sleep(0.005)

    def test_history_and_unrecoverable_since(self):
        st = self.stack

        async def scenario():
            a = await v1(st.edges[0].url, "hist")
            await join(a, "h")
            seqs = []
            for i in range(30):
                await a.send(json.dumps({"action": "sendmessage", "room": "h", "data": i}))
                seqs.append((await recv_type(a, "ack"))["seq"])
            for _ in range(30):
                await recv_type(a, "message")
            await a.send(json.dumps({"action": "history", "room": "h", "limit": 10, "ref": "p1"}))
            page = await recv_type(a, "history")
            self.assertEqual([m["data"] for m in page["messages"]], list(range(20, 30)))
            self.assertTrue(page["more"])
            self.assertEqual(page["ref"], "p1")
            await a.send(json.dumps({"action": "history", "room": "h", "before": seqs[20], "limit": 100}))
            page = await recv_type(a, "history")
            self.assertEqual([m["data"] for m in page["messages"]], list(range(0, 20)))
            self.assertFalse(page["more"])

        self.run_async(scenario())

    def test_resume_past_the_window_is_not_recovered(self):
        st = self.stack

        async def scenario():
            a = await v1(st.edges[0].url, "w")
            await join(a, "win")
            for i in range(5):
                await a.send(json.dumps({"action": "sendmessage", "room": "win", "data": i}))
            first = (await recv_type(a, "ack"))["seq"]
            for _ in range(4):
                await recv_type(a, "ack")
            # What the history window would do after 24 h: the stream drops
            # its oldest messages (here: a purge keeping the newest one).
            await asyncio.to_thread(purge_keep, st.nats_port, "DW_MSG", 1)
            b = await v1(st.edges[1].url, "late")
            j = await join(b, "win", since=first)
            self.assertFalse(j["recovered"])
            self.assertIsNone(await nothing_of(b, "message"))

        self.run_async(scenario())

    def test_presence(self):
        st = self.stack

        async def scenario():
            a = await v1(st.edges[0].url, "p-alice")
            await join(a, "pr")
            b = await v1(st.edges[1].url, "p-bob")
            await join(b, "pr")
            ev = await recv_type(a, "join")
            self.assertEqual((ev["user"], ev["room"]), ("p-bob", "pr"))
            b2 = await v1(st.edges[0].url, "p-bob")
            await join(b2, "pr")
            await a.send(json.dumps({"action": "presence", "room": "pr"}))
            p = await recv_type(a, "presence")
            self.assertEqual(p["users"], [{"user": "p-alice", "connections": 1},
                                          {"user": "p-bob", "connections": 2}])
            await b.close()
            ev = await recv_type(a, "leave")
            self.assertEqual((ev["user"], ev["room"]), ("p-bob", "pr"))

        self.run_async(scenario())

    def test_presence_of_plain_clients_in_the_lobby(self):
        """Plain clients are lobby members: a v1 member of the lobby sees
        them come and go, from its own edge (a room of plain and v1
        members) and from the other one. An edge with no v1 member drops
        presence events unread; once one joins again, they flow again."""
        st = self.stack

        async def scenario():
            v = await v1(st.edges[1].url, "watcher")
            await join(v, "lobby")
            for i, edge in enumerate((st.edges[1], st.edges[0])):
                plain = await connect(edge.url + f"?name=plain{i}")
                ev = await recv_type(v, "join")
                self.assertEqual((ev["user"], ev["room"]), (f"plain{i}", "lobby"))
                await plain.close()
                ev = await recv_type(v, "leave")
                self.assertEqual((ev["user"], ev["room"]), (f"plain{i}", "lobby"))

            await v.send(json.dumps({"action": "leave", "room": "lobby"}))
            await recv_type(v, "left")
            unseen = await connect(st.edges[0].url + "?name=unseen")
            await asyncio.to_thread(st.wait_conn_count, 2)
            await join(v, "lobby")
            seen = await connect(st.edges[0].url + "?name=seen")
            ev = await recv_type(v, "join")
            self.assertEqual((ev["user"], ev["room"]), ("seen", "lobby"))
            self.assertIsNone(await nothing_of(v, "join"))
            await seen.close()
            await unseen.close()

        self.run_async(scenario())

    def test_plain_and_v1_share_the_lobby(self):
        st = self.stack

        async def scenario():
            plain = await connect(st.edges[0].url)
            v = await v1(st.edges[1].url, "modern")
            await join(v, "lobby")
            await asyncio.to_thread(st.wait_conn_count, 2)
            await plain.send('{"action":"sendmessage","message":"from plain"}')
            self.assertEqual(await recv_text(plain), "from plain")
            m = await recv_type(v, "message")
            self.assertEqual((m["room"], m["data"]), ("lobby", "from plain"))
            await v.send(json.dumps({"action": "sendmessage", "room": "lobby", "data": "from v1"}))
            self.assertEqual(await recv_text(plain), "from v1")

        self.run_async(scenario())


if __name__ == "__main__":
    unittest.main()
