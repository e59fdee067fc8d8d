"""Issue 17, integrations: routes to user code (DW_ROUTES). The whole stack
under its least-privilege NATS users (deploy/nats/local.conf), real
WebSocket clients in both protocols, and the real C example workers
(examples/workers/c: dw-echo, sync; dw-audit, async) logged in as the NATS
user worker.

  sync   a frame {"action":"echo",...} -> a NATS request on dw.rpc.echo ->
         the worker's {"reply": ...} -> one frame to the sender; no
         responders, a slow worker, an {"error"} -> an error frame
  async  {"action":"audit",...} -> stored in DW_ROUTE (v1: an ack with the
         seq) -> route-audit -> the worker records and acks; redelivered
         after a kill -9 of the worker; after DW_ROUTE_MAX_DELIVER attempts
         in DW_DLQ, and `dwctl dlq replay` sends it back to the route."""
import asyncio
import json
import os
import shutil
import signal
import tempfile
import unittest
import urllib.request

import websockets

from harness import BIN, Stack, await_until, connect, no_message, recv_text, wait_until
from test_integrations import Nats, log_has, stream_messages
from test_nats_security import LOCAL_CONF, RawNats, credentials, refused

V1 = ["dynamowave.v1"]
TIMEOUT_MS = 1000
MAX_DELIVER = 3
BACKOFF_MS = 300


def edge_metric(edge, name):
    """The value of one line of the edge's /metrics (name with labels), or None."""
    with urllib.request.urlopen(f"http://127.0.0.1:{edge.port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return None


def labels(route, mode):
    return '{route="%s",mode="%s"}' % (route, mode)


class Routes(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dw-routes-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.nats_env, self.service_env = credentials(self.dir)
        self.service_env["edge"].update(
            ROUTES="echo:sync, audit:async", ROUTE_TIMEOUT_MS=TIMEOUT_MS,
            ROUTE_MAX_DELIVER=MAX_DELIVER, ROUTE_BACKOFF_MS=BACKOFF_MS)
        self.stack = Stack(edges=1, nats_conf=LOCAL_CONF, nats_env=self.nats_env,
                           service_env=self.service_env)
        self.addCleanup(self.stack.cleanup)
        self.stack.start()
        self.addCleanup(self._after)
        self.edge = self.stack.edges[0]
        self.url = self.edge.url
        wait_until(lambda: log_has(self.edge, "route consumer ready"), 20,
                   "the edge to make route-audit")

    def _after(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and (not outcome.success or getattr(outcome.result, "failures", None)
                                    or getattr(outcome.result, "errors", None)):
            print(self.stack.logs())
        self.stack.stop()
        self.assertEqual(self.stack.sanitizer_reports(), [])
        with open(self.stack.nats.log_path, errors="replace") as f:
            # Only the probes of test_permissions may be refused.
            self.assertEqual([ln for ln in f if "Violation" in ln and ":probe\"" not in ln], [])

    def worker(self, name, *args):
        env = dict(os.environ, DW_NATS_URL=self.stack.nats_url, **self.service_env["worker"])
        # A log of its own per start: a ready line of an earlier one must not count.
        self.n_workers = getattr(self, "n_workers", 0) + 1
        p = self.stack._spawn(f"{name}-{self.n_workers}", [os.path.join(BIN, name), *args], env)
        ready = "echo: serving" if name == "dw-echo" else "audit: reading DW_ROUTE"
        wait_until(lambda: log_has(p, ready) or not p.alive(), 20, f"{name} to be ready")
        self.assertTrue(p.alive(), p.tail())
        return p

    def run_async(self, coro, timeout=90):
        return asyncio.run(asyncio.wait_for(coro, timeout))

    async def v1(self, name="alice"):
        ws = await connect(self.url + "?name=" + name, subprotocols=V1)
        hello = json.loads(await recv_text(ws))
        self.assertEqual(hello["type"], "hello")
        return ws, hello["connectionId"]

    async def plain(self):
        ws = await connect(self.url)
        return ws

    # ---- sync ----------------------------------------------------------

    def test_sync_reply_in_both_protocols(self):
        self.worker("dw-echo")

        async def scenario():
            ws = await self.plain()
            await ws.send(json.dumps({"action": "echo", "data": "hello worker"}))
            self.assertEqual(await recv_text(ws), "hello worker")
            await ws.send(json.dumps({"action": "echo", "data": {"n": [1, 2]}}))
            self.assertEqual(json.loads(await recv_text(ws)), {"n": [1, 2]})
            # The built-in route still works beside the routes.
            await ws.send(json.dumps({"action": "sendmessage", "data": "chat"}))
            self.assertEqual(await recv_text(ws), "chat")
            v, _ = await self.v1()
            await v.send(json.dumps({"action": "echo", "data": "v1 hi", "ref": 7}))
            self.assertEqual(json.loads(await recv_text(v)),
                             {"type": "reply", "action": "echo", "data": "v1 hi", "ref": 7})
            await v.send(json.dumps({"action": "echo", "data": [True], "ref": "r2"}))
            self.assertEqual(json.loads(await recv_text(v)),
                             {"type": "reply", "action": "echo", "data": [True], "ref": "r2"})
            # An action that is no route is still the protocols' own business.
            await v.send(json.dumps({"action": "nope", "ref": 3}))
            f = json.loads(await recv_text(v))
            self.assertEqual((f["type"], f["code"], f["ref"]), ("error", "bad_request", 3))
            await ws.close()
            await v.close()
        self.run_async(scenario())
        self.assertEqual(edge_metric(self.edge, "dw_edge_route_requests_total" +
                                     labels("echo", "sync")), 4)
        self.assertEqual(edge_metric(self.edge, "dw_edge_route_errors_total" +
                                     labels("echo", "sync")), 0)
        self.assertEqual(edge_metric(self.edge, "dw_edge_route_seconds_count" +
                                     labels("echo", "sync")), 4)

    def test_the_worker_gets_the_documented_request(self):
        self.worker("dw-echo", "--request")

        async def scenario():
            v, conn = await self.v1("bob")
            frame = {"action": "echo", "data": "x", "ref": 1}
            await v.send(json.dumps(frame))
            reply = json.loads(await recv_text(v))
            rq = reply["data"]
            self.assertEqual(list(rq), ["action", "connectionId", "requestId", "identity", "body"])
            self.assertEqual(rq["action"], "echo")
            self.assertEqual(rq["connectionId"], conn)
            self.assertEqual(len(rq["requestId"]), 16)
            self.assertEqual(rq["identity"], {"sourceIp": "127.0.0.1",
                                              "userAgent": rq["identity"]["userAgent"],
                                              "user": "bob", "context": None})
            self.assertEqual(rq["body"], frame)
            await v.close()
        self.run_async(scenario())

    def test_sync_errors_are_never_silent(self):
        async def expect_errors(what):
            ws = await self.plain()
            await ws.send(json.dumps({"action": "echo", "data": what}))
            e = json.loads(await recv_text(ws, 10))
            self.assertEqual(e["message"], "Internal server error")
            self.assertEqual(len(e["connectionId"]), 16)
            self.assertEqual(len(e["requestId"]), 16)
            v, _ = await self.v1()
            await v.send(json.dumps({"action": "echo", "data": what, "ref": what}))
            f = json.loads(await recv_text(v, 10))
            self.assertEqual((f["type"], f["code"], f["ref"], f["action"]),
                             ("error", "integration_failed", what, "echo"), f)
            await ws.close()
            await v.close()
            return f

        # No worker: nats-server says "no responders" at once.
        f = self.run_async(expect_errors("nobody"))
        self.assertIn("no worker", f["message"])
        self.assertEqual(edge_metric(self.edge, "dw_edge_route_errors_total" +
                                     labels("echo", "sync")), 2)
        # A worker that answers {"error": ...}.
        w = self.worker("dw-echo", "--error")
        f = self.run_async(expect_errors("failing"))
        self.assertIn("--error", f["message"])
        w.stop()
        # A slow worker: no answer within DW_ROUTE_TIMEOUT_MS; its late
        # answer is dropped (the next frame is the next request's).
        self.worker("dw-echo", "--delay-ms", str(TIMEOUT_MS * 2))
        f = self.run_async(expect_errors("slow"))
        self.assertIn("in time", f["message"])
        self.assertEqual(edge_metric(self.edge, "dw_edge_route_timeouts_total" +
                                     labels("echo", "sync")), 2)
        # dwctl status: the route, its counts, and whether a worker answered last.
        st = json.loads(self.stack.dwctl("status", "--json").stdout)
        echo = [r for r in st["routes"] if r["action"] == "echo"][0]
        self.assertEqual((echo["mode"], echo["requests"], echo["errors"], echo["timeouts"]),
                         ("sync", 6, 4, 2))
        self.assertEqual(echo["last"], "timeout")

    def test_in_flight_requests_per_connection_are_bounded(self):
        # DW_ROUTE_MAX_INFLIGHT=16 (default): the 17th concurrent request is refused.
        self.worker("dw-echo", "--delay-ms", "300")

        async def scenario():
            v, _ = await self.v1()
            for i in range(17):
                await v.send(json.dumps({"action": "echo", "data": i, "ref": i}))
            got = [json.loads(await recv_text(v, 20)) for _ in range(17)]
            limited = [f for f in got if f.get("code") == "rate_limited"]
            self.assertEqual([f["ref"] for f in limited], [16])
            # The rest were answered or timed out, each exactly once.
            self.assertEqual(sorted(f["ref"] for f in got), list(range(17)))
            await v.close()
        self.run_async(scenario())

    def test_stop_answers_requests_in_flight(self):
        """SIGTERM while a sync request waits for its worker: the reply is
        written before the edge closes the socket with 1001."""
        self.worker("dw-echo", "--delay-ms", str(TIMEOUT_MS // 2))
        requests = "dw_edge_route_requests_total" + labels("echo", "sync")

        async def scenario():
            v, _ = await self.v1()
            await v.send(json.dumps({"action": "echo", "data": "late", "ref": 1}))
            await await_until(lambda: edge_metric(self.edge, requests) == 1, 10,
                              "the edge to send the request")
            self.edge.signal(signal.SIGTERM)
            self.assertEqual(json.loads(await recv_text(v, 5)),
                             {"type": "reply", "action": "echo", "data": "late", "ref": 1})
            with self.assertRaises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(v.recv(), 10)
            self.assertEqual(closed.exception.rcvd.code, 1001)
        self.run_async(scenario())
        self.assertEqual(self.edge.p.wait(15), 0, self.edge.tail())

    # ---- async ---------------------------------------------------------

    def audit_lines(self, path):
        try:
            with open(path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def test_async_stored_consumed_acked(self):
        path = os.path.join(self.dir, "audit.log")
        self.worker("dw-audit", "--file", path)

        async def scenario():
            v, conn = await self.v1("carol")
            await v.send(json.dumps({"action": "audit", "data": "a1", "id": "c-1", "ref": 1}))
            ack = json.loads(await recv_text(v))
            self.assertEqual((ack["type"], ack["action"], ack["id"], ack["ref"]),
                             ("ack", "audit", "c-1", 1))
            self.assertGreater(ack["seq"], 0)
            # A retry with the same id is the same frame.
            await v.send(json.dumps({"action": "audit", "data": "a1", "id": "c-1", "ref": 2}))
            again = json.loads(await recv_text(v))
            self.assertEqual((again["seq"], again["ref"]), (ack["seq"], 2))
            ws = await self.plain()
            await ws.send(json.dumps({"action": "audit", "data": "plain"}))
            # Plain mode: stored is silent (as API Gateway without a route response).
            self.assertIsNone(await no_message(ws, 0.5))
            await ws.close()
            await v.close()
            return conn, ack["seq"]
        conn, seq = self.run_async(scenario())
        lines = wait_until(lambda: len(self.audit_lines(path)) == 2 and self.audit_lines(path),
                           20, "two audit records")
        first = [ln for ln in lines if ln["seq"] == seq][0]
        self.assertEqual((first["action"], first["connectionId"], first["user"],
                          first["deliveries"]), ("audit", conn, "carol", 1))
        self.assertEqual(first["body"], {"action": "audit", "data": "a1", "id": "c-1", "ref": 1})
        self.assertEqual([ln["body"]["data"] for ln in lines if ln["seq"] != seq], ["plain"])
        # Acked: the work queue is empty.
        nc = Nats(self.stack.nats_port, "dwctl", self.nats_env["DW_NATS_PASS_DWCTL"],
                  inbox="_INBOX.dwctl")
        self.addCleanup(nc.close)
        wait_until(lambda: json.loads(nc.request("$JS.API.STREAM.INFO.DW_ROUTE")[1])
                   ["state"]["messages"] == 0, 10, "DW_ROUTE to be empty")
        self.assertEqual(edge_metric(self.edge, "dw_edge_route_requests_total" +
                                     labels("audit", "async")), 3)
        # dwctl status: the consumer has a worker waiting on it.
        st = json.loads(self.stack.dwctl("status", "--json").stdout)
        audit = [r for r in st["routes"] if r["action"] == "audit"][0]
        self.assertEqual((audit["mode"], audit["requests"], audit["listening"]),
                         ("async", 3, True))

    def test_redelivered_after_a_worker_kill9(self):
        path = os.path.join(self.dir, "audit.log")
        w = self.worker("dw-audit", "--file", path, "--hold-ms", "60000")

        async def send():
            v, _ = await self.v1()
            await v.send(json.dumps({"action": "audit", "data": "survives", "ref": 1}))
            ack = json.loads(await recv_text(v))
            self.assertEqual(ack["type"], "ack")
            await v.close()
            return ack["seq"]
        seq = self.run_async(send())
        wait_until(lambda: log_has(w, f"received seq {seq} (delivery 1)"), 20, "the delivery")
        w.kill9()
        self.assertEqual(self.audit_lines(path), [])
        self.worker("dw-audit", "--file", path)
        lines = wait_until(lambda: self.audit_lines(path), 20, "the redelivered record")
        self.assertEqual([(ln["seq"], ln["deliveries"], ln["body"]["data"]) for ln in lines],
                         [(seq, 2, "survives")])

    def test_dead_lettered_after_the_last_attempt_and_replayed(self):
        path = os.path.join(self.dir, "audit.log")
        failing = self.worker("dw-audit", "--fail")

        async def send():
            ws = await self.plain()
            await ws.send(json.dumps({"action": "audit", "data": "poison?"}))
            self.assertIsNone(await no_message(ws, 0.3))
            await ws.close()
        self.run_async(send())

        def dlq():
            r = self.stack.dwctl("dlq", "list", "--json", check=False)
            return [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
        entries = wait_until(dlq, 30, "the frame in DW_DLQ")
        self.assertEqual(len(entries), 1, entries)
        e = entries[0]
        self.assertEqual(e["reason"], "route_max_deliveries:route-audit", e)
        self.assertEqual(e["subject"], "dw.route.audit", e)
        self.assertEqual(e["attempts"], MAX_DELIVER, e)
        self.assertEqual(failing.tail().count("--fail: nak"), MAX_DELIVER, failing.tail())
        failing.stop()
        # Back to the route: a working worker records it.
        self.worker("dw-audit", "--file", path)
        out = self.stack.dwctl("dlq", "replay", str(e["id"])).stdout
        self.assertIn("replayed 1,", out)
        lines = wait_until(lambda: self.audit_lines(path), 20, "the replayed record")
        self.assertEqual([ln["body"]["data"] for ln in lines], ["poison?"])
        self.assertEqual(dlq(), [])

    # ---- permissions and configuration ------------------------------------

    def test_permissions_for_routes(self):
        """Each user reaches its part of the routes and nothing more."""
        def probe(user):
            c = RawNats(self.stack.nats_port, user, self.nats_env["DW_NATS_PASS_" + user.upper()])
            self.addCleanup(c.close)
            self.assertEqual(c.connect_reply, [])
            return c
        cases = [
            # the worker serves and reads routes, never writes into DW_ROUTE
            # nor makes, changes or removes its consumers
            ("worker", "pub", "dw.route.audit", True),
            ("worker", "pub", "dw.rpc.echo", True),
            ("worker", "pub", "$JS.API.STREAM.MSG.GET.DW_ROUTE", True),
            ("worker", "pub", "$JS.API.CONSUMER.DURABLE.CREATE.DW_ROUTE.route-audit", True),
            ("worker", "pub", "$JS.API.CONSUMER.DELETE.DW_ROUTE.route-audit", True),
            ("worker", "pub", "$JS.API.STREAM.PURGE.DW_ROUTE", True),
            ("worker", "pub", "$JS.API.CONSUMER.MSG.NEXT.DW_ROUTE.route-audit", False),
            ("worker", "pub", "$JS.API.CONSUMER.INFO.DW_ROUTE.route-audit", False),
            ("worker", "sub", "dw.rpc.echo", False),
            # the edge sends and stores, makes consumers, never removes them
            # or changes the stream
            ("edge", "pub", "dw.rpc.echo", False),
            ("edge", "pub", "dw.route.audit", False),
            ("edge", "pub", "$JS.API.CONSUMER.DURABLE.CREATE.DW_ROUTE.route-x", False),
            ("edge", "pub", "$JS.API.CONSUMER.DELETE.DW_ROUTE.route-audit", True),
            ("edge", "pub", "$JS.API.STREAM.UPDATE.DW_ROUTE", True),
            ("edge", "pub", "$JS.API.STREAM.MSG.GET.DW_ROUTE", True),
            ("edge", "pub", "$JS.API.CONSUMER.INFO.DW_ROUTE.route-audit", True),
            ("edge", "sub", "dw.rpc.>", True),
            # only the registry owns the stream; the deadletter service
            # reads a frame and replays it; the others stay out
            ("registry", "pub", "dw.route.audit", True),
            ("dispatcher", "pub", "dw.route.audit", True),
            ("api", "pub", "dw.rpc.echo", True),
            ("dwctl", "pub", "dw.route.audit", True),
            ("dwctl", "pub", "$JS.API.CONSUMER.DELETE.DW_ROUTE.route-audit", True),
            ("deadletter", "pub", "dw.route.audit", False),
            ("deadletter", "pub", "$JS.API.STREAM.DELETE.DW_ROUTE", True),
        ]
        conns = {}
        for n, (user, op, subject, want_refused) in enumerate(cases):
            with self.subTest(user=user, op=op, subject=subject):
                c = conns.get(user) or conns.setdefault(user, probe(user))
                said = (c.pub(subject, f"_INBOX.{user}.probe") if op == "pub"
                        else c.sub(subject, n + 1))
                self.assertEqual(refused(said), want_refused, said)


class RoutesAgainstMakeUp(unittest.TestCase):
    """The examples as docs/integrations.md runs them: `DW_ROUTES=echo:sync,
    audit:async make up` (scripts/up.sh on free ports), then each worker is
    one command from the checkout, with its defaults for the NATS user and
    the password file (var/secrets/nats_worker)."""

    def test_echo_and_audit_with_their_defaults(self):
        import subprocess
        from test_up_sh import UpStack
        up = UpStack(env={"DW_ROUTES": "echo:sync,audit:async"})
        self.addCleanup(up.cleanup)
        up.start()
        checkout = os.path.join(up.dir, "checkout")
        os.makedirs(checkout)
        os.symlink(up.data, os.path.join(checkout, "var"))
        procs = []

        def stop_all():
            for p, _ in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait(10)
        self.addCleanup(stop_all)

        def start(name, ready):
            env = {k: v for k, v in os.environ.items() if not k.startswith("DW_")}
            env["DW_NATS_URL"] = up.nats_url
            path = os.path.join(up.dir, f"{name}.log")
            with open(path, "ab") as log:
                p = subprocess.Popen([os.path.join(BIN, name)], cwd=checkout, env=env,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
            procs.append((p, path))

            def has(text):
                with open(path, errors="replace") as f:
                    return text in f.read()
            wait_until(lambda: has(ready) or p.poll() is not None, 30, f"{name} to start")
            with open(path, errors="replace") as f:
                self.assertIsNone(p.poll(), f.read())
            return has
        start("dw-echo", "echo: serving")
        audit_has = start("dw-audit", "audit: reading DW_ROUTE")

        async def scenario():
            ws = await connect(up.url)
            await ws.send(json.dumps({"action": "echo", "data": "from make up"}))
            self.assertEqual(await recv_text(ws), "from make up")
            v = await connect(up.url + "?name=dave", subprotocols=V1)
            await recv_text(v)
            await v.send(json.dumps({"action": "audit", "data": "kept", "ref": 1}))
            ack = json.loads(await recv_text(v))
            self.assertEqual((ack["type"], ack["ref"]), ("ack", 1))
            await ws.close()
            await v.close()
            return ack["seq"]
        seq = asyncio.run(asyncio.wait_for(scenario(), 60))
        wait_until(lambda: audit_has(f"acked seq {seq}") and audit_has('"data":"kept"'), 20,
                   "the audit record on stdout")
        stop_all()
        self.assertEqual(up.stop(), 0)
        self.assertEqual(up.sanitizer_reports(), [])


class Config(unittest.TestCase):
    def test_built_in_actions_and_bad_routes_are_refused_at_start(self):
        import subprocess
        for routes, why in [("sendmessage:sync", "built-in"), ("join:async", "built-in"),
                            ("echo:sync,echo:async", "twice"), ("echo", "no mode"),
                            ("echo:fast", "sync or async"), ("a.b:sync", "letters"),
                            ("$default:sync", "letters")]:
            with self.subTest(routes=routes):
                r = subprocess.run([os.path.join(BIN, "edge")],
                                   env=dict(os.environ, DW_ROUTES=routes,
                                            DW_NATS_URL="nats://127.0.0.1:1"),
                                   capture_output=True, text=True, timeout=20)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("DW_ROUTES", r.stderr)
                self.assertIn(why, r.stderr)


if __name__ == "__main__":
    unittest.main()
