"""100 clients x 40 messages: every client receives all 4,000 frames, once.
(The fault suite, test_faults.py, checks exactness under load and faults in
depth; this one keeps the plain protocol's many-senders case in make test at
a size Python's websockets client reads in seconds, not minutes.)"""
import asyncio
import collections
import json
import os
import subprocess
import unittest

from harness import BIN, StackTest, connect

CLIENTS = 100
PER_CLIENT = 40


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


class DwbenchRooms(StackTest):
    """A short dwbench run in its dynamowave.v1 mode (what `make bench`'s
    ingest scenario uses): 200 connections in 20 rooms of 10, one sender per
    room. Checks only what cannot depend on speed: every message reached
    exactly the 10 members of its own room, once."""
    ENV = Load.ENV

    def test_small_rooms_exactly_once(self):
        st = self.stack
        env = {k: v for k, v in os.environ.items() if not k.startswith("DW_")}
        r = subprocess.run(
            [os.path.join(BIN, "dwbench"), "--url", st.edges[0].url, "--connections", "200",
             "--senders", "20", "--rooms", "20", "--rate", "400", "--duration", "1",
             "--drain", "30", "--log-level", "warn"],
            env=env, capture_output=True, text=True, timeout=120)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(r.returncode, 0, f"{res}\n{r.stderr[-2000:]}")
        self.assertEqual((res["receivers"], res["senders"], res["rooms"]), (200, 20, 20))
        self.assertGreater(res["sent"], 0)
        self.assertEqual(res["expected"], res["sent"] * 10)
        self.assertEqual(res["delivered"], res["expected"])
        self.assertEqual((res["lost"], res["dup"], res["errors"]), (0, 0, 0))
