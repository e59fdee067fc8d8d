"""Every running service serves Prometheus text on /metrics, and the
counters move when messages flow (issue #9)."""
import asyncio
import re
import unittest
import urllib.request

from harness import StackTest, connect, recv_text, wait_until

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? -?[0-9.e+Inf-]+$')


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        ctype = r.headers.get("Content-Type", "")
        text = r.read().decode()
    return ctype, text


def parse(text):
    """{sample name with labels: value}, checking the exposition format."""
    values, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in typed, f"TYPE twice for {name}"
            typed.add(name)
            continue
        assert SAMPLE.match(line), f"not an exposition line: {line!r}"
        key, value = line.rsplit(" ", 1)
        values[key] = float(value)
    assert typed, "no metric families"
    return values


class Metrics(StackTest):
    ENV = {"DW_MSG_RATE": "0"}

    def ports(self):
        st = self.stack
        return {"edge": st.edges[0].port, "registry": st.registry.status_port,
                "dispatcher": st.dispatcher.status_port, "deadletter": st.deadletter.status_port,
                "api": st.api.status_port}

    def test_every_service_exposes_metrics_that_move(self):
        st = self.stack
        ports = self.ports()
        for name, port in ports.items():
            wait_until(lambda: st.http_status(port, "/metrics") == 200, 20, f"{name} /metrics")
        before = {}
        for name, port in ports.items():
            ctype, text = scrape(port)
            self.assertTrue(ctype.startswith("text/plain"), f"{name}: {ctype}")
            before[name] = parse(text)

        async def chat():
            a = await connect(st.edges[0].url)
            b = await connect(st.edges[0].url)
            await asyncio.to_thread(st.wait_conn_count, 2)
            for i in range(20):
                await a.send('{"action":"sendmessage","data":"m%d"}' % i)
            for i in range(20):
                await recv_text(b)
        self.run_async(chat())

        def moved(name, key, at_least):
            return parse(scrape(ports[name])[1]).get(key, 0) - before[name].get(key, 0) >= at_least
        wait_until(lambda: moved("edge", "dw_edge_messages_accepted_total", 20), 10, "edge accepted")
        wait_until(lambda: moved("edge", "dw_edge_deliveries_total", 40), 10, "edge deliveries")
        wait_until(lambda: moved("registry", "dw_registry_applied_seq", 2), 10, "registry applied")
        after = parse(scrape(ports["dispatcher"])[1])
        delivered = [k for k in after if k.startswith("dw_dispatcher_messages_total")
                     and 'result="delivered"' in k]
        self.assertTrue(delivered, "no dw_dispatcher_messages_total{result=\"delivered\"}")
        wait_until(lambda: moved("dispatcher", delivered[0], 20), 10, "dispatcher delivered")
        # Latency per stage: every hop of those 20 messages was observed
        # (a plain client's send has no "stored" stage: it gets no ack).
        for stage in ("fetched", "resolved", "confirmed"):
            wait_until(lambda: moved("dispatcher", f'dw_dispatcher_stage_seconds_count{{stage="{stage}"}}',
                                     20), 10, f"dispatcher stage {stage}")
        for stage in ("delivered", "written"):
            wait_until(lambda: moved("edge", f'dw_edge_stage_seconds_count{{stage="{stage}"}}', 1), 10,
                       f"edge stage {stage}")
        # Gauges, updated once a second: all 16 partitions held, nothing
        # left held once every message was delivered.
        gauges = lambda: parse(scrape(ports["dispatcher"])[1])
        wait_until(lambda: gauges().get("dw_dispatcher_partitions") == 16.0, 10, "16 partitions")
        wait_until(lambda: gauges().get("dw_dispatcher_held_messages") == 0.0, 10, "nothing held")
        for name, port in ports.items():
            values = parse(scrape(port)[1])
            ready = [v for k, v in values.items() if k.startswith("dw_ready")]
            if name != "edge" or ready:
                self.assertEqual(ready and ready[0], 1.0, f"{name} dw_ready")


    def test_connections_gauge_counts_connections_the_edge_closed(self):
        """A connection the edge itself closes (here: a binary frame, 1003)
        leaves dw_edge_connections like one the client closes. It did not:
        the gauge, the heartbeat's count and the self-check's view only
        went down for connections still ready when they ended."""
        st = self.stack
        port = st.edges[0].port

        def gauge():
            return parse(scrape(port)[1])["dw_edge_connections"]

        async def scenario():
            plain = await connect(st.edges[0].url)
            bad = await connect(st.edges[0].url)
            await asyncio.to_thread(st.wait_conn_count, 2)
            self.assertEqual(gauge(), 2)
            await bad.send(b"binary")
            await bad.wait_closed()
            self.assertEqual(bad.close_code, 1003)
            await asyncio.to_thread(wait_until, lambda: gauge() == 1, 10, "the gauge at 1")
            await plain.close()
            await asyncio.to_thread(wait_until, lambda: gauge() == 0, 10, "the gauge at 0")

        self.run_async(scenario())


if __name__ == "__main__":
    unittest.main()
