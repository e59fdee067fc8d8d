"""SIGTERM stops every service cleanly and within its budget,
DW_SHUTDOWN_TIMEOUT_MS (docs/operations.md "Stopping a service"), with
real processes: NATS up (what each service promises on the way out is
kept), nats-server killed with kill -9, and nats-server hung (SIGSTOP: the
connection still looks up). Every service gets its SIGTERM at the same
moment; each must exit with status 0 before its budget (plus a margin for
a loaded machine) is over. With NATS up, the edge's clients get their acks
and then 1001, the registry drops the edge's connections (EDGE_DOWN), the
dispatcher gives every partition back, and the api answers the HTTP
requests it took.
"""
import asyncio
import json
import re
import signal
import socket
import time
import unittest
import urllib.request

from cluster import RawNats
from harness import StackTest, await_until, connect, wait_until
from test_rooms import join, recv_type, v1

# The budget given to every service here (the default is 10 s): small, so
# that the hung-NATS case, which may use all of it, stays short.
BUDGET_MS = 4000
# Between the budget's end and the exit: nats.c's teardown, the process
# exit, a machine shared with other tests.
MARGIN_S = 1.5
SENDS = 10  # within the per-connection burst (DW_MSG_BURST, 20)


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split(" ")[-1])
    return None


class Shutdown(StackTest):
    ENV = {"DW_SHUTDOWN_TIMEOUT_MS": str(BUDGET_MS)}

    def services(self):
        st = self.stack
        return [*st.edges, st.registry, st.dispatcher, st.deadletter, st.api]

    def sigterm(self, procs):
        """SIGTERM to every one of procs at once; returns {name: (exit
        status, seconds from its signal to its exit)}, None for one still
        running well after its budget."""
        t0 = {}
        for p in procs:
            t0[p.name] = time.monotonic()
            p.signal(signal.SIGTERM)
        took = {}

        def all_exited():
            for p in procs:
                if p.name not in took and p.p.poll() is not None:
                    took[p.name] = time.monotonic() - t0[p.name]
            return len(took) == len(procs)

        try:
            wait_until(all_exited, BUDGET_MS / 1000 + MARGIN_S + 5, "every service to exit")
        except AssertionError:
            pass  # reported below, per service
        return {p.name: (p.p.returncode, took.get(p.name)) for p in procs}

    def assert_clean_stops(self, results):
        for name, (rc, took) in results.items():
            p = next(q for q in self.stack.procs if q.name == name)
            self.assertIsNotNone(took, f"{name} still running after its budget:\n{p.tail()}")
            self.assertEqual(rc, 0, f"{name} exited with {rc}:\n{p.tail()}")
            self.assertLessEqual(took, BUDGET_MS / 1000 + MARGIN_S,
                                 f"{name} took {took:.2f} s to stop:\n{p.tail()}")
            self.assertIn('msg="stopped"', p.text(), name)
        print("stop times: " + ", ".join(f"{n} {t:.2f} s" for n, (_, t) in sorted(results.items())))

    async def clients(self):
        """A plain (AWS) client and a v1 client in a room, on the edge."""
        url = self.stack.edges[0].url
        plain = await connect(url)
        c = await v1(url, name="alice")
        await join(c, "stop")
        return plain, c

    async def assert_going_away(self, plain, c):
        """Both clients were closed with 1001 (going away)."""
        await asyncio.wait_for(plain.wait_closed(), 10)
        await asyncio.wait_for(c.reader, 10)
        self.assertEqual(plain.close_code, 1001)
        self.assertEqual(c.ws.close_code, 1001)

    def test_nats_up_everything_drains(self):
        """The edge answers the sends it took before it closes its sockets
        with 1001, and its EDGE_DOWN reaches the registry; the dispatcher
        gives every partition back; the others stop cleanly."""
        st = self.stack
        edge = st.edges[0]

        async def main():
            plain, c = await self.clients()
            st.wait_conn_count(2)
            base = metric(edge.port, "dw_edge_messages_in_total")
            # JetStream hung while the sends arrive: they are published but
            # not acked when the SIGTERM comes, so the edge has to wait for
            # their acks on its way out.
            st.nats.pause()
            try:
                for i in range(SENDS):
                    await c.send(json.dumps({"action": "sendmessage", "room": "stop",
                                             "data": f"m{i}", "id": f"s-{i}"}))
                await await_until(
                    lambda: metric(edge.port, "dw_edge_messages_in_total") >= base + SENDS, 10,
                    "the edge to take every send")
                self.assertEqual(c.pending("ack"), 0, "acked while JetStream was stopped?")
                loop = asyncio.get_running_loop()
                stop = loop.run_in_executor(None, self.sigterm, [edge])
                await await_until(lambda: "edge stopping" in edge.text(), 5,
                                  "the edge to start stopping")
            finally:
                st.nats.resume()
            results = await stop
            acks = {(await recv_type(c, "ack", 5))["id"] for _ in range(SENDS)}
            self.assertEqual(acks, {f"s-{i}" for i in range(SENDS)})
            await self.assert_going_away(plain, c)
            return results

        results = self.run_async(main())
        self.assertIn("edge_down stored", edge.text())
        # One EDGE_DOWN dropped both connections from the table.
        st.wait_conn_count(0, timeout=10)
        m = re.search(r"partitions=(\d+)", st.dispatcher.text())
        results.update(self.sigterm([st.registry, st.dispatcher, st.deadletter, st.api]))
        self.assert_clean_stops(results)
        self.assertEqual(st.dispatcher.text().count("partition given back"), int(m.group(1)))

    def http(self, port, request):
        """Send request on a new connection; the socket, to read the answer."""
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        return s

    @staticmethod
    def answer(s):
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        return data

    def test_api_answers_requests_in_flight(self):
        """An HTTP request the api is working on when it is told to stop
        (its edge is paused: the operation waits for it) gets its answer,
        and so does one sent as it stops; neither connection is dropped."""
        st = self.stack
        api, edge = st.api, st.edges[0]
        bus = RawNats(st.nats_port, name="shutdowntest")
        self.addCleanup(bus.close)
        bus.subscribe("dw.edge.*.conn")

        async def main():
            plain = await connect(edge.url)
            st.wait_conn_count(1)
            conn_id = next(iter(st.conn_ids()))
            post = (f"POST /@connections/{conn_id} HTTP/1.1\r\nHost: api\r\n"
                    "Content-Length: 5\r\n\r\nhello").encode()
            edge.pause()
            try:
                first = self.http(api.mgmt_port, post)
                # The api asked the edge: the operation is in progress.
                bus.next_msg(time.monotonic() + 10)
                loop = asyncio.get_running_loop()
                stop = loop.run_in_executor(None, self.sigterm, [api])
                await await_until(lambda: 'msg="stopping"' in api.text(), 5,
                                  "the api to start stopping")
                second = self.http(api.mgmt_port, post)
                results = await stop
            finally:
                edge.resume()
            await plain.close()
            return results, self.answer(first), self.answer(second)

        results, first, second = self.run_async(main())
        # The edge did not answer in time: 503 with the operation's reason.
        self.assertTrue(first.startswith(b"HTTP/1.1 503 "), first)
        self.assertNotIn(b"stopping", first)
        self.assertTrue(second.startswith(b"HTTP/1.1 503 "), second)
        self.assertIn(b"stopping", second)
        self.assert_clean_stops(results)

    def wait_disconnected(self, procs):
        wait_until(lambda: all("nats disconnected" in p.text() for p in procs), 10,
                   "every service to see NATS gone")

    def test_nats_killed(self):
        """kill -9 of nats-server, then SIGTERM: every service exits 0
        within its budget, the edge still closes its sockets with 1001 and
        says what it could not do."""
        st = self.stack

        async def main():
            plain, c = await self.clients()
            st.nats.kill9()
            self.wait_disconnected(self.services())
            results = await asyncio.get_running_loop().run_in_executor(
                None, self.sigterm, self.services())
            await self.assert_going_away(plain, c)
            return results

        self.assert_clean_stops(self.run_async(main()))
        self.assertIn("NATS away: edge_down not published", st.edges[0].text())

    def test_nats_hung(self):
        """nats-server stopped (SIGSTOP) right before the SIGTERM: the
        services still believe it is there and wait for answers that do not
        come; the budget ends those waits."""
        st = self.stack

        async def main():
            plain, c = await self.clients()
            st.nats.pause()
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    None, self.sigterm, self.services())
            finally:
                st.nats.resume()
            await self.assert_going_away(plain, c)
            return results

        self.assert_clean_stops(self.run_async(main()))


if __name__ == "__main__":
    unittest.main()
