"""Issue #5 on the bus: least-privilege NATS users (deploy/nats/auth.conf,
included by deploy/nats/local.conf) and TLS between the services and NATS
(docs/security.md).

The refusals are checked the way a compromised service would meet them:
a client speaking the NATS text protocol with the edge's credentials sends
PUB/SUB and reads nats-server's -ERR 'Permissions Violation ...' lines."""
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import unittest
import urllib.request

from harness import Stack, connect, recv_text, wait_until

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LOCAL_CONF = os.path.join(ROOT, "deploy", "nats", "local.conf")
USERS = ["edge", "registry", "dispatcher", "deadletter", "api", "dwctl"]
# User code's login (deploy/nats/auth.conf): no DynamoWave program uses it.
WORKER = "worker"
V1 = ["dynamowave.v1"]


def credentials(d):
    """nats-server's environment (passwords, store key) and each program's
    (its user and password file), as scripts/up.sh makes them."""
    nats_env = {"DW_JS_KEY": "k" + secrets.token_hex(32)}
    service_env = {}
    for u in USERS + [WORKER]:
        pw = "p" + secrets.token_hex(16)  # a letter first: nats-server reads 2e3... as a number
        nats_env["DW_NATS_PASS_" + u.upper()] = pw
        path = os.path.join(d, f"nats_{u}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, (pw + "\n").encode())
        os.close(fd)
        service_env[u] = {"DW_NATS_USER": u, "DW_NATS_PASSWORD_FILE": path}
    return nats_env, service_env


class RawNats:
    """A NATS client in the text protocol, for probing permissions: each
    operation is followed by PING, and what the server said up to its PONG
    is returned."""

    def __init__(self, port, user=None, password=None, login=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        first = self._line()
        assert first.startswith("INFO "), first
        self.info = json.loads(first[5:])
        if not login:
            return
        connect = {"verbose": False, "pedantic": False, "name": "probe", "lang": "python",
                   "version": "0", "protocol": 1}
        if user is not None:
            connect.update(user=user, **{"pass": password})
        self.connect_reply = self.op("CONNECT " + json.dumps(connect))

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return ""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def op(self, text):
        """Send one protocol line (and PING); the server's lines before PONG."""
        self.sock.sendall(text.encode() + b"\r\nPING\r\n")
        said = []
        while True:
            line = self._line()
            if line in ("PONG", ""):
                return said
            if line == "PING":
                self.sock.sendall(b"PONG\r\n")
                continue
            said.append(line)

    def pub(self, subject, reply="", payload=b""):
        head = f"PUB {subject} {reply} {len(payload)}" if reply else f"PUB {subject} {len(payload)}"
        return self.op(head + "\r\n" + payload.decode())

    def sub(self, subject, sid):
        return self.op(f"SUB {subject} {sid}")

    def close(self):
        self.sock.close()


def refused(said):
    return any(line.startswith("-ERR 'Permissions Violation") for line in said)


def http_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status, r.read()


class LeastPrivilege(unittest.TestCase):
    """The whole stack with one NATS user per service, under the config
    `make up` uses."""

    @classmethod
    def setUpClass(cls):
        cls.secrets_dir = tempfile.mkdtemp(prefix="dw-nsec-")
        cls.nats_env, cls.service_env = credentials(cls.secrets_dir)
        cls.stack = Stack(edges=1, nats_conf=LOCAL_CONF, nats_env=cls.nats_env,
                          service_env=cls.service_env)
        try:
            cls.stack.start()
        except BaseException:
            shutil.rmtree(cls.secrets_dir, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.stack.cleanup()
        shutil.rmtree(cls.secrets_dir, ignore_errors=True)

    def setUp(self):
        self.addCleanup(self._logs_on_failure)

    def _logs_on_failure(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and not outcome.success:
            print(self.stack.logs())

    def probe(self, user):
        c = RawNats(self.stack.nats_port, user, self.nats_env["DW_NATS_PASS_" + user.upper()])
        self.addCleanup(c.close)
        self.assertEqual(c.connect_reply, [], f"{user} could not log in")
        return c

    def violations(self):
        """Permission refusals nats-server logged for anything but the probes."""
        with open(self.stack.nats.log_path, errors="replace") as f:
            return [line for line in f if "Violation" in line and ":probe\"" not in line]

    def test_edge_credentials_cannot_reach_beyond_the_edge(self):
        c = self.probe("edge")
        # What the edge needs works with the same credentials...
        self.assertFalse(refused(c.pub("dw.edge.heartbeat")))
        self.assertFalse(refused(c.sub("dw.conn.*", 1)))
        self.assertFalse(refused(c.pub("$JS.API.STREAM.INFO.DW_MSG", "_INBOX.edge.probe")))
        # the connect authorizer (DW_AUTHORIZER under dw.authz.)
        self.assertFalse(refused(c.pub("dw.authz.connect", "_INBOX.edge.authz.probe")))
        # ...what it does not is refused by the server.
        self.assertTrue(refused(c.pub("dw.dlq.x")), "publish to dw.dlq.x")
        self.assertTrue(refused(c.sub("dw.msg.>", 2)), "raw subscription to dw.msg.>")
        self.assertTrue(refused(c.pub("$JS.API.STREAM.DELETE.DW_MSG", "_INBOX.edge.probe")),
                        "stream delete")
        self.assertTrue(refused(c.pub("$JS.API.STREAM.PURGE.DW_MSG", "_INBOX.edge.probe")))
        self.assertTrue(refused(c.pub("$JS.API.STREAM.UPDATE.DW_MSG", "_INBOX.edge.probe")))
        self.assertTrue(refused(c.pub("$JS.API.CONSUMER.DELETE.DW_MSG.dispatcher",
                                      "_INBOX.edge.probe")))
        # (dw.conn.edge_down is allowed: an edge announces its own stop.)
        self.assertTrue(refused(c.sub("_INBOX.>", 3)), "read other services' replies")
        self.assertTrue(refused(c.pub("_INBOX.dispatcher.x")), "forge a reply")
        self.assertTrue(refused(c.sub("dw.registry.room", 4)), "answer for the registry")
        self.assertTrue(refused(c.sub("dw.authz.connect", 5)), "answer for the authorizer")
        # The stream is still there: dwctl status checks DW_MSG and DW_CONN.
        self.stack.dwctl("status")

    def test_other_users_keep_to_their_part(self):
        cases = [
            ("dispatcher", "pub", "$JS.API.STREAM.DELETE.DW_MSG"),
            ("dispatcher", "pub", "$JS.API.STREAM.UPDATE.DW_DLQ"),
            ("dispatcher", "pub", "dw.msg.lobby"),
            ("api", "pub", "dw.conn.connect"),
            ("api", "sub", "dw.msg.>"),
            ("api", "sub", "dw.edge.x.deliver"),
            ("registry", "pub", "dw.edge.x.deliver"),
            ("registry", "pub", "$JS.API.STREAM.DELETE.DW_CONN"),
            ("deadletter", "pub", "$JS.API.STREAM.DELETE.DW_DLQ"),
            ("deadletter", "pub", "$JS.API.CONSUMER.DELETE.DW_MSG.dispatcher"),
            ("dwctl", "pub", "dw.msg.lobby"),
            ("dwctl", "pub", "$JS.API.STREAM.DELETE.DW_MSG"),
        ]
        for user, op, subject in cases:
            with self.subTest(user=user, op=op, subject=subject):
                c = self.probe(user)
                said = c.pub(subject, "_INBOX.probe") if op == "pub" else c.sub(subject, 1)
                self.assertTrue(refused(said), said)

    def test_worker_credentials_reach_only_user_code_subjects(self):
        """The worker user (route workers, bots): its part of the bus and
        nothing else, as a compromised worker would meet it."""
        c = self.probe(WORKER)
        allowed = [
            ("sub", "dw.rpc.echo"), ("sub", "dw.rpc.>"), ("sub", "_INBOX.worker.x.>"),
            ("sub", "dw.authz.connect"), ("sub", "dw.authz.>"),
            ("pub", "dw.api.rooms.publish"), ("pub", "dw.api.connections.post"),
            ("pub", "$JS.API.STREAM.INFO.DW_EVENTS"),
            ("pub", "$JS.API.CONSUMER.DURABLE.CREATE.DW_EVENTS.mybot"),
            ("pub", "$JS.API.CONSUMER.CREATE.DW_EVENTS.mybot.dw.events.join"),
            ("pub", "$JS.API.CONSUMER.MSG.NEXT.DW_EVENTS.mybot"),
            ("pub", "$JS.API.CONSUMER.DELETE.DW_EVENTS.mybot"),
            ("pub", "$JS.API.CONSUMER.INFO.DW_ROUTE.route-echo"),
            ("pub", "$JS.API.CONSUMER.MSG.NEXT.DW_ROUTE.route-echo"),
        ]
        for n, (op, subject) in enumerate(allowed):
            with self.subTest(allowed=subject):
                said = c.pub(subject, "_INBOX.worker.probe") if op == "pub" else c.sub(subject, n + 1)
                self.assertFalse(refused(said), said)
        refusals = [
            # chat traffic, connection events, deliveries: neither read nor written
            ("pub", "dw.msg.3.lobby"), ("sub", "dw.msg.>"), ("sub", "dw.conn.*"),
            ("pub", "dw.conn.disconnect"), ("sub", "dw.edge.x.deliver"),
            ("pub", "dw.edge.x.conn"), ("pub", "dw.events.connect"), ("sub", "dw.events.>"),
            # no answering for a service, no asking one outside the API
            ("sub", "dw.api.rooms.publish"), ("sub", "dw.registry.room"),
            ("pub", "dw.registry.list"), ("pub", "dw.ops.ping"), ("pub", "dw.dlq.x"),
            ("pub", "dw.rpc.echo"), ("pub", "dw.authz.connect"),
            # others' replies
            ("sub", "_INBOX.>"), ("sub", "_INBOX.api.>"), ("pub", "_INBOX.api.x"),
            # streams: no change, no purge, no other stream's messages
            ("pub", "$JS.API.STREAM.DELETE.DW_EVENTS"), ("pub", "$JS.API.STREAM.PURGE.DW_EVENTS"),
            ("pub", "$JS.API.STREAM.UPDATE.DW_EVENTS"), ("pub", "$JS.API.STREAM.CREATE.DW_ROUTE"),
            ("pub", "$JS.API.STREAM.MSG.GET.DW_MSG"), ("pub", "$JS.API.STREAM.MSG.GET.DW_EVENTS"),
            ("pub", "$JS.API.CONSUMER.CREATE.DW_MSG"),
            ("pub", "$JS.API.CONSUMER.DURABLE.CREATE.DW_CONN.x"),
            ("pub", "$JS.API.CONSUMER.MSG.NEXT.DW_MSG.dispatcher"),
            # DW_ROUTE's consumers are DynamoWave's: used, never made or removed
            ("pub", "$JS.API.CONSUMER.DURABLE.CREATE.DW_ROUTE.route-echo"),
            ("pub", "$JS.API.CONSUMER.CREATE.DW_ROUTE.route-echo.dw.route.echo"),
            ("pub", "$JS.API.CONSUMER.DELETE.DW_ROUTE.route-echo"),
        ]
        for n, (op, subject) in enumerate(refusals):
            with self.subTest(refused=subject):
                said = c.pub(subject, "_INBOX.worker.probe") if op == "pub" else c.sub(subject, 100 + n)
                self.assertTrue(refused(said), f"{op} {subject}: {said}")

    def test_logins_are_required(self):
        for user, pw in [(None, None), ("edge", "wrong"), ("nobody", "x")]:
            with self.subTest(user=user):
                c = RawNats(self.stack.nats_port, user, pw)
                self.addCleanup(c.close)
                self.assertTrue(any("Authorization Violation" in line for line in c.connect_reply),
                                c.connect_reply)

    def test_the_stack_works_end_to_end_under_its_users(self):
        st = self.stack
        url = st.edges[0].url

        async def scenario():
            # Plain mode (edge -> DW_MSG -> dispatcher -> registry -> edge).
            ws = await connect(url)
            await asyncio.to_thread(st.wait_conn_count, 1)
            await ws.send('{"action":"sendmessage","data":"under least privilege"}')
            self.assertEqual(await recv_text(ws), "under least privilege")
            # v1: join, ack, history (an ordered consumer on DW_MSG), presence.
            v = await connect(url + "?name=sec-alice", subprotocols=V1)
            hello = json.loads(await recv_text(v))
            await v.send(json.dumps({"action": "join", "room": "sec"}))
            frames = []

            async def until(typ):
                while True:
                    f = json.loads(await recv_text(v))
                    frames.append(f)
                    if f["type"] == typ:
                        return f
            await until("joined")
            await v.send(json.dumps({"action": "sendmessage", "room": "sec", "data": "h1"}))
            await until("ack")
            await until("message")
            await v.send(json.dumps({"action": "history", "room": "sec", "limit": 10}))
            page = await until("history")
            self.assertEqual([m["data"] for m in page["messages"]], ["h1"])
            await v.send(json.dumps({"action": "presence", "room": "sec"}))
            p = await until("presence")
            self.assertEqual(p["users"], [{"user": "sec-alice", "connections": 1}])
            # The api (registry + edge), dwctl (registry, dead letters).
            code, body = await asyncio.to_thread(http_get, st.api.mgmt_port,
                                                 f"/@connections/{hello['connectionId']}")
            self.assertEqual(code, 200, body)
            self.assertIn(hello["connectionId"], {c["connectionId"] for c in st.conns()})
            st.dwctl("dlq", "list")
            await v.close()
            await ws.close()
        asyncio.run(asyncio.wait_for(scenario(), 60))
        self.assertEqual(self.violations(), [])


    def test_a_stopping_edge_drops_its_connections_with_one_edge_down(self):
        """SIGTERM: the edge publishes one edge_down for itself (its user may),
        not a disconnect per connection, and the registry drops them all."""
        st = self.stack
        edge = st.start_edge()
        before = st.conn_ids()

        async def scenario():
            socks = [await connect(edge.url) for _ in range(3)]
            mine = await asyncio.to_thread(
                wait_until, lambda: len(ids := st.conn_ids() - before) == 3 and ids, 20,
                "the edge's 3 connections in the registry")
            self.assertEqual(edge.stop(), 0, edge.tail())
            await asyncio.to_thread(wait_until, lambda: not (st.conn_ids() & mine), 10,
                                    "the registry to drop the stopped edge's connections")
            for ws in socks:
                await ws.close()
        asyncio.run(asyncio.wait_for(scenario(), 60))
        with open(edge.log_path, errors="replace") as f:
            log = f.read()
        self.assertIn('msg="edge_down stored"', log)
        self.assertIn("connections=3", log)
        self.assertEqual(self.violations(), [])


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=dw-test-ca", cwd=d)
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")]:
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=dw-{name}", cwd=d)
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
                cwd=d)


class NatsTls(unittest.TestCase):
    """Services to NATS over TLS, with client certificates (nats-server
    `tls { verify: true }`); a plain client is told TLS is required."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dw-nats-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        make_pki(self.dir)
        conf = os.path.join(self.dir, "nats-tls.conf")
        with open(conf, "w") as f:
            f.write("tls {\n"
                    f'  cert_file: "{self.dir}/server.pem"\n'
                    f'  key_file: "{self.dir}/server.key"\n'
                    f'  ca_file: "{self.dir}/ca.pem"\n'
                    "  verify: true\n"
                    "  timeout: 2\n"
                    "}\n")
        tls_env = {"DW_NATS_CA": f"{self.dir}/ca.pem", "DW_NATS_CERT": f"{self.dir}/client.pem",
                   "DW_NATS_KEY": f"{self.dir}/client.key"}
        self.stack = Stack(edges=1, nats_conf=conf, service_env={u: tls_env for u in USERS})
        self.addCleanup(self.stack.cleanup)
        try:
            self.stack.start()
        except BaseException:
            print(self.stack.logs())
            raise

    def test_stack_over_tls(self):
        st = self.stack

        async def scenario():
            ws = await connect(st.edges[0].url)
            await asyncio.to_thread(st.wait_conn_count, 1)
            await ws.send('{"action":"sendmessage","data":"over tls"}')
            self.assertEqual(await recv_text(ws), "over tls")
            await ws.close()
        try:
            asyncio.run(asyncio.wait_for(scenario(), 30))
        except BaseException:
            print(st.logs())
            raise
        raw = RawNats(st.nats_port, login=False)
        self.addCleanup(raw.close)
        self.assertTrue(raw.info.get("tls_required"), raw.info)
        self.assertTrue(raw.info.get("tls_verify"), raw.info)


if __name__ == "__main__":
    unittest.main()
