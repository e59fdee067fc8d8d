"""The @connections management API: HTTP (AWS's shape, bearer token), the
NATS subjects through `dwctl conn post|delete`, and `dwctl status`."""
import asyncio
import json
import os
import re
import subprocess
import tempfile
import unittest
import urllib.error
import urllib.request

import websockets

from harness import BIN, StackTest, connect, recv_text, wait_until

TOKEN = "s3cret-token-for-tests"
_token_dir = tempfile.mkdtemp(prefix="dw-it-token-")
TOKEN_FILE = os.path.join(_token_dir, "admin-token")
with open(TOKEN_FILE, "w") as f:
    f.write(TOKEN + "\n")  # the newline is not part of the token


def tearDownModule():
    os.unlink(TOKEN_FILE)
    os.rmdir(_token_dir)


ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UA = "dw-it/1.0 (connections api)"


class ConnectionsApi(StackTest):
    EDGES = 2
    ENV = {"DW_ADMIN_TOKEN_FILE": TOKEN_FILE}

    # -- helpers ---------------------------------------------------------

    def http(self, method, path, body=None, token=TOKEN, headers=None):
        """(status, body bytes, headers) of one request to the management port."""
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.stack.api.base_url + path, data=body, method=method,
                                     headers=h)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers

    async def ahttp(self, *a, **kw):
        return await asyncio.to_thread(self.http, *a, **kw)

    async def adwctl(self, *args, input=None):
        return await asyncio.to_thread(
            subprocess.run, [os.path.join(BIN, "dwctl"), *args], env=self.stack.env(),
            capture_output=True, text=True, timeout=30, input=input)

    async def client_on(self, edge, n_total):
        """A client on `edge`, once the registry lists it; returns (ws, id)."""
        st = self.stack
        before = await asyncio.to_thread(st.conn_ids)
        ws = await connect(edge.url, user_agent_header=UA)
        await asyncio.to_thread(st.wait_conn_count, n_total)
        (cid,) = (await asyncio.to_thread(st.conn_ids)) - before
        return ws, cid

    async def wait_gone_from_registry(self, cid, timeout=5):
        await asyncio.to_thread(wait_until, lambda: cid not in self.stack.conn_ids(), timeout,
                                f"the registry to drop {cid}")

    # -- tests -----------------------------------------------------------

    def test_post_over_http_and_dwctl_reaches_a_client_on_edge_b(self):
        st = self.stack

        async def scenario():
            other, _ = await self.client_on(st.edges[0], 1)
            ws, cid = await self.client_on(st.edges[1], 2)
            code, body, _ = await self.ahttp("POST", f"/@connections/{cid}", b"from the backend")
            self.assertEqual((code, body), (200, b""))
            self.assertEqual(await recv_text(ws), "from the backend")

            r = await self.adwctl("conn", "post", cid, "--data", "from dwctl")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(await recv_text(ws), "from dwctl")
            r = await self.adwctl("conn", "post", cid, "-", input="from stdin \u00e9")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(await recv_text(ws), "from stdin \u00e9")
            # Only the addressed connection got anything.
            with self.assertRaises(asyncio.TimeoutError):
                await asyncio.wait_for(other.recv(), 0.2)

            # The 128 KB message limit: at it is fine, above it is 413.
            big = b"x" * (128 * 1024)
            code, _, _ = await self.ahttp("POST", f"/@connections/{cid}", big)
            self.assertEqual(code, 200)
            self.assertEqual(len(await recv_text(ws)), len(big))
            code, body, hdrs = await self.ahttp("POST", f"/@connections/{cid}", big + b"y")
            self.assertEqual(code, 413, body)
            self.assertEqual(hdrs["x-amzn-ErrorType"], "PayloadTooLargeException")

        self.run_async(scenario())

    def test_get_is_aws_shaped_and_gone_after_disconnect(self):
        st = self.stack

        async def scenario():
            ws, cid = await self.client_on(st.edges[1], 1)
            code, body, hdrs = await self.ahttp("GET", f"/@connections/{cid}")
            self.assertEqual(code, 200, body)
            self.assertEqual(hdrs["Content-Type"], "application/json")
            info = json.loads(body)
            self.assertEqual(list(info), ["ConnectedAt", "Identity", "LastActiveAt"])
            self.assertEqual(info["Identity"], {"SourceIp": "127.0.0.1", "UserAgent": UA})
            self.assertRegex(info["ConnectedAt"], ISO_MS)
            self.assertRegex(info["LastActiveAt"], ISO_MS)
            self.assertGreaterEqual(info["LastActiveAt"], info["ConnectedAt"])

            await ws.close()
            for method, payload in (("POST", b"anyone?"), ("GET", None)):
                code, body, hdrs = await self.ahttp(method, f"/@connections/{cid}", payload)
                self.assertEqual(code, 410, f"{method}: {body}")
                self.assertEqual(hdrs["x-amzn-ErrorType"], "GoneException")
            await self.wait_gone_from_registry(cid)
            r = await self.adwctl("conn", "post", cid, "--data", "late")
            self.assertEqual(r.returncode, 1)
            self.assertIn(f"connection {cid} is gone", r.stderr)

        self.run_async(scenario())

    def test_gone_edge_410_removes_the_id_from_the_registry(self):
        st = self.stack

        async def scenario():
            _, cid = await self.client_on(st.edges[1], 1)
            st.edges[1].kill9()
            # The registry still lists it: nothing told it yet.
            self.assertIn(cid, await asyncio.to_thread(st.conn_ids))
            code, body, _ = await self.ahttp("POST", f"/@connections/{cid}", b"hello?")
            self.assertEqual(code, 410, body)
            # Well before the dispatcher would declare the edge dead (10 s).
            await self.wait_gone_from_registry(cid, timeout=5)
            self.assertIn("stale connection removed", st.api.tail(50))

        self.run_async(scenario())

    def test_delete_closes_with_1000_and_the_registry_drops_it(self):
        st = self.stack

        async def scenario():
            a, a_id = await self.client_on(st.edges[1], 1)
            b, b_id = await self.client_on(st.edges[0], 2)

            code, body, hdrs = await self.ahttp("DELETE", f"/@connections/{a_id}")
            self.assertEqual((code, body), (204, b""))
            self.assertNotIn("Content-Length", hdrs)
            with self.assertRaises(websockets.ConnectionClosed):
                await asyncio.wait_for(a.recv(), 5)
            self.assertEqual(a.close_code, 1000)
            await self.wait_gone_from_registry(a_id)
            code, _, _ = await self.ahttp("DELETE", f"/@connections/{a_id}")
            self.assertEqual(code, 410)

            r = await self.adwctl("conn", "delete", b_id)
            self.assertEqual(r.returncode, 0, r.stderr)
            with self.assertRaises(websockets.ConnectionClosed):
                await asyncio.wait_for(b.recv(), 5)
            self.assertEqual(b.close_code, 1000)
            await self.wait_gone_from_registry(b_id)
            r = await self.adwctl("conn", "delete", b_id)
            self.assertEqual(r.returncode, 1)
            self.assertIn(f"connection {b_id} is gone", r.stderr)

        self.run_async(scenario())

    def test_token_ids_and_errors(self):
        st = self.stack

        async def scenario():
            ws, cid = await self.client_on(st.edges[0], 1)
            path = f"/@connections/{cid}"
            code, _, hdrs = await self.ahttp("GET", path, token=None)
            self.assertEqual(code, 401)
            self.assertEqual(hdrs["WWW-Authenticate"], "Bearer")
            code, _, _ = await self.ahttp("POST", path, b"x", token="not-the-token")
            self.assertEqual(code, 403)
            code, _, _ = await self.ahttp("GET", path, token=TOKEN + "x")
            self.assertEqual(code, 403)

            code, _, _ = await self.ahttp("GET", "/@connections/MadeUpId12345678")
            self.assertEqual(code, 410)
            # AWS clients escape '=': the id looked up is the decoded one.
            code, body, _ = await self.ahttp("GET", "/@connections/R0oXAdfD0kwCH6w%3D")
            self.assertEqual(code, 410)
            self.assertEqual(json.loads(body)["connectionId"], "R0oXAdfD0kwCH6w=")
            # A real id with an escaped character is found.
            escaped = "%{:02X}".format(ord(cid[0])) + cid[1:]
            code, body, _ = await self.ahttp("GET", f"/@connections/{escaped}")
            self.assertEqual(code, 200, body)
            # An AWS SDK endpoint that keeps its stage.
            code, _, _ = await self.ahttp("POST", f"/production/@connections/{cid}", b"staged")
            self.assertEqual(code, 200)
            self.assertEqual(await recv_text(ws), "staged")

            code, _, _ = await self.ahttp("GET", "/somewhere/else")
            self.assertEqual(code, 404)
            code, _, hdrs = await self.ahttp("PUT", path, b"x")
            self.assertEqual(code, 405)
            self.assertEqual(hdrs["Allow"], "GET, POST, DELETE")

            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(
                    f"http://127.0.0.1:{st.api.status_port}/metrics", timeout=5).read().decode())
            self.assertRegex(metrics, r'dw_api_requests_total\{op="get",code="410"\} 2\b')
            self.assertRegex(metrics, r'dw_ready\{service="api"\} 1\b')

        self.run_async(scenario())

        # No token and a non-loopback address: the listener refuses to start.
        env = st.env(MGMT_HOST="0.0.0.0")
        env.pop("DW_ADMIN_TOKEN_FILE")
        r = subprocess.run([os.path.join(BIN, "api")], env=env, capture_output=True, text=True,
                           timeout=10)
        self.assertEqual(r.returncode, 2)
        self.assertIn("without a token", r.stderr)

    def test_dwctl_status_lists_every_running_service_as_ready(self):
        st = self.stack

        def status():
            r = st.dwctl("status", "--json", "--wait-ms", "2500", check=False)
            return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None

        # Every process of the stack: api, registry, dispatcher, both edges.
        # The deadletter service is judged only once it answers dw.ops.ping
        # (nothing else it does shows readiness from outside).
        expected = ["api", "dispatcher", "edge", "edge", "registry"]

        def all_ready():
            rc, s = status()
            if rc != 0 or not s:
                return False
            kinds = sorted(x["service"] for x in s["services"] if x["ready"] is True)
            want = sorted(expected + ["deadletter"] * any(
                x["service"] == "deadletter" for x in s["services"]))
            return s if kinds == want else False

        s = wait_until(all_ready, 20, "every service ready in dwctl status", interval=0.1)
        self.assertTrue(s["healthy"])
        self.assertFalse([x for x in s["services"] if x["ready"] is not True], s["services"])
        api = [x for x in s["services"] if x["service"] == "api"][0]
        self.assertEqual(api["source"], "ping")
        self.assertRegex(api["version"], r"^\d+\.\d+\.\d+")
        edges = [x for x in s["services"] if x["service"] == "edge"]
        self.assertTrue(all(x["version"] for x in edges))
        self.assertEqual(s["dlq"]["exists"], s["streams"]["DW_DLQ"]["exists"])
        # One consumer per DW_MSG partition, all held by the dispatcher.
        parts = {c["name"].split("-")[1] for c in s["consumers"] if c["name"].startswith("dwp-")}
        self.assertEqual(parts, {str(p) for p in range(16)})
        self.assertEqual(s["dispatcher"]["partitions"], 16)
        # The text form is one screen.
        r = st.dwctl("status")
        self.assertLessEqual(len(r.stdout.splitlines()), 40, r.stdout)


if __name__ == "__main__":
    unittest.main()
