"""Just enough of the NATS client protocol, over one plain-TCP socket, for
what the services do not do themselves: JetStream API requests, a stream
snapshot and restore (scripts/dr-promote.py), and the test harness's
questions to a cluster (tests/integration/cluster.py). No TLS, no
reconnect, not thread-safe. Python's standard library only: it runs where
the repository is checked out, without packages.

    nc = NatsConn("127.0.0.1", 4222, name="me")
    info = nc.js("STREAM.INFO.DW_MSG")   # a dict; an error reply as it is
    nc.close()
"""
import json
import os
import socket
import time


class NatsConn:
    """CONNECT, PUB/HPUB, SUB, MSG/HMSG. Replies to requests come to
    <inbox>.<n>, one subscription on <inbox>.>; a service user may only
    subscribe to _INBOX.<user>.> (deploy/nats/auth.conf), so that is the
    inbox when a user logs in."""

    def __init__(self, host, port, *, user=None, password=None, name="natsproto",
                 timeout=5.0):
        self.s = socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout)
        self.buf = b""
        self.n = 0
        self.sid = 1
        tag = f"{name.replace('-', '')}{os.getpid()}x{int(time.monotonic() * 1e6)}"
        self.inbox = f"_INBOX.{user}.{tag}" if user else f"_INBOX.{tag}"
        info = self._line()
        if not info.startswith(b"INFO"):
            raise ConnectionError(f"not a NATS server: {info[:80]!r}")
        conn = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                "name": name, "lang": "python", "version": "1"}
        if user:
            conn.update(user=user, **{"pass": password or ""})
        self.s.sendall(b"CONNECT " + json.dumps(conn).encode() + b"\r\nPING\r\n")
        while True:
            line = self._line()
            if line == b"PONG":
                break
            if line.startswith(b"-ERR"):
                raise ConnectionError(line.decode())
        self.s.sendall(f"SUB {self.inbox}.> 1\r\n".encode())

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _fill(self):
        chunk = self.s.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def next_msg(self, deadline):
        """The next MSG/HMSG as (subject, reply, headers bytes, payload);
        TimeoutError at the monotonic deadline."""
        while True:
            self.s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                line = self._line()
            except socket.timeout:
                raise TimeoutError("no message in time") from None
            parts = line.split()
            if not parts:
                continue
            if parts[0] == b"PING":
                self.s.sendall(b"PONG\r\n")
            elif parts[0] == b"MSG":
                reply = parts[3].decode() if len(parts) == 5 else None
                return parts[1].decode(), reply, b"", self._read(int(parts[-1]))
            elif parts[0] == b"HMSG":
                reply = parts[3].decode() if len(parts) == 6 else None
                hlen, total = int(parts[-2]), int(parts[-1])
                raw = self._read(total)
                return parts[1].decode(), reply, raw[:hlen], raw[hlen:]
            elif parts[0] == b"-ERR":
                raise ConnectionError(line.decode())

    def publish(self, subject, payload=b"", reply=None, headers=None):
        r = f" {reply}" if reply else ""
        if headers:
            h = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) \
                + b"\r\n"
            self.s.sendall(f"HPUB {subject}{r} {len(h)} {len(h) + len(payload)}\r\n".encode() + h
                           + payload + b"\r\n")
        else:
            self.s.sendall(f"PUB {subject}{r} {len(payload)}\r\n".encode() + payload + b"\r\n")

    def subscribe(self, subject):
        """SUB, then a round trip (flush): the server has it when this returns."""
        self.sid += 1
        self.s.sendall(f"SUB {subject} {self.sid}\r\n".encode())
        self.flush()
        return self.sid

    def flush(self):
        """PING and wait for the PONG (messages meanwhile are dropped)."""
        self.s.sendall(b"PING\r\n")
        deadline = time.monotonic() + 5
        while True:
            self.s.settimeout(max(0.01, deadline - time.monotonic()))
            line = self._line()
            if line == b"PONG":
                return
            parts = line.split()
            if parts and parts[0] in (b"MSG", b"HMSG"):
                self._read(int(parts[-1]))

    def new_inbox(self, kind="r"):
        """A fresh subject under this connection's inbox."""
        self.n += 1
        return f"{self.inbox}.{kind}{self.n}"

    def request(self, subject, payload=b"", timeout=5.0, headers=None, raw=False):
        """Publish with a reply inbox and return the first reply's payload
        (raw=True: (headers, payload)). A no-responders status raises
        ConnectionRefusedError, no answer in time TimeoutError."""
        if isinstance(payload, str):
            payload = payload.encode()
        inbox = self.new_inbox()
        self.publish(subject, payload, inbox, headers)
        deadline = time.monotonic() + timeout
        while True:
            subj, _, hdr, data = self.next_msg(deadline)
            if subj != inbox:
                continue
            if hdr.startswith(b"NATS/1.0 503"):
                raise ConnectionRefusedError(f"no responders on {subject}")
            return (hdr, data) if raw else data

    def js(self, api, body=None, timeout=5.0):
        """A JetStream API call ($JS.API.<api>) with a JSON body; the reply
        as a dict (an error reply is returned as it is: {"error": ...})."""
        payload = b"" if body is None else json.dumps(body).encode()
        return json.loads(self.request(f"$JS.API.{api}", payload, timeout))
