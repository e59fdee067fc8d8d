"""200 clients x 50 messages: every client receives all 10,000 frames, once."""
import asyncio
import collections
import unittest

from harness import StackTest, connect

CLIENTS = 200
PER_CLIENT = 50


class Load(StackTest):
    # A load test raises the production limits it needs, through the
    # documented knobs (docs/security.md).
    ENV = {"DW_MSG_RATE": "0", "DW_EDGE_MSG_RATE": "0", "DW_IP_MAX_CONNS": "0",
           "DW_IP_CONN_RATE": "0", "DW_EDGE_CONN_RATE": "0"}
    def test_200_clients_50_messages_each(self):
        st = self.stack
        total = CLIENTS * PER_CLIENT

        async def reader(ws, got):
            while sum(got.values()) < total:
                m = await ws.recv()
                got[m] += 1

        async def scenario():
            clients = []
            for i in range(CLIENTS):
                clients.append(await connect(st.edges[0].url))
            await asyncio.to_thread(st.wait_conn_count, CLIENTS, 60)
            received = [collections.Counter() for _ in clients]
            readers = [asyncio.create_task(reader(ws, got)) for ws, got in zip(clients, received)]

            async def sender(i, ws):
                for n in range(PER_CLIENT):
                    await ws.send('{"action":"sendmessage","data":"m-%d-%d"}' % (i, n))
            await asyncio.gather(*(sender(i, ws) for i, ws in enumerate(clients)))
            await asyncio.wait_for(asyncio.gather(*readers), 240)
            expected = {"m-%d-%d" % (i, n) for i in range(CLIENTS) for n in range(PER_CLIENT)}
            for got in received:
                self.assertEqual(set(got), expected)
                self.assertEqual(max(got.values()), 1, "a frame arrived twice")
            for ws in clients:
                await ws.close()

        self.run_async(scenario(), timeout=400)


if __name__ == "__main__":
    unittest.main()
