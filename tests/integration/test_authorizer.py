"""Issue 17, the connect authorizer (DW_AUTHORIZER): a real nats-server under
the least-privilege users of deploy/nats/local.conf, the real binaries, real
WebSocket clients and the real C example (build/bin/dw-authorizer, logged in
as the NATS user worker).

Allowed upgrades carry the authorizer's user (v1's hello, the registry's
connection list) and rooms (v1 joins outside them are forbidden); refusals
are the HTTP status of the upgrade: 401 and 403 from the authorizer, 503
when it cannot decide (stopped, stalled, too slow, too many pending); it
composes with the JWT check; and a slow authorization holds up no one
else."""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

import websockets

from harness import BIN, Stack, connect, recv_text, wait_until
from test_nats_security import LOCAL_CONF, credentials
from test_security import upgrade_status

V1 = ["dynamowave.v1"]
SUBJECT = "dw.authz.connect"
HS_SECRET = b"an-hs256-secret-of-at-least-32-bytes!!"
SLOW_MS = 800
TOKENS = f"""# token user rooms delay_ms
alice-token alice *
bob-token bob general,random
slow-token slowpoke * {SLOW_MS}
never-token neverland * 60000
"""


def hs256(claims):
    def b64u(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64u(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64u(json.dumps(claims).encode())
    sig = hmac.new(HS_SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64u(sig)}"


def log_has(proc, text):
    try:
        with open(proc.log_path, errors="replace") as f:
            return text in f.read()
    except OSError:
        return False


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                if line.split(" ")[0] == name or name.endswith("}"):
                    return float(line.split(" ")[-1])
    return None


class Authorizer(unittest.TestCase):
    def edge_env(self):
        """The edge's settings beside the authorizer's."""
        return {}

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dw-authz-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.nats_env, self.service_env = credentials(self.dir)
        self.tokens = os.path.join(self.dir, "tokens.txt")
        with open(self.tokens, "w") as f:
            f.write(TOKENS)
        with open(os.path.join(self.dir, "hs256"), "wb") as f:
            f.write(HS_SECRET)
        self.stack = Stack(edges=0, nats_conf=LOCAL_CONF, nats_env=self.nats_env,
                           service_env=self.service_env)
        self.addCleanup(self._cleanup)
        self.stack.start()
        self.authz = self.start_authorizer()
        self.edge = self.stack.start_edge(AUTHORIZER=SUBJECT, AUTHORIZER_TIMEOUT_MS=2000,
                                          **self.edge_env())
        self.url = self.edge.url

    def _cleanup(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and not outcome.success:
            print(self.stack.logs())
        self.stack.stop()
        reports = self.stack.sanitizer_reports()
        with open(self.stack.nats.log_path, errors="replace") as f:
            violations = [line for line in f if "Violation" in line]
        self.stack.cleanup()
        self.assertEqual(reports, [])
        self.assertEqual(violations, [], "nats-server refused something")

    def start_authorizer(self):
        env = dict(os.environ, DW_NATS_URL=self.stack.nats_url, DW_AUTHORIZER=SUBJECT,
                   DW_AUTHZ_TOKENS_FILE=self.tokens, **self.service_env["worker"])
        # A log of its own each time: "serving" must be this one's.
        self.n_authz = getattr(self, "n_authz", 0) + 1
        p = self.stack._spawn(f"authorizer{self.n_authz}", [os.path.join(BIN, "dw-authorizer")],
                              env)
        wait_until(lambda: log_has(p, "serving " + SUBJECT) or not p.alive(), 20,
                   "the authorizer to serve")
        self.assertTrue(p.alive(), p.tail())
        return p

    def status(self, query="", headers=None, subprotocols=None):
        return upgrade_status(self.url + query, headers, subprotocols)


class Decisions(Authorizer):
    def test_allow_carries_user_and_rooms(self):
        async def scenario():
            # v1, token in the query: the authorizer's user in the hello.
            alice = await connect(self.url + "?token=alice-token&name=mallory", subprotocols=V1)
            hello = json.loads(await recv_text(alice))
            self.assertEqual(hello["user"], "alice")
            # bob may use general and random only (the authorizer's rooms).
            bob = await connect(self.url, subprotocols=V1,
                                extra_headers={"Authorization": "Bearer bob-token"})
            self.assertEqual(json.loads(await recv_text(bob))["user"], "bob")
            await bob.send(json.dumps({"action": "join", "room": "secret", "ref": "1"}))
            err = json.loads(await recv_text(bob))
            self.assertEqual((err["type"], err["code"]), ("error", "forbidden"))
            await bob.send(json.dumps({"action": "join", "room": "general", "ref": "2"}))
            while True:
                m = json.loads(await recv_text(bob))
                if m["type"] == "joined":
                    break
            # Plain (AWS) mode, header token: a chat message goes round.
            plain = await connect(self.url, extra_headers={"Authorization": "Bearer alice-token"})
            await asyncio.to_thread(self.stack.wait_conn_count, 3)
            await plain.send('{"action":"sendmessage","data":"authorized"}')
            self.assertEqual(await recv_text(plain), "authorized")
            users = sorted(c["userId"] for c in await asyncio.to_thread(self.stack.conns))
            self.assertEqual(users, ["alice", "alice", "bob"])
            for ws in (alice, bob, plain):
                await ws.close()
        asyncio.run(asyncio.wait_for(scenario(), 60))
        self.assertGreaterEqual(metric(self.edge.port, "dw_edge_authorizer_allowed_total"), 3)
        # Plain HTTP passes the gate untouched.
        self.assertEqual(self.stack.http_status(self.edge.port, "/healthz"), 200)

    def test_deny_401_403(self):
        self.assertEqual(self.status(), 401)  # no token
        self.assertEqual(self.status("?token=wrong"), 403)
        self.assertEqual(self.status(headers={"Authorization": "Bearer nope"}), 403)
        self.assertEqual(self.status("?token=alice-token"), 101)
        self.assertEqual(metric(self.edge.port, "dw_edge_authorizer_denied_total"), 3)
        self.assertEqual(metric(self.edge.port, "dw_edge_authorizer_requests_total"), 4)

    def test_fail_closed_503(self):
        # Too slow: the answer comes after DW_AUTHORIZER_TIMEOUT_MS.
        t0 = time.monotonic()
        self.assertEqual(self.status("?token=never-token"), 503)
        self.assertGreaterEqual(time.monotonic() - t0, 1.9)
        # Stalled (SIGSTOP): a timeout too.
        self.authz.pause()
        try:
            self.assertEqual(self.status("?token=alice-token"), 503)
        finally:
            self.authz.resume()
        self.assertEqual(self.status("?token=alice-token"), 101)
        # Stopped: no responders, refused at once.
        self.authz.stop()
        t0 = time.monotonic()
        self.assertEqual(self.status("?token=alice-token"), 503)
        self.assertLess(time.monotonic() - t0, 0.9)
        self.assertGreaterEqual(
            metric(self.edge.port, 'dw_edge_authorizer_errors_total{reason="timeout"}'), 2)
        self.assertEqual(
            metric(self.edge.port, 'dw_edge_authorizer_errors_total{reason="no_responders"}'), 1)
        # Back: allowed again.
        self.authz = self.start_authorizer()
        self.assertEqual(self.status("?token=alice-token"), 101)

    def test_edge_stays_responsive_while_authorizations_are_pending(self):
        async def scenario():
            chatter = await connect(self.url + "?token=alice-token")
            await asyncio.to_thread(self.stack.wait_conn_count, 1)
            t0 = time.monotonic()
            slow = [asyncio.create_task(connect(self.url + "?token=slow-token"))
                    for _ in range(3)]
            # While those wait for the authorizer: a message goes round,
            # another client is authorized and connects, HTTP answers.
            await chatter.send('{"action":"sendmessage","data":"meanwhile"}')
            self.assertEqual(await recv_text(chatter), "meanwhile")
            other = await connect(self.url + "?token=alice-token")
            self.assertEqual(await asyncio.to_thread(self.stack.http_status, self.edge.port,
                                                     "/healthz"), 200)
            fast = time.monotonic() - t0
            self.assertLess(fast, SLOW_MS / 1000.0 - 0.3, "the edge waited for the slow ones")
            self.assertFalse(any(t.done() for t in slow))
            done = await asyncio.gather(*slow)
            self.assertGreaterEqual(time.monotonic() - t0, SLOW_MS / 1000.0)
            for ws in done + [chatter, other]:
                await ws.close()
        asyncio.run(asyncio.wait_for(scenario(), 60))

    def test_upgrade_after_a_kept_alive_request_is_refused(self):
        # The gate saw a plain request; an upgrade on the same connection
        # afterwards was never authorized: 503, not a bypass.
        with socket.create_connection(("127.0.0.1", self.edge.port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = b""
            while b"\r\n\r\n" not in resp:
                resp += s.recv(4096)
            self.assertIn(b" 200 ", resp.split(b"\r\n")[0])
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall((f"GET /?token=alice-token HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
            deadline = time.monotonic() + 10
            while b"HTTP/1.1 503" not in resp and b"HTTP/1.1 101" not in resp:
                chunk = s.recv(4096)
                if not chunk or time.monotonic() > deadline:
                    break
                resp += chunk
            self.assertNotIn(b"101", resp)


class Pending(Authorizer):
    def edge_env(self):
        return {"AUTHORIZER_MAX_PENDING": 2, "HANDSHAKE_TIMEOUT_S": 2}

    def raw_answer(self, data, timeout=10):
        """The status line the edge answers data with (None: closed without one)."""
        with socket.create_connection(("127.0.0.1", self.edge.port), timeout=timeout) as s:
            s.sendall(data)
            resp = b""
            while b"\r\n" not in resp:
                chunk = s.recv(4096)
                if not chunk:
                    return None
                resp += chunk
            return resp.split(b"\r\n")[0].decode()

    def test_request_heads_are_bounded(self):
        # A head larger than DW_MAX_HEADER + DW_MAX_URL: 431, nobody asked.
        big = (b"GET /?token=alice-token HTTP/1.1\r\nUpgrade: websocket\r\n"
               + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n")
        self.assertEqual(self.raw_answer(big), "HTTP/1.1 431 Request Header Fields Too Large")
        # A head that never ends: 408 after DW_HANDSHAKE_TIMEOUT_S.
        t0 = time.monotonic()
        self.assertEqual(self.raw_answer(b"GET /?token=alice-token HTTP/1.1\r\nHost: x\r\n"),
                         "HTTP/1.1 408 Request Timeout")
        self.assertGreaterEqual(time.monotonic() - t0, 1.9)
        # Not HTTP at all: handed to lws, which refuses it as it always does
        # (403 in 4.1); nobody asked.
        junk = self.raw_answer(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        self.assertTrue(junk is None or " 101 " not in junk, junk)
        self.assertEqual(metric(self.edge.port, "dw_edge_authorizer_requests_total"), 0)

    def test_too_many_pending_503(self):
        async def scenario():
            slow = [asyncio.create_task(connect(self.url + "?token=slow-token"))
                    for _ in range(2)]
            await asyncio.to_thread(wait_until, lambda: metric(
                self.edge.port, "dw_edge_authorizer_requests_total") == 2, 10, "two pending")
            self.assertEqual(await asyncio.to_thread(self.status, "?token=alice-token"), 503)
            for ws in await asyncio.gather(*slow):
                await ws.close()
        asyncio.run(asyncio.wait_for(scenario(), 60))
        self.assertEqual(
            metric(self.edge.port, 'dw_edge_authorizer_errors_total{reason="overload"}'), 1)
        self.assertEqual(self.status("?token=alice-token"), 101)


class ComposesWithJwt(Authorizer):
    """DW_AUTH=jwt and DW_AUTHORIZER: the authorizer is asked first (the
    gate reads the request before lws), then the edge checks the JWT; both
    must allow. The authorizer's user wins; rooms are those both allow."""

    def edge_env(self):
        return {"AUTH": "jwt", "JWT_SECRET_FILE": os.path.join(self.dir, "hs256")}

    def test_both_must_pass(self):
        exp = int(time.time()) + 600
        jwt_any = {"Authorization": "Bearer " + hs256({"sub": "jwt-user", "exp": exp})}
        jwt_rooms = {"Authorization": "Bearer " + hs256(
            {"sub": "jwt-user", "exp": exp, "rooms": ["general", "secret"]})}
        bad_jwt = {"Authorization": "Bearer " + hs256({"sub": "jwt-user", "exp": exp - 1200})}
        self.assertEqual(self.status("?token=alice-token"), 401)  # no JWT
        self.assertEqual(self.status("?token=alice-token", bad_jwt), 401)  # expired JWT
        self.assertEqual(self.status("?token=wrong", jwt_any), 403)  # the authorizer says no
        # (the example authorizer takes a bearer token for its own: the JWT is none of its)
        self.assertEqual(self.status("", jwt_any), 403)
        self.assertEqual(self.status("?token=alice-token", jwt_any), 101)

        async def rooms_of(token, headers):
            ws = await connect(self.url + "?token=" + token, subprotocols=V1,
                               extra_headers=headers)
            user = json.loads(await recv_text(ws))["user"]
            allowed = []
            for n, room in enumerate(["general", "random", "secret"]):
                await ws.send(json.dumps({"action": "join", "room": room, "ref": str(n)}))
                while True:
                    m = json.loads(await recv_text(ws))
                    if m["type"] in ("joined", "error"):
                        break
                if m["type"] == "joined":
                    allowed.append(room)
            await ws.close()
            return user, allowed

        async def scenario():
            # bob: general, random (authorizer) and general, secret (JWT)
            self.assertEqual(await rooms_of("bob-token", jwt_rooms), ("bob", ["general"]))
            # alice: any room (authorizer), general and secret (JWT)
            self.assertEqual(await rooms_of("alice-token", jwt_rooms),
                             ("alice", ["general", "secret"]))
        asyncio.run(asyncio.wait_for(scenario(), 60))


class ContextReachesRoutes(Authorizer):
    """What the authorizer said travels with the connection: a sync route's
    worker (dw-echo --request, the real example) gets the authorizer's user
    and context as identity.user and identity.context, in both protocols."""

    def edge_env(self):
        return {"ROUTES": "echo:sync"}

    def test_identity_context_in_route_requests(self):
        env = dict(os.environ, DW_NATS_URL=self.stack.nats_url, **self.service_env["worker"])
        echo = self.stack._spawn("echo", [os.path.join(BIN, "dw-echo"), "--request"], env)
        wait_until(lambda: log_has(echo, "echo: serving") or not echo.alive(), 20,
                   "dw-echo to serve")
        self.assertTrue(echo.alive(), echo.tail())

        async def scenario():
            v = await connect(self.url + "?token=bob-token", subprotocols=V1)
            hello = json.loads(await recv_text(v))
            self.assertEqual(hello["user"], "bob")
            await v.send(json.dumps({"action": "echo", "data": "x", "ref": 1}))
            rq = json.loads(await recv_text(v))["data"]
            self.assertEqual(rq["connectionId"], hello["connectionId"])
            self.assertEqual(rq["identity"]["user"], "bob")
            self.assertEqual(rq["identity"]["context"],
                             {"tokenSource": "query", "sourceIp": "127.0.0.1",
                              "authorizer": "dw-authorizer"})
            plain = await connect(self.url, extra_headers={"Authorization": "Bearer alice-token"})
            await plain.send(json.dumps({"action": "echo", "data": "y"}))
            rq = json.loads(await recv_text(plain))
            self.assertEqual(rq["identity"]["user"], "alice")
            self.assertEqual(rq["identity"]["context"]["tokenSource"], "header")
            await v.close()
            await plain.close()
        asyncio.run(asyncio.wait_for(scenario(), 60))


class AgainstMakeUp(unittest.TestCase):
    """docs/integrations.md's "try it": `DW_AUTHORIZER=dw.authz.connect make up`
    (scripts/up.sh, on free ports) and dw-authorizer started with one
    command from the repository root, with its defaults: the NATS user
    worker, var/secrets/nats_worker, examples/workers/authz-tokens.txt."""

    def test_one_command(self):
        from test_up_sh import UpStack
        up = UpStack(env={"DW_AUTHORIZER": SUBJECT})
        self.addCleanup(up.cleanup)
        up.start()
        checkout = os.path.join(up.dir, "checkout")
        os.makedirs(os.path.join(checkout, "examples", "workers"))
        os.symlink(up.data, os.path.join(checkout, "var"))
        shutil.copy(os.path.join(JS_DIR, "..", "authz-tokens.txt"),
                    os.path.join(checkout, "examples", "workers"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DW_")}
        env["DW_NATS_URL"] = up.nats_url
        log_path = os.path.join(up.dir, "authorizer.log")
        with open(log_path, "wb") as log:
            p = subprocess.Popen([os.path.join(BIN, "dw-authorizer")], cwd=checkout, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: (p.terminate(), p.wait(10)))

        def serving():
            with open(log_path, errors="replace") as f:
                return "serving " + SUBJECT in f.read() or p.poll() is not None
        wait_until(serving, 30, "dw-authorizer to serve")
        self.assertIsNone(p.poll())
        self.assertEqual(upgrade_status(up.url + "?token=demo-alice-token"), 101)
        self.assertEqual(upgrade_status(up.url + "?token=nope"), 403)
        self.assertEqual(upgrade_status(up.url), 401)


JS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples",
                      "workers", "js")


@unittest.skipUnless(os.path.isdir(os.path.join(JS_DIR, "node_modules")) and shutil.which("node"),
                     "examples/workers/js/node_modules missing (npm ci there): JS authorizer not run")
class JsAuthorizer(Authorizer):
    """examples/workers/js/authorizer.mjs in place of the C one: the same
    answers (it runs only where npm ci was run by hand: nothing is
    downloaded at test time)."""

    def start_authorizer(self):
        env = dict(os.environ, DW_NATS_URL=self.stack.nats_url, DW_AUTHORIZER=SUBJECT,
                   DW_AUTHZ_TOKENS_FILE=self.tokens, **self.service_env["worker"])
        p = self.stack._spawn("authorizer-js", ["node", os.path.join(JS_DIR, "authorizer.mjs")],
                              env)
        wait_until(lambda: log_has(p, "serving " + SUBJECT) or not p.alive(), 30,
                   "the JS authorizer to serve")
        self.assertTrue(p.alive(), p.tail())
        return p

    def test_allow_and_deny(self):
        self.assertEqual(self.status(), 401)
        self.assertEqual(self.status("?token=wrong"), 403)

        async def scenario():
            bob = await connect(self.url, subprotocols=V1,
                                extra_headers={"Authorization": "Bearer bob-token"})
            self.assertEqual(json.loads(await recv_text(bob))["user"], "bob")
            await bob.send(json.dumps({"action": "join", "room": "secret", "ref": "1"}))
            self.assertEqual(json.loads(await recv_text(bob))["code"], "forbidden")
            await bob.close()
        asyncio.run(asyncio.wait_for(scenario(), 30))


if __name__ == "__main__":
    unittest.main()
