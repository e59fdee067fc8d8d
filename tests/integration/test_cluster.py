"""Two edges, crashes of the registry and of an edge."""
import asyncio
import collections
import signal
import unittest

from harness import StackTest, connect, recv_text, no_message, wait_until
from test_zero_loss import stream_msgs


class TwoEdges(StackTest):
    EDGES = 2

    def test_message_reaches_every_client_on_both_edges_once(self):
        st = self.stack

        async def scenario():
            a = [await connect(st.edges[0].url) for _ in range(3)]
            b = [await connect(st.edges[1].url) for _ in range(3)]
            await asyncio.to_thread(st.wait_conn_count, 6)
            await a[0].send('{"action":"sendmessage","message":"to all"}')
            for ws in a + b:
                self.assertEqual(await recv_text(ws), "to all")
            for ws in a + b:
                self.assertIsNone(await no_message(ws, 0.05), "delivered twice")
            await b[2].send('{"action":"sendmessage","message":"back"}')
            for ws in a + b:
                self.assertEqual(await recv_text(ws), "back")

        self.run_async(scenario())

    def test_fresh_connect_on_another_edge_gets_the_next_message(self):
        """A client whose connect was acked on edge 2 gets a message sent
        right after on edge 1, although the registry had not applied that
        connect when the message was dispatched: the registry is stopped
        (SIGSTOP) from before the connect until after the send, so its
        query and its catching up race when it resumes. The dispatcher
        makes the registry apply DW_CONN up to its end first."""
        st = self.stack

        async def scenario():
            a = await connect(st.edges[0].url)
            await asyncio.to_thread(st.wait_conn_count, 1)
            st.registry.signal(signal.SIGSTOP)
            try:
                b = await connect(st.edges[1].url)
                # Answered only once b's connect is durable in DW_CONN.
                await b.send('{"action":"whoami"}')
                self.assertIn("Your info", await recv_text(b))
                before = stream_msgs(st, "DW_MSG")
                await a.send('{"action":"sendmessage","message":"fresh"}')
                await asyncio.to_thread(wait_until, lambda: stream_msgs(st, "DW_MSG") > before,
                                        10, "the message to be stored")
            finally:
                st.registry.signal(signal.SIGCONT)
            for ws in (a, b):
                self.assertEqual(await recv_text(ws), "fresh")

        self.run_async(scenario())

    def test_registry_kill9_and_restart_keeps_state(self):
        st = self.stack

        async def scenario():
            a = await connect(st.edges[0].url)
            b = await connect(st.edges[1].url)
            await asyncio.to_thread(st.wait_conn_count, 2)
            before = await asyncio.to_thread(st.conns)
            st.registry.kill9()
            st.start_registry()
            after = await asyncio.to_thread(
                wait_until, lambda: st.dwctl_ok("conn", "list") and st.conns(), 20, "registry back")
            key = lambda c: c["connectionId"]
            self.assertEqual(sorted(before, key=key), sorted(after, key=key))
            # New connections still work, and everyone hears them.
            c = await connect(st.edges[1].url)
            await asyncio.to_thread(st.wait_conn_count, 3)
            await c.send('{"action":"sendmessage","message":"after restart"}')
            for ws in (a, b, c):
                self.assertEqual(await recv_text(ws), "after restart")

        self.run_async(scenario())

    def test_edge_kill9_removes_its_connections(self):
        st = self.stack

        async def scenario():
            a = [await connect(st.edges[0].url) for _ in range(2)]
            b = [await connect(st.edges[1].url) for _ in range(3)]
            await asyncio.to_thread(st.wait_conn_count, 5)
            conns = st.conns()
            edges = collections.Counter(c["edgeId"] for c in conns)
            self.assertEqual(sorted(edges.values()), [2, 3])
            dead_edge = [e for e, n in edges.items() if n == 3][0]
            b_ids = {c["connectionId"] for c in conns if c["edgeId"] == dead_edge}
            st.edges[1].kill9()
            # Chat goes on; the dead edge's connections leave the registry
            # (no-responders on the next fan-out, or missed heartbeats).
            await a[0].send('{"action":"sendmessage","message":"anyone?"}')
            for ws in a:
                self.assertEqual(await recv_text(ws), "anyone?")
            await asyncio.to_thread(st.wait_conn_count, 2, 30)
            self.assertFalse(b_ids & st.conn_ids())
            await a[1].send('{"action":"sendmessage","message":"still chatting"}')
            for ws in a:
                self.assertEqual(await recv_text(ws), "still chatting")

        self.run_async(scenario())


if __name__ == "__main__":
    unittest.main()


class EdgeDeclaredDownWhileAlive(StackTest):
    """An edge stopped (SIGSTOP) past the dispatcher's liveness limit is
    declared down and its connections leave the registry; messages sent
    meanwhile are fanned out without it. When it resumes it closes its
    connections with 1012 (nothing would bring those messages to sockets
    that stayed open); its clients reconnect and are reachable once more."""
    EDGES = 2
    ENV = {"DW_EDGE_DEAD_MS": "1500", "DW_HEARTBEAT_MS": "300"}

    def test_resumed_edge_closes_its_connections(self):
        import websockets
        st = self.stack

        async def scenario():
            a = await connect(st.edges[0].url)
            b = [await connect(st.edges[1].url) for _ in range(2)]
            await asyncio.to_thread(st.wait_conn_count, 3)
            st.edges[1].signal(signal.SIGSTOP)
            try:
                await asyncio.to_thread(st.wait_conn_count, 1, 30)
                await a.send('{"action":"sendmessage","message":"while you were away"}')
                self.assertEqual(await recv_text(a), "while you were away")
            finally:
                st.edges[1].signal(signal.SIGCONT)
            for ws in b:
                with self.assertRaises(websockets.ConnectionClosed) as cm:
                    while True:  # what was queued before the close, then the close
                        await asyncio.wait_for(ws.recv(), 30)
                self.assertEqual(cm.exception.rcvd.code, 1012, cm.exception)
            b = [await connect(st.edges[1].url) for _ in range(2)]
            await asyncio.to_thread(st.wait_conn_count, 3, 30)
            await a.send('{"action":"sendmessage","message":"welcome back"}')
            for ws in [a] + b:
                self.assertEqual(await recv_text(ws), "welcome back")

        self.run_async(scenario())
