"""A WebSocket client on raw sockets (RFC 6455), for tests that must send
what no well-behaved library sends: unmasked frames, reserved bits and
opcodes, control frames that are too long or fragmented, non-minimal
length encodings, invalid UTF-8 split across fragments, and writers that
keep going after the server has closed.

Python 3 standard library only (socket, ssl): nothing here may hide what
went over the wire. Frames the server sends are parsed strictly: a masked
or reserved-bit server frame is reported as such, not accepted.
"""
import base64
import hashlib
import os
import socket
import ssl
import struct
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    def __init__(self, status, head):
        super().__init__(f"upgrade refused: {status} {head[:200]!r}")
        self.status = status
        self.head = head


def encode_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length_bytes=None,
                 mask_key=None):
    """One frame as bytes. rsv: the three RSV bits as a number 0-7 (RSV1 =
    4). length_bytes forces the length encoding: 0 (7-bit), 2 (16-bit) or 8
    (64-bit), also when a shorter one would do (RFC 6455 says minimal)."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload)
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    mbit = 0x80 if mask else 0
    if length_bytes is None:
        length_bytes = 0 if n < 126 else 2 if n < 65536 else 8
    if length_bytes == 0:
        head = bytes([b0, mbit | n])
    elif length_bytes == 2:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    return head + key + mask_bytes(payload, key)


def mask_bytes(payload, key):
    # Whole-buffer XOR through int conversion: fast enough for megabytes.
    if not payload:
        return b""
    reps = (len(payload) + 3) // 4
    k = int.from_bytes((key * reps)[:len(payload)], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(len(payload), "big")


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


class Frame:
    __slots__ = ("fin", "rsv", "opcode", "masked", "payload")

    def __init__(self, fin, rsv, opcode, masked, payload):
        self.fin, self.rsv, self.opcode, self.masked, self.payload = fin, rsv, opcode, masked, payload

    @property
    def close_code(self):
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self):
        return self.payload[2:]

    def __repr__(self):
        p = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        return f"Frame(op={self.opcode:#x} fin={self.fin} rsv={self.rsv} len={len(self.payload)} {p!r})"


class Ended(Exception):
    """The server ended the TCP connection: how ("eof", "reset", "timeout")."""

    def __init__(self, how):
        super().__init__(how)
        self.how = how


class Conn:
    """One client connection. Not thread-safe except that one thread may
    send while another receives (the socket allows it; TLS too, since
    Python's ssl releases neither side's state to the other)."""

    def __init__(self, sock, leftover=b""):
        self.sock = sock
        self.buf = bytearray(leftover)
        self.subprotocol = None

    # -- sending -------------------------------------------------------
    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, opcode, payload=b"", **kw):
        self.sock.sendall(encode_frame(opcode, payload, **kw))

    def text(self, s, **kw):
        self.send(OP_TEXT, s, **kw)

    def close(self, code=None, reason=b""):
        self.send(OP_CLOSE, close_payload(code, reason))

    # -- receiving -----------------------------------------------------
    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Ended("timeout")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise Ended("timeout")
        except (ConnectionResetError, BrokenPipeError):
            raise Ended("reset")
        except ssl.SSLError as e:
            raise Ended(f"tls error: {e.reason}")
        except OSError as e:
            raise Ended(f"error: {e}")
        if not chunk:
            raise Ended("eof")
        self.buf += chunk

    def _need(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)

    def recv_frame(self, timeout=5.0):
        """The next frame; raises Ended when the connection ends first."""
        deadline = time.monotonic() + timeout
        self._need(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._need(4, deadline)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._need(10, deadline)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        masked = bool(b1 & 0x80)
        if masked:
            off += 4
        self._need(off + n, deadline)
        payload = bytes(self.buf[off:off + n])
        if masked:
            payload = mask_bytes(payload, bytes(self.buf[off - 4:off]))
        del self.buf[:off + n]
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, masked, payload)

    def recv_message(self, timeout=5.0, on_control=None):
        """The next data message, reassembled: (opcode, payload). Control
        frames in between go to on_control(frame) when given; a close
        frame raises Closed."""
        deadline = time.monotonic() + timeout
        op, parts = None, []
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f.opcode == OP_CLOSE:
                raise Closed(f)
            if f.opcode & 0x8:
                if on_control:
                    on_control(f)
                continue
            if op is None:
                op = f.opcode
            parts.append(f.payload)
            if f.fin:
                return op, b"".join(parts)

    def expect_close(self, timeout=5.0):
        """Read until the server's close frame. Returns (frame or None, how):
        how is "close" when a close frame came, else why the connection
        ended without one ("eof", "reset", "timeout")."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                f = self.recv_frame(max(0.0, deadline - time.monotonic()))
                if f.opcode == OP_CLOSE:
                    return f, "close"
        except Ended as e:
            return None, e.how

    def wait_end(self, timeout=10.0):
        """After the close frame: how the TCP connection ends ("eof",
        "reset", "timeout") and after how many seconds."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            while True:
                self.buf.clear()
                self._fill(deadline)
        except Ended as e:
            return e.how, time.monotonic() - t0

    def abort(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Closed(Exception):
    def __init__(self, frame):
        super().__init__(f"close frame {frame.close_code}")
        self.frame = frame


def connect(port, host="127.0.0.1", path="/", tls=False, cafile=None, headers=None,
            subprotocols=None, timeout=10.0, rcvbuf=None, sndbuf=None):
    """Open a TCP (or TLS) connection and upgrade it. Returns a Conn, or
    raises HandshakeError with the HTTP status when the upgrade is refused."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if tls:
        ctx = ssl.create_default_context(cafile=cafile)
        sock = ctx.wrap_socket(sock, server_hostname=host)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            sock.close()
            raise HandshakeError(None, head)
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 101:
        sock.close()
        raise HandshakeError(status, head)
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        fields[k.strip().lower()] = v.strip()
    want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
    if fields.get(b"sec-websocket-accept") != want:
        sock.close()
        raise HandshakeError(101, b"bad Sec-WebSocket-Accept: " + head)
    c = Conn(sock, rest)
    proto = fields.get(b"sec-websocket-protocol")
    c.subprotocol = proto.decode() if proto else None
    return c


def http_request(port, raw, host="127.0.0.1", timeout=10.0, tls=False, cafile=None):
    """Send raw request bytes; return (status or None, headers bytes, body
    bytes, how the connection ended). Reads until the server closes or the
    response (by Content-Length) is complete."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if tls:
        sock = ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname=host)
    try:
        sock.sendall(raw)
        return read_http_response(sock, timeout)
    finally:
        sock.close()


def read_http_response(sock, timeout=10.0):
    """One response from sock (see HttpReader, for several on one
    connection)."""
    return HttpReader(sock).response(timeout)


class HttpReader:
    """Responses read one by one from a connection, keeping what arrived
    beyond each (pipelined answers come back to back)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def response(self, timeout=10.0):
        """(status or None, head, body, how): how is "complete", or how the
        connection ended first ("eof", "reset", "timeout")."""
        deadline = time.monotonic() + timeout
        how = "complete"
        while True:
            if b"\r\n\r\n" in self.buf:
                head, _, rest = self.buf.partition(b"\r\n\r\n")
                clen = None
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        clen = int(v.strip())
                if clen is not None and len(rest) >= clen:
                    self.buf = rest[clen:]
                    return _status(head), head, rest[:clen], how
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                how = "timeout"
                break
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                how = "timeout"
                break
            except ConnectionResetError:
                how = "reset"
                break
            if not chunk:
                how = "eof"
                break
            self.buf += chunk
        head, _, body = self.buf.partition(b"\r\n\r\n")
        self.buf = b""
        return _status(head), head, body, how


def _status(head):
    if not head.startswith(b"HTTP/"):
        return None
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def parse_frames(buf):
    """Complete frames at the start of buf (a bytearray), removed from it."""
    out = []
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        off = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        masked = bool(buf[1] & 0x80)
        if masked:
            off += 4
        if len(buf) < off + n:
            break
        payload = bytes(buf[off:off + n])
        if masked:
            payload = mask_bytes(payload, bytes(buf[off - 4:off]))
        out.append(Frame(bool(buf[0] & 0x80), (buf[0] >> 4) & 7, buf[0] & 0x0F, masked, payload))
        del buf[:off + n]
    return out


class Writer:
    """One scripted client for Pump: upgrades, sends `trigger` once, then
    `chunk` every `interval` seconds for as long as the server lets it (it
    never sends a close frame of its own), and records what the server did.

    Results: code and reason of the server's close frame (None: none came),
    t_close (seconds from the trigger to the close frame), t_end (seconds
    from the close frame, or from the trigger when none came, to the end of
    the TCP connection), end ("eof", "reset", "timeout", ...), sent (bytes
    written after the trigger), write_error (the first failed write)."""

    def __init__(self, port, trigger=b"", chunk=b"", interval=0.02, tls_ctx=None, label=""):
        self.port, self.trigger, self.chunk, self.interval = port, trigger, chunk, interval
        self.tls_ctx, self.label = tls_ctx, label
        self.code = self.reason = self.t_close = self.t_end = self.end = None
        self.write_error = None
        self.sent = 0
        self.frames = []
        self.error = None


class Pump:
    """Runs many Writers at once in one thread (selectors, non-blocking
    sockets; TLS through ssl.SSLObject and memory BIOs, so that reading and
    writing one TLS connection never race)."""

    def __init__(self, writers, deadline_s=30.0):
        import selectors
        self.sel = selectors.DefaultSelector()
        self.writers = writers
        self.deadline = time.monotonic() + deadline_s

    def run(self):
        import selectors
        for w in self.writers:
            self._start(w)
        live = set(self.writers)
        while live:
            now = time.monotonic()
            if now > self.deadline:
                for w in live:
                    self._finish(w, "timeout")
                break
            timeout = 0.01
            for w in list(live):
                if w._phase == "ws" and w._writing and now >= w._next and len(w._wbuf) < 65536:
                    self._send_app(w, w.chunk)
                    w.sent += len(w.chunk)
                    w._next = max(w._next + w.interval, now)
                self._want(w)
            for key, ev in self.sel.select(timeout):
                w = key.data
                if w._phase == "done":
                    continue
                if ev & selectors.EVENT_WRITE:
                    self._on_writable(w)
                if ev & selectors.EVENT_READ and w._phase != "done":
                    self._on_readable(w)
            live = {w for w in live if w._phase != "done"}
        self.sel.close()
        return self.writers

    # -- plumbing ------------------------------------------------------
    def _start(self, w):
        import selectors
        w._wbuf = bytearray()
        w._rbuf = bytearray()
        w._head = b""
        w._writing = False
        w._next = 0.0
        w._t_trigger = None
        w._t_close_abs = None
        w._ssl = None
        w._events = 0
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", w.port))
        w._sock = s
        w._phase = "connect"
        self.sel.register(s, selectors.EVENT_WRITE, w)
        w._events = selectors.EVENT_WRITE

    def _want(self, w):
        import selectors
        if w._phase == "done":
            return
        ev = selectors.EVENT_READ if w._phase != "connect" else 0
        if w._wbuf or w._phase == "connect":
            ev |= selectors.EVENT_WRITE
        if ev != w._events:
            self.sel.modify(w._sock, ev, w)
            w._events = ev

    def _send_app(self, w, data):
        if w._ssl is not None:
            try:
                w._ssl.write(data)
            except ssl.SSLError as e:
                w.write_error = w.write_error or f"tls: {e}"
                w._writing = False
            self._pull_tls(w)
        else:
            w._wbuf += data

    def _pull_tls(self, w):
        out = w._bio_out.read()
        if out:
            w._wbuf += out

    def _on_writable(self, w):
        if w._phase == "connect":
            err = w._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                w.error = f"connect: {os.strerror(err)}"
                self._finish(w, "connect failed")
                return
            if w.tls_ctx is not None:
                w._bio_in, w._bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
                w._ssl = w.tls_ctx.wrap_bio(w._bio_in, w._bio_out, server_hostname="127.0.0.1")
                w._phase = "tls"
                self._handshake(w)
            else:
                self._upgrade(w)
            return
        if not w._wbuf:
            return
        try:
            n = w._sock.send(w._wbuf)
            del w._wbuf[:n]
        except BlockingIOError:
            pass
        except OSError as e:
            w.write_error = w.write_error or e.__class__.__name__
            w._writing = False
            w._wbuf.clear()

    def _handshake(self, w):
        try:
            w._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._pull_tls(w)
            return
        except ssl.SSLError as e:
            w.error = f"tls handshake: {e}"
            self._finish(w, "tls failed")
            return
        self._pull_tls(w)
        self._upgrade(w)

    def _upgrade(self, w):
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{w.port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
        w._phase = "upgrade"
        self._send_app(w, req)

    def _on_readable(self, w):
        try:
            data = w._sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self._finish(w, "reset")
            return
        except OSError as e:
            self._finish(w, f"error {e}")
            return
        if not data:
            self._finish(w, "eof")
            return
        if w._ssl is not None:
            w._bio_in.write(data)
            if w._phase == "tls":
                self._handshake(w)
                if w._phase == "tls":
                    return
            while True:
                try:
                    plain = w._ssl.read(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    self._pull_tls(w)
                    self._on_plain(w, b"")
                    w._tls_closed = True
                    break
                except ssl.SSLError as e:
                    self._finish(w, f"tls error {e.reason}")
                    return
                if not plain:
                    break
                self._on_plain(w, plain)
                if w._phase == "done":
                    return
            self._pull_tls(w)
        else:
            self._on_plain(w, data)

    def _on_plain(self, w, data):
        if w._phase == "upgrade":
            w._head += data
            if b"\r\n\r\n" not in w._head:
                return
            head, _, rest = w._head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                w.error = f"upgrade refused: {head[:60]!r}"
                self._finish(w, "refused")
                return
            w._phase = "ws"
            w._t_trigger = time.monotonic()
            if w.trigger:
                self._send_app(w, w.trigger)
            w._writing = bool(w.chunk)
            w._next = w._t_trigger
            data = rest
        w._rbuf += data
        for f in parse_frames(w._rbuf):
            w.frames.append(f)
            if f.opcode == OP_CLOSE and w._t_close_abs is None:
                w._t_close_abs = time.monotonic()
                w.code, w.reason = f.close_code, f.close_reason
                w.t_close = w._t_close_abs - w._t_trigger

    def _finish(self, w, how):
        now = time.monotonic()
        w.end = how
        since = w._t_close_abs or w._t_trigger
        w.t_end = now - since if since else None
        try:
            self.sel.unregister(w._sock)
        except (KeyError, ValueError):
            pass
        w._sock.close()
        w._phase = "done"
