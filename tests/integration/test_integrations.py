"""Issue 17, integrations (part A): lifecycle events in DW_EVENTS, publishing
to a room from a backend (HTTP and NATS), and a real worker process (the C
moderation bot from examples/workers/c) against a real stack.

DW_EVENTS is read the way any NATS client reads it, over the NATS text
protocol: the JetStream API's stream info and message get."""
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

from harness import BIN, Stack, StackTest, connect, no_message, recv_text, wait_until
from test_nats_security import LOCAL_CONF, credentials
from test_security import upgrade_status
from test_up_sh import UpStack

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

V1 = ["dynamowave.v1"]


class Nats:
    """Just enough of the NATS text protocol for request/reply (JetStream's
    API included) with headers: each request gets its own reply subject
    under the connection's inbox."""

    def __init__(self, port, user=None, password=None, inbox="_INBOX.t"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.inbox = f"{inbox}.{os.getpid()}"
        self.n = 0
        assert self._line().startswith("INFO ")
        c = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
             "protocol": 1, "name": "test"}
        if user:
            c.update(user=user, **{"pass": password})
        self.sock.sendall(f"CONNECT {json.dumps(c)}\r\nSUB {self.inbox}.> 1\r\nPING\r\n".encode())
        while (line := self._line()) != "PONG":
            if line.startswith("-ERR"):
                raise AssertionError(line)

    def close(self):
        self.sock.close()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("nats closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def _payload(self, n):
        while len(self.buf) < n + 2:
            self.buf += self.sock.recv(65536)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def request(self, subject, payload=b"", headers=None, timeout=5.0):
        """(headers, data) of the reply; headers has "Status" for a status
        reply (503: no responders). Raises TimeoutError."""
        if isinstance(payload, str):
            payload = payload.encode()
        self.n += 1
        reply = f"{self.inbox}.{self.n}"
        if headers:
            h = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                 + "\r\n").encode()
            self.sock.sendall(f"HPUB {subject} {reply} {len(h)} {len(h) + len(payload)}\r\n"
                              .encode() + h + payload + b"\r\n")
        else:
            self.sock.sendall(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload
                              + b"\r\n")
        self.sock.settimeout(timeout)
        try:
            while True:
                line = self._line()
                if line == "PING":
                    self.sock.sendall(b"PONG\r\n")
                    continue
                if line.startswith("-ERR"):
                    raise PermissionError(line)
                parts = line.split()
                if parts[0] == "MSG":
                    data = self._payload(int(parts[-1]))
                    hdrs = {}
                elif parts[0] == "HMSG":
                    raw = self._payload(int(parts[-1]))
                    hl = int(parts[-2])
                    hdrs = parse_headers(raw[:hl])
                    data = raw[hl:]
                else:
                    continue
                if parts[1] == reply:
                    return hdrs, data
        except socket.timeout:
            raise TimeoutError(f"no reply to {subject}")


def parse_headers(raw):
    lines = raw.decode().split("\r\n")
    hdrs = {}
    first = lines[0].split(None, 2)
    if len(first) > 1:
        hdrs["Status"] = first[1]
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip()] = v.strip()
    return hdrs


def stream_messages(nc, stream):
    """Every message a stream holds now: [(seq, subject, headers, data)]."""
    _, info = nc.request(f"$JS.API.STREAM.INFO.{stream}")
    info = json.loads(info)
    if "error" in info:
        return []
    state = info["state"]
    out = []
    for seq in range(state["first_seq"], state["last_seq"] + 1):
        _, r = nc.request(f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"seq": seq}))
        m = json.loads(r).get("message")
        if not m:
            continue
        hdrs = parse_headers(base64.b64decode(m["hdrs"])) if m.get("hdrs") else {}
        out.append((m["seq"], m["subject"], hdrs, base64.b64decode(m.get("data", ""))))
    return out


def lifecycle(nc):
    """DW_EVENTS as (subject, event) in stream order."""
    return [(subj, json.loads(data)) for _, subj, _, data in stream_messages(nc, "DW_EVENTS")]


def of_conn(events, conn):
    return [(e["type"], e["room"], e["reason"]) for _, e in events if e["connectionId"] == conn]


class LifecycleEvents(StackTest):
    """DW_EVENTS: every connect is followed by exactly one disconnect, also
    when the connection's edge is killed with kill -9; exactly once across
    a second registry replica and a rebuild of the table from DW_CONN."""
    # The dispatcher declares an edge down after 1.5 s of heartbeat silence.
    ENV = {"DW_EDGE_DEAD_MS": "1500", "DW_HEARTBEAT_MS": "300"}

    def nats(self):
        nc = Nats(self.stack.nats_port)
        self.addCleanup(nc.close)
        return nc

    def test_disconnect_after_kill9_of_the_edge(self):
        st = self.stack
        nc = self.nats()
        doomed = st.start_edge()
        # A second registry replica: both emit, the stream keeps one copy.
        r0 = st.registry
        r1 = st.start_registry(REPLICA_ID="r1")
        st.registry = r0
        wait = lambda *a: asyncio.to_thread(wait_until, *a)
        count = lambda typ: len([1 for _, e in lifecycle(nc) if e["type"] == typ])
        connects = lambda: [e for _, e in lifecycle(nc) if e["type"] == "connect"]

        async def scenario():
            plain = await connect(doomed.url)
            v = await connect(doomed.url + "?name=ev-bob", subprotocols=V1)
            v_id = json.loads(await recv_text(v))["connectionId"]
            await v.send(json.dumps({"action": "join", "room": "ev-room"}))
            while json.loads(await recv_text(v))["type"] != "joined":
                pass
            # A client that leaves cleanly, on the edge that stays.
            calm = await connect(st.edges[0].url)
            await wait(lambda: len(connects()) == 3, 20, "three connects in DW_EVENTS")

            doomed.kill9()
            await wait(lambda: count("disconnect") == 2, 20,
                       "the killed edge's connections to be disconnected")
            await calm.close()
            await wait(lambda: count("disconnect") == 3, 20, "the calm client's disconnect")
            for ws in (plain, v):
                try:
                    await ws.close()
                except Exception:
                    pass
            return v_id

        v_id = self.run_async(scenario())
        doomed_id = doomed_edge_id(doomed)
        on_doomed = {e["connectionId"] for e in connects() if e["edge"] == doomed_id}
        self.assertIn(v_id, on_doomed)
        self.assertEqual(len(on_doomed), 2)
        plain_id = (on_doomed - {v_id}).pop()
        calm_id = next(e["connectionId"] for e in connects() if e["edge"] != doomed_id)

        events = lifecycle(nc)
        self.assertEqual(of_conn(events, v_id), [
            ("connect", None, None), ("join", "ev-room", None),
            ("leave", "ev-room", "disconnect"), ("disconnect", None, "edge_down:heartbeat_timeout")])
        self.assertEqual(of_conn(events, plain_id), [
            ("connect", None, None), ("join", "lobby", None),
            ("leave", "lobby", "disconnect"), ("disconnect", None, "edge_down:heartbeat_timeout")])
        self.assertEqual(of_conn(events, calm_id), [
            ("connect", None, None), ("join", "lobby", None),
            ("leave", "lobby", "disconnect"), ("disconnect", None, "closed")])
        for subj, e in events:
            self.assertEqual(subj, "dw.events." + e["type"])
            self.assertEqual(set(e), {"type", "connectionId", "user", "room", "edge", "ts",
                                      "reason"})
            self.assertIsInstance(e["ts"], int)
        v_events = [e for _, e in events if e["connectionId"] == v_id]
        self.assertEqual({e["user"] for e in v_events}, {"ev-bob"})
        self.assertEqual({e["edge"] for e in v_events}, {doomed_id})

        # Replays. Both replicas are killed (-9); r0's table is wiped, so it
        # rebuilds from DW_CONN's start and derives every event again; r1
        # comes back later and catches up on what happened meanwhile. Their
        # events are older than DW_EVENTS's duplicate window by then (shrunk
        # to 1 s here, and checked: the stream no longer knows the first
        # event's id), so the stream's own deduplication cannot be what
        # keeps them from being stored twice.
        before = stream_messages(nc, "DW_EVENTS")
        first_id = before[0][2]["Nats-Msg-Id"]
        _, info = nc.request("$JS.API.STREAM.INFO.DW_EVENTS")
        cfg = json.loads(info)["config"]
        cfg["duplicate_window"] = 1_000_000_000
        _, r = nc.request("$JS.API.STREAM.UPDATE.DW_EVENTS", json.dumps(cfg))
        self.assertNotIn("error", json.loads(r), r)

        def forgotten():
            # Expected last sequence 0 makes the probe a no-op either way:
            # refused as a duplicate while the id is known, else as out of
            # sequence (never stored).
            _, r = nc.request("dw.events.connect", b"{}", {"Nats-Msg-Id": first_id,
                                                           "Nats-Expected-Last-Sequence": "0"})
            return json.loads(r).get("error", {}).get("err_code") == 10071
        wait_until(forgotten, 30, "DW_EVENTS to forget the first event's id", interval=0.2)
        self.assertEqual(len(stream_messages(nc, "DW_EVENTS")), len(before))
        r1.kill9()
        r0.kill9()
        shutil.rmtree(os.path.join(st.dir, "data", "registry", "r0"))
        st.restart(r0)

        async def one_more():
            n = len(stream_messages(nc, "DW_EVENTS"))
            ws = await connect(st.edges[0].url)
            await wait(lambda: len(stream_messages(nc, "DW_EVENTS")) == n + 2, 20,
                       "the new connection's connect and join")
            await ws.close()
            await wait(lambda: len(stream_messages(nc, "DW_EVENTS")) == n + 4, 20,
                       "its leave and disconnect")
        self.run_async(one_more())
        # r0 alone published them, after its rebuild.
        self.assertEqual(metric(r0, 'dw_registry_events_total{outcome="stored"}'), 4)
        # r1 comes back and catches up on those four; then both publish a
        # last connection's events. r1 has settled everything older once its
        # position reaches the last event (its outbox goes in order).
        st.restart(r1)
        self.run_async(one_more())
        last = stream_messages(nc, "DW_EVENTS")[-1][2]["Nats-Msg-Id"]
        last_seq = int(last.split(".")[1])
        wait_until(lambda: metric(r1, "dw_registry_events_position") == last_seq, 20,
                   "r1 to have settled its outbox")
        after = stream_messages(nc, "DW_EVENTS")
        self.assertEqual([m[:3] for m in after[:len(before)]], [m[:3] for m in before])
        ids = [m[2]["Nats-Msg-Id"] for m in after]
        self.assertEqual(len(ids), len(set(ids)), "an event id twice in DW_EVENTS")
        self.assertEqual([json.loads(m[3])["type"] for m in after[len(before):]],
                         ["connect", "join", "leave", "disconnect"] * 2)


TOKEN = "room-publish-token-for-tests"
HS_SECRET = b"an-hs256-secret-of-at-least-32-bytes!!"
# Files the stacks read, made in setUpModule (nothing is written on import).
FILES = {}


def setUpModule():
    d = FILES["dir"] = tempfile.mkdtemp(prefix="dw-it-integrations-")
    for name, content in (("admin-token", TOKEN.encode() + b"\n"), ("hs256", HS_SECRET)):
        FILES[name] = os.path.join(d, name)
        with open(FILES[name], "wb") as f:
            f.write(content)
    FILES["jwks"] = os.path.join(d, "jwks.json")


def tearDownModule():
    shutil.rmtree(FILES.pop("dir", ""), ignore_errors=True)


async def next_of(ws, typ, room=None, timeout=10):
    """The next v1 frame of this type (and room), skipping others."""
    while True:
        f = json.loads(await recv_text(ws, timeout))
        if f.get("type") == typ and (room is None or f.get("room") == room):
            return f


class RoomPublish(StackTest):
    """POST /@rooms/{room}/messages and dw.api.rooms.publish: stored in
    DW_MSG, delivered like a chat message to plain and v1 members."""
    @classmethod
    def setUpClass(cls):
        cls.ENV = {"DW_ADMIN_TOKEN_FILE": FILES["admin-token"]}

    def http(self, method, path, body=b"", token=TOKEN, headers=None):
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

    def test_http_nats_and_dwctl(self):
        st = self.stack
        nc = Nats(st.nats_port)
        self.addCleanup(nc.close)
        ahttp = lambda *a, **kw: asyncio.to_thread(self.http, *a, **kw)

        def publish(req):
            _, r = nc.request("dw.api.rooms.publish", json.dumps(req))
            return json.loads(r)

        async def scenario():
            plain = await connect(st.edges[0].url)
            v = await connect(st.edges[0].url + "?name=rp-alice", subprotocols=V1)
            await recv_text(v)  # hello
            for room in ("lobby", "general"):
                await v.send(json.dumps({"action": "join", "room": room}))
                await next_of(v, "joined", room)
            await asyncio.to_thread(st.wait_conn_count, 2)

            # HTTP, plain text: plain clients get the text as it is.
            code, body, _ = await ahttp("POST", "/@rooms/lobby/messages",
                                        "hello from the backend".encode())
            self.assertEqual(code, 200, body)
            ans = json.loads(body)
            self.assertEqual(ans["room"], "lobby")
            self.assertIsInstance(ans["seq"], int)
            self.assertEqual(await recv_text(plain), "hello from the backend")
            m = await next_of(v, "message", "lobby")
            self.assertEqual((m["seq"], m["from"], m["data"]),
                             (ans["seq"], "server", "hello from the backend"))

            # HTTP, a JSON value from a named sender.
            code, body, _ = await ahttp("POST", "/@rooms/general/messages",
                                        b'{ "kind": "notice", "n": [1, 2] }',
                                        headers={"Content-Type": "application/json",
                                                 "X-DW-From": "moderator"})
            self.assertEqual(code, 200, body)
            m = await next_of(v, "message", "general")
            self.assertEqual((m["from"], m["data"], m["seq"]),
                             ("moderator", {"kind": "notice", "n": [1, 2]}, json.loads(body)["seq"]))

            # NATS, with an idempotency key: a retry is stored once.
            first = await asyncio.to_thread(publish, {"room": "general", "data": "over nats",
                                                      "from": "bot", "idempotencyKey": "k-1"})
            again = await asyncio.to_thread(publish, {"room": "general", "data": "over nats",
                                                      "from": "bot", "idempotencyKey": "k-1"})
            self.assertEqual(first, {"room": "general", "seq": first["seq"]})
            self.assertEqual(again, {"room": "general", "seq": first["seq"], "duplicate": True})
            m = await next_of(v, "message", "general")
            self.assertEqual((m["from"], m["data"], m["id"]), ("bot", "over nats", "k-1"))

            # dwctl room post.
            r = await asyncio.to_thread(st.dwctl, "room", "post", "general", "--data",
                                        "from dwctl", "--from", "ops", "--json")
            seq = json.loads(r.stdout)["seq"]
            m = await next_of(v, "message", "general")
            self.assertEqual((m["seq"], m["from"], m["data"]), (seq, "ops", "from dwctl"))
            # Nothing else arrived: the retry was not delivered twice, plain
            # clients hear only lobby.
            self.assertIsNone(await no_message(v))
            self.assertIsNone(await no_message(plain))

            # History reads them from DW_MSG like any chat message.
            await v.send(json.dumps({"action": "history", "room": "general"}))
            h = await next_of(v, "history", "general")
            self.assertEqual([x["data"] for x in h["messages"]],
                             [{"kind": "notice", "n": [1, 2]}, "over nats", "from dwctl"])
            await v.close()
            await plain.close()
        self.run_async(scenario())

    def test_refusals(self):
        big = b"x" * (131072 + 1)
        cases = [
            ("POST", "/@rooms/general/messages", b"x", None, {}, 401),
            ("POST", "/@rooms/general/messages", b"x", "wrong", {}, 403),
            ("POST", "/@rooms/bad..room/messages", b"x", TOKEN, {}, 400),
            ("POST", "/@rooms/general/messages", big, TOKEN, {}, 413),
            ("POST", "/@rooms/general/messages", b"caf\xff", TOKEN, {}, 400),
            ("POST", "/@rooms/general/messages", b"{", TOKEN, {"Content-Type": "application/json"},
             400),
            ("POST", "/@rooms/general/messages", b"x", TOKEN, {"X-DW-From": "a\tb"}, 400),
            ("POST", "/@rooms/general/messages", b"x", TOKEN, {"Idempotency-Key": "no spaces"},
             400),
            ("GET", "/@rooms/general/messages", None, TOKEN, {}, 405),
            ("POST", "/@rooms/general", b"x", TOKEN, {}, 404),
        ]
        for method, path, body, token, headers, want in cases:
            with self.subTest(method=method, path=path, want=want, headers=headers):
                code, text, hdrs = self.http(method, path, body, token, headers)
                self.assertEqual(code, want, text)
                if want == 405:
                    self.assertEqual(hdrs["Allow"], "POST")
                if want >= 400 and want != 405:
                    self.assertIn("message", json.loads(text))
        # The message limit counts the message: exactly 128 KB passes.
        code, text, _ = self.http("POST", "/@rooms/general/messages", b"y" * 131072)
        self.assertEqual(code, 200, text)

        nc = Nats(self.stack.nats_port)
        self.addCleanup(nc.close)
        for req, want in [({"room": "a..b", "data": "x"}, 400), ({"room": "g"}, 400),
                          ({"room": "g", "data": "x" * 131073}, 413),
                          ({"room": "g", "data": "x", "idempotencyKey": ""}, 400)]:
            with self.subTest(req=str(req)[:60]):
                _, r = nc.request("dw.api.rooms.publish", json.dumps(req))
                ans = json.loads(r)
                self.assertEqual(ans["status"], want, ans)
                self.assertIn("error", ans)
        _, r = nc.request("dw.api.rooms.publish", b"not json")
        self.assertEqual(json.loads(r)["status"], 400)
        r = self.stack.dwctl("room", "post", "a..b", "--data", "x", check=False)
        self.assertEqual(r.returncode, 2, r.stderr)


try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
except ImportError:  # python3-cryptography (scripts/test-packages.txt)
    ec = None


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def new_key(kind):
    if kind == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key, kid):
    pub = key.public_key().public_numbers()
    if isinstance(key, rsa.RSAPrivateKey):
        n = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
        return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64u(n),
                "e": b64u(pub.e.to_bytes(3, "big"))}
    return {"kty": "EC", "crv": "P-256", "kid": kid, "x": b64u(pub.x.to_bytes(32, "big")),
            "y": b64u(pub.y.to_bytes(32, "big"))}


def signed(key, kid, claims):
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    si = (b64u(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode()) + "."
          + b64u(json.dumps(claims).encode()))
    if alg == "RS256":
        sig = key.sign(si.encode(), padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = utils.decode_dss_signature(key.sign(si.encode(), ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return si + "." + b64u(sig)


def write_jwks(path, keys):
    with open(path + ".tmp", "w") as f:
        json.dump({"keys": keys}, f)
    os.replace(path + ".tmp", path)


def hs256(claims):
    import hashlib
    import hmac
    si = (b64u(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "."
          + b64u(json.dumps(claims).encode()))
    return si + "." + b64u(hmac.new(HS_SECRET, si.encode(), hashlib.sha256).digest())


@unittest.skipIf(ec is None, "python3-cryptography is not installed")
class JwtPublicKeys(StackTest):
    """DW_AUTH=jwt with a JWKS file (RS256 and ES256) beside an HS256 secret;
    the file is reread on SIGHUP."""
    @classmethod
    def setUpClass(cls):
        cls.ENV = {"DW_AUTH": "jwt", "DW_JWT_JWKS_FILE": FILES["jwks"],
                   "DW_JWT_SECRET_FILE": FILES["hs256"]}

    def setUp(self):
        self.rsa, self.ec = new_key("RS256"), new_key("ES256")
        write_jwks(FILES["jwks"], [public_jwk(self.rsa, "r1"), public_jwk(self.ec, "e1")])
        super().setUp()

    def user_of(self, token):
        """The v1 hello's user for a token, or the HTTP status that refused it."""
        url = self.stack.edges[0].url + "?token=" + token
        # (A refused upgrade may be answered in HTTP/1.0, which the
        # websockets client does not read: the status line tells.)
        status = upgrade_status(url, subprotocols=V1)
        if status != 101:
            return status

        async def go():
            ws = await connect(url, subprotocols=V1)
            hello = json.loads(await recv_text(ws))
            await ws.close()
            return hello["user"]
        return self.run_async(go())

    def test_rs256_es256_beside_hs256(self):
        now = int(time.time())
        good = {"exp": now + 600}
        self.assertEqual(self.user_of(signed(self.rsa, "r1", {"sub": "rsa-user", **good})),
                         "rsa-user")
        self.assertEqual(self.user_of(signed(self.ec, "e1", {"sub": "ec-user", **good})),
                         "ec-user")
        self.assertEqual(self.user_of(hs256({"sub": "hs-user", **good})), "hs-user")
        stranger_rsa, stranger_ec = new_key("RS256"), new_key("ES256")
        refused = {
            "RS256 expired": signed(self.rsa, "r1", {"sub": "u", "exp": now - 3600}),
            "ES256 expired": signed(self.ec, "e1", {"sub": "u", "exp": now - 3600}),
            "RS256 wrong key": signed(stranger_rsa, "r1", {"sub": "u", **good}),
            "ES256 wrong key": signed(stranger_ec, "e1", {"sub": "u", **good}),
            "unknown kid": signed(self.rsa, "r9", {"sub": "u", **good}),
        }
        for what, token in refused.items():
            with self.subTest(what):
                self.assertEqual(self.user_of(token), 401)

        # Rotation: a new key set, then SIGHUP; the old key stops working.
        new_ec = new_key("ES256")
        write_jwks(FILES["jwks"], [public_jwk(new_ec, "e2")])
        edge = self.stack.edges[0]
        edge.signal(signal.SIGHUP)
        wait_until(lambda: log_has(edge, "JWKS reloaded"), 10, "the edge to reload its JWKS")
        self.assertEqual(self.user_of(signed(new_ec, "e2", {"sub": "rotated", **good})), "rotated")
        self.assertEqual(self.user_of(signed(self.ec, "e1", {"sub": "u", **good})), 401)
        # A broken file keeps the keys in force (and says so).
        with open(FILES["jwks"], "w") as f:
            f.write("{not json")
        edge.signal(signal.SIGHUP)
        wait_until(lambda: log_has(edge, "JWKS not reloaded"), 10,
                   "the edge to refuse the broken JWKS")
        self.assertTrue(edge.alive())
        self.assertEqual(self.user_of(signed(new_ec, "e2", {"sub": "still", **good})), "still")


class ModerationBot(unittest.TestCase):
    """The C example (examples/workers/c, dw-moderator) as a real worker
    process logged in as the NATS user worker, against the whole stack
    under its least-privilege users (deploy/nats/local.conf): it greets
    joiners; a join while it is down (kill -9) is greeted once it is back;
    nats-server refused nothing."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dw-bot-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.nats_env, self.service_env = credentials(self.dir)
        self.stack = Stack(edges=1, nats_conf=LOCAL_CONF, nats_env=self.nats_env,
                           service_env=self.service_env)
        self.addCleanup(self.stack.cleanup)
        self.stack.start()
        self.addCleanup(self._logs_on_failure)

    def _logs_on_failure(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and not outcome.success:
            print(self.stack.logs())

    def start_bot(self):
        env = dict(os.environ, DW_NATS_URL=self.stack.nats_url, **self.service_env["worker"])
        bot = self.stack._spawn("moderator", [os.path.join(BIN, "dw-moderator")], env)
        wait_until(lambda: log_has(bot, "reading DW_EVENTS") or not bot.alive(), 20,
                   "the bot to read DW_EVENTS")
        self.assertTrue(bot.alive(), bot.tail())
        return bot

    def test_greets_joiners_also_after_a_crash(self):
        st = self.stack
        bot = self.start_bot()
        url = st.edges[0].url

        async def join(name):
            ws = await connect(url + "?name=" + name, subprotocols=V1)
            await recv_text(ws)  # hello
            await ws.send(json.dumps({"action": "join", "room": "general"}))
            await next_of(ws, "joined", "general")
            return ws

        async def greeting(ws):
            while True:
                m = await next_of(ws, "message", "general", timeout=20)
                if m["from"] == "moderator":
                    return m["data"]

        async def scenario():
            alice = await join("alice")
            self.assertEqual(await greeting(alice), "Welcome to general, alice!")
            bot.kill9()
            bob = await join("bob")  # nobody reads DW_EVENTS now
            self.assertIsNone(await no_message(bob, 0.5))
            await asyncio.to_thread(bot.restart)
            self.assertEqual(await greeting(bob), "Welcome to general, bob!")
            self.assertEqual(await greeting(alice), "Welcome to general, bob!")
            # One greeting per join, in the room's history too.
            await alice.send(json.dumps({"action": "history", "room": "general"}))
            h = await next_of(alice, "history", "general")
            self.assertEqual([m["data"] for m in h["messages"] if m["from"] == "moderator"],
                             ["Welcome to general, alice!", "Welcome to general, bob!"])
            await alice.close()
            await bob.close()
        asyncio.run(asyncio.wait_for(scenario(), 90))
        with open(st.nats.log_path, errors="replace") as f:
            self.assertEqual([line for line in f if "Violation" in line], [])
        st.stop()
        self.assertEqual(st.sanitizer_reports(), [])


JS_DIR = os.path.join(ROOT, "examples", "workers", "js")


class ExamplesAgainstMakeUp(unittest.TestCase):
    """The examples as docs/integrations.md runs them: `make up`
    (scripts/up.sh, on free ports) makes the worker's password in
    $DW_DATA_DIR/secrets/nats_worker, and each bot starts with one command
    from its directory, using its defaults for the user and the password
    file (var/secrets/nats_worker of the checkout: here a var/ that is the
    stack's data directory). The JS bot runs when examples/workers/js has
    its node_modules (npm ci there: never at build or test time)."""

    def setUp(self):
        self.up = UpStack()
        self.addCleanup(self.up.cleanup)
        self.up.start()
        # A checkout whose var/ is this stack's data directory.
        self.checkout = os.path.join(self.up.dir, "checkout")
        os.makedirs(self.checkout)
        os.symlink(self.up.data, os.path.join(self.checkout, "var"))
        self.procs = []
        self.addCleanup(self._stop_bots)

    def _stop_bots(self):
        for p in self.procs:
            p.stop()

    def bot(self, name, argv, cwd, env_extra=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DW_")}
        env.update(DW_NATS_URL=self.up.nats_url, **(env_extra or {}))
        log = open(os.path.join(self.up.dir, f"{name}.log"), "ab")
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        log.close()
        proc = BotProc(name, p, os.path.join(self.up.dir, f"{name}.log"))
        self.procs.append(proc)
        wait_until(lambda: log_has(proc, "reading DW_EVENTS") or p.poll() is not None, 30,
                   f"{name} to read DW_EVENTS")
        self.assertIsNone(p.poll(), proc.tail())
        return proc

    def test_bots_with_their_defaults(self):
        secret = os.path.join(self.up.data, "secrets", "nats_worker")
        st = os.stat(secret)
        self.assertEqual(st.st_mode & 0o777, 0o600)
        bots = [("c", [os.path.join(BIN, "dw-moderator")], self.checkout)]
        if os.path.isdir(os.path.join(JS_DIR, "node_modules")):
            # The JS bot's default password file is ../../../var/... of its
            # directory: run a copy of it inside the fake checkout.
            js = os.path.join(self.checkout, "examples", "workers", "js")
            shutil.copytree(JS_DIR, js, symlinks=True)
            bots.append(("js", ["node", "moderator.mjs"], js))
        else:
            print("note: examples/workers/js/node_modules missing (npm ci there): JS bot not run")
        for name, argv, cwd in bots:
            self.bot(name, argv, cwd)

        async def scenario():
            ws = await connect(self.up.url + "?name=carol", subprotocols=V1)
            await recv_text(ws)
            await ws.send(json.dumps({"action": "join", "room": "welcome"}))
            await next_of(ws, "joined", "welcome")
            m = await next_of(ws, "message", "welcome", timeout=20)
            self.assertEqual((m["from"], m["data"]), ("moderator", "Welcome to welcome, carol!"))
            # Both bots greet the same join with the same idempotency key
            # (the event's sequence): it is stored once.
            self.assertIsNone(await no_message(ws, 1.0))
            await ws.close()
        asyncio.run(asyncio.wait_for(scenario(), 60))
        for p in self.procs:
            wait_until(lambda: log_has(p, "greeted carol in welcome"), 20, f"{p.name} to greet")
        self._stop_bots()
        self.assertEqual(self.up.stop(), 0)
        self.assertEqual(self.up.sanitizer_reports(), [])
        for p in self.procs:
            with open(p.log_path, errors="replace") as f:
                self.assertEqual([ln for ln in f if any(m in ln for m in Stack.SANITIZER_MARKS)],
                                 [])


class BotProc:
    def __init__(self, name, p, log_path):
        self.name, self.p, self.log_path = name, p, log_path

    def tail(self, n=30):
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)


def metric(proc, name):
    """A service's metric (name with its labels, as /metrics prints it)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.status_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return None


def log_has(proc, text):
    with open(proc.log_path, errors="replace") as f:
        return text in f.read()


def doomed_edge_id(edge):
    """The edge id an edge process uses (from its log: the line it logs once
    it listens; its "starting" line names it instance=, as every service's)."""
    with open(edge.log_path, errors="replace") as f:
        for line in f:
            if 'msg="edge listening"' in line and " edge=" in line:
                return line.split(" edge=", 1)[1].split()[0]
    raise AssertionError("no edge id in the edge's log")


if __name__ == "__main__":
    unittest.main()
