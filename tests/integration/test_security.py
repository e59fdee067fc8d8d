"""Issue #5 at the edge: TLS, JWT, throttling, limits, slow readers, and
abuse that must not hurt a well-behaved client (docs/security.md)."""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import unittest
import sys
import urllib.request

import websockets

from harness import Stack, StackTest, connect, recv_text, wait_until

SECRET = b"s" * 40


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret=SECRET, alg="HS256"):
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    if alg == "none":
        return f"{head}.{body}."
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def upgrade_status(url, headers=None, subprotocols=None):
    """The HTTP status an upgrade gets (101 when accepted), read off the
    status line: a refused upgrade may be answered in HTTP/1.0."""
    host_port, _, path = url[len("ws://"):].partition("/")
    host, _, port = host_port.partition(":")
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET /{path} HTTP/1.1", f"Host: {host_port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        resp = b""
        while b"\r\n" not in resp:
            chunk = s.recv(4096)
            if not chunk:
                return None
            resp += chunk
    return int(resp.split(b" ")[1])


class Tls(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"dw-tls-{os.getpid()}")
        os.makedirs(self.dir, exist_ok=True)
        self.cert, self.key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", self.key, "-out", self.cert], check=True, capture_output=True)
        # Registered first, so the certificate goes even if the stack fails.
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.stack = Stack(edges=1, env={"DW_TLS_CERT": self.cert, "DW_TLS_KEY": self.key,
                                         "DW_REQUIRE_TLS": "1"}).start()
        self.addCleanup(self.stack.cleanup)

    def test_wss_works_and_plain_upgrade_is_refused(self):
        port = self.stack.edges[0].port
        ctx = ssl.create_default_context(cafile=self.cert)

        async def go():
            ws = await websockets.connect(f"wss://127.0.0.1:{port}/", ssl=ctx)
            await asyncio.to_thread(self.stack.wait_conn_count, 1)
            await ws.send('{"action":"sendmessage","data":"secret"}')
            self.assertEqual(await recv_text(ws), "secret")
            await ws.close()
        asyncio.run(go())
        self.assertEqual(upgrade_status(f"ws://127.0.0.1:{port}/"), 426)
        # Probes stay plain.
        self.assertEqual(self.stack.http_status(port, "/healthz"), 200)


class Jwt(StackTest):
    ENV = {"DW_AUTH": "jwt"}

    def setUp(self):
        fd, self.secret_file = tempfile_secret()
        self.ENV = dict(self.ENV, DW_JWT_SECRET_FILE=self.secret_file)
        super().setUp()
        self.addCleanup(os.unlink, self.secret_file)

    def test_tokens(self):
        url = self.stack.edges[0].url
        now = int(time.time())
        good = jwt({"sub": "user-42", "exp": now + 600})
        # Accepted three ways; the user id is the token's sub.
        self.assertEqual(upgrade_status(url + "?token=" + good), 101)
        self.assertEqual(upgrade_status(url, headers={"Authorization": "Bearer " + good}), 101)

        async def v1_user():
            # (A token as a second Sec-WebSocket-Protocol entry works only
            # while the whole list fits lws 4.1's 128-byte buffer, which a
            # real JWT does not: docs/security.md.)
            ws = await connect(url + "?token=" + good, subprotocols=["dynamowave.v1"])
            self.assertEqual(ws.subprotocol, "dynamowave.v1")
            hello = json.loads(await recv_text(ws))
            await asyncio.to_thread(self.stack.wait_conn_count, 1)
            users = {c["userId"] for c in self.stack.conns()}
            await ws.close()
            return hello["user"], users
        user, users = asyncio.run(v1_user())
        self.assertEqual(user, "user-42")
        self.assertEqual(users, {"user-42"})

        bad = {
            "none": "",
            "expired": jwt({"sub": "u", "exp": now - 3600}),
            "not yet valid": jwt({"sub": "u", "exp": now + 600, "nbf": now + 3600}),
            "wrong signature": jwt({"sub": "u", "exp": now + 600}, secret=b"x" * 40),
            "alg none": jwt({"sub": "u", "exp": now + 600}, alg="none"),
            "malformed": "abc.def",
        }
        for what, token in bad.items():
            with self.subTest(what):
                self.assertEqual(upgrade_status(url + ("?token=" + token if token else "")), 401)


def tempfile_secret():
    import tempfile
    fd, path = tempfile.mkstemp(prefix="dw-jwt-")
    os.write(fd, SECRET)
    os.close(fd)
    return fd, path


class Throttling(StackTest):
    ENV = {"DW_MSG_RATE": "1", "DW_MSG_BURST": "20", "DW_IP_MAX_CONNS": "3"}

    def test_burst_gets_exactly_the_bucket(self):
        st = self.stack

        async def go():
            ws = await connect(st.edges[0].url)
            await asyncio.to_thread(st.wait_conn_count, 1)
            for i in range(100):
                await ws.send('{"action":"sendmessage","data":"m%d"}' % i)
            got, limited = [], 0
            while len(got) + limited < 100:
                m = await recv_text(ws)
                if m.startswith("{"):
                    body = json.loads(m)
                    self.assertEqual(body["message"], "Too Many Requests")
                    self.assertIn("connectionId", body)
                    self.assertIn("requestId", body)
                    limited += 1
                else:
                    got.append(m)
            self.assertEqual(len(got), 20)
            self.assertEqual(limited, 80)
            self.assertEqual(got, ["m%d" % i for i in range(20)])
            await ws.close()
        self.run_async(go())

    def test_per_ip_connection_cap(self):
        url = self.stack.edges[0].url

        async def go():
            held = [await connect(url) for _ in range(3)]
            self.assertEqual(await asyncio.to_thread(upgrade_status, url), 429)
            await held[0].close()
            # A slot is free again once one closes.
            await asyncio.sleep(0)  # let the close go out
            ws = await wait_async(lambda: connect(url))  # noqa: the cap counts closes
            for w in held[1:] + [ws]:
                await w.close()
        self.run_async(go())


async def wait_async(make, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await make()
        except websockets.exceptions.InvalidStatusCode:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


class EdgeConnectRate(StackTest):
    ENV = {"DW_EDGE_CONN_RATE": "1", "DW_EDGE_CONN_BURST": "2"}

    def test_edge_wide_connect_rate(self):
        url = self.stack.edges[0].url
        codes = [upgrade_status(url) for _ in range(4)]
        self.assertEqual(codes[:2], [101, 101])
        self.assertIn(429, codes[2:])


def raw_ws(port, timeout=5, rcvbuf=None):
    """A WebSocket handshake on a raw socket (for clients that misbehave)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    resp = b""
    while b"\r\n\r\n" not in resp:
        resp += s.recv(1)
    assert resp.startswith(b"HTTP/1.1 101"), resp
    return s


def frame(payload, opcode=1, fin=True):
    """A masked client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_code(s):
    """Read until the server's close frame; its code."""
    buf = b""
    s.settimeout(10)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk
        while len(buf) >= 2:
            n = buf[1] & 0x7f
            off = 2
            if n == 126:
                n, off = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, off = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < off + n:
                break
            if buf[0] & 0x0f == 8:
                return int.from_bytes(buf[off:off + 2], "big")
            buf = buf[off + n:]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                if line.split(" ")[0] == name or name.endswith("}"):
                    return float(line.split()[-1])
    return 0.0


class Limits(StackTest):
    ENV = {"DW_MSG_RATE": "0", "DW_EDGE_MSG_RATE": "0", "DW_IP_MAX_CONNS": "0",
           "DW_IP_CONN_RATE": "0", "DW_EDGE_CONN_RATE": "0", "DW_MAX_OUTBOUND": "1048576"}

    def test_bad_frames_get_their_close_codes(self):
        port = self.stack.edges[0].port
        cases = [
            (frame(b"x" * 40000), 1009),             # one frame over 32 KB
            (frame(b"\xff\xfe not utf-8"), 1007),    # invalid UTF-8 in a text frame
            (frame(b"\x01\x02", opcode=2), 1003),    # binary frame
        ]
        for data, code in cases:
            with self.subTest(code=code):
                s = raw_ws(port)
                s.sendall(data)
                self.assertEqual(close_code(s), code)
                s.close()
        # A message over 128 KB in 32 KB fragments: 1009 too.
        s = raw_ws(port)
        chunk = b"y" * 30000
        s.sendall(frame(chunk, fin=False) + b"".join(frame(chunk, opcode=0, fin=False) for _ in range(4)) +
                  frame(chunk, opcode=0))
        self.assertEqual(close_code(s), 1009)
        s.close()
        self.assertTrue(self.stack.edges[0].alive())

    def test_slow_reader_is_closed_and_memory_stays_bounded(self):
        st = self.stack
        edge = st.edges[0]
        slow = raw_ws(edge.port, rcvbuf=4096)  # never reads
        wait_until(lambda: len(st.conn_ids()) == 1, 20, "slow reader registered")
        rss_before = rss_kb(edge.pid)

        async def flood():
            # A v1 sender in the lobby that does not get its own messages.
            ws = await connect(edge.url, subprotocols=["dynamowave.v1"])
            await recv_text(ws)  # hello
            await ws.send('{"action":"join","room":"lobby"}')
            while json.loads(await recv_text(ws))["type"] != "joined":
                pass
            payload = "z" * 20000
            for i in range(300):  # 6 MB towards a reader capped at 1 MB
                await ws.send(json.dumps({"action": "sendmessage", "room": "lobby", "data": payload,
                                          "exclude_self": True}))
            acks = 0
            while acks < 300:
                acks += json.loads(await recv_text(ws, 30))["type"] == "ack"
            await ws.close()
        self.run_async(flood())
        wait_until(lambda: metric(edge.port, 'dw_edge_closed_total{reason="slow_reader"}') >= 1, 20,
                   "the slow reader to be closed")
        growth = rss_kb(edge.pid) - rss_before
        # Under a sanitizer RSS says nothing (shadow memory, quarantine).
        if not os.environ.get("DW_SANITIZE"):
            self.assertLess(growth, 1024 + 8 * 1024, f"edge RSS grew by {growth} KB")
        slow.close()


FLOODER = r"""
import asyncio, sys, websockets
async def main(port):
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None)
    async def drain():
        async for _ in ws:
            pass
    d = asyncio.create_task(drain())
    try:
        while True:
            await ws.send('{"action":"sendmessage","data":"flood"}')
            await asyncio.sleep(0)
    except websockets.exceptions.ConnectionClosed:
        print(f"closed {ws.close_code}", flush=True)
        await asyncio.sleep(3600)
asyncio.run(main(int(sys.argv[1])))
"""


class AbuseDoesNotHurtOthers(StackTest):
    ENV = {"DW_IP_MAX_CONNS": "0", "DW_IP_CONN_RATE": "0", "DW_EDGE_CONN_RATE": "0",
           "DW_MSG_RATE": "50", "DW_MSG_BURST": "50", "DW_HANDSHAKE_TIMEOUT_S": "30"}

    async def latencies(self, ws, n=100):
        out = []
        for i in range(n):
            t = time.monotonic()
            await ws.send('{"action":"sendmessage","data":"good-%d"}' % i)
            while True:
                m = await recv_text(ws, 10)
                if m == "good-%d" % i:
                    break
            out.append(time.monotonic() - t)
            await asyncio.sleep(0.02)
        out.sort()
        return out[int(len(out) * 0.99) - 1]

    def test_good_client_keeps_its_latency(self):
        st = self.stack
        port = st.edges[0].port

        async def go():
            good = await connect(st.edges[0].url)
            await asyncio.to_thread(st.wait_conn_count, 1)
            base = await self.latencies(good)
            # 1,000 half-open connections (slowloris), a flooder, oversize,
            # invalid UTF-8 and binary frames, all while good measures again.
            half_open = []
            for _ in range(1000):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
                half_open.append(s)
            # The flooder runs in its own process so that it competes with
            # the edge for the machine, not with the good client's own loop.
            flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(port)],
                                       stdout=subprocess.PIPE, text=True)

            def junk():
                for data in (frame(b"x" * 40000), frame(b"\xff\xfe"), frame(b"\x01", opcode=2)):
                    s = raw_ws(port)
                    s.sendall(data)
                    close_code(s)
                    s.close()
            await asyncio.to_thread(junk)
            under = await self.latencies(good)
            # The flooder, warned and paused again and again, is closed.
            line = await asyncio.wait_for(asyncio.to_thread(flooder.stdout.readline), 60)
            flooder.terminate()
            out = line + flooder.communicate(timeout=30)[0]
            for s in half_open:
                s.close()
            await good.close()
            return base, under, out.strip()
        base, under, flood = self.run_async(go(), timeout=300)
        print(f"good client p99: {base * 1000:.1f} ms alone, {under * 1000:.1f} ms under abuse; "
              f"flooder: {flood}")
        # The flooder was closed: for its strikes, or as a slow reader when it
        # reads its "Too Many Requests" replies slower than it floods (1008
        # when it reads the close frame in time, 1006 when it does not); the
        # edge's counters say which.
        self.assertTrue(flood.startswith("closed"), flood)
        port = self.stack.edges[0].port
        closed = (metric(port, 'dw_edge_closed_total{reason="rate_limit"}') +
                  metric(port, 'dw_edge_closed_total{reason="slow_reader"}'))
        self.assertGreaterEqual(closed, 1)
        # Generous enough to be deterministic on a shared 2-core machine.
        self.assertLess(under, max(2 * base, base + 0.05))


if __name__ == "__main__":
    unittest.main()
