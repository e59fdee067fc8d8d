"""RFC 6455 conformance of the edge, in the spirit of the Autobahn
testsuite (issue #19): framing, fragmentation, ping/pong, close handling and
UTF-8 validation, each case on its own connection from a raw-socket client
(wsraw.py) against a real stack.

Every case prints one row: case, expected (what RFC 6455 asks; for binary
frames, the edge's documented policy), got. A case passes when it got what
is expected, or exactly the deviation docs/security.md documents for it
(libwebsockets 4.1 forces a few); anything else fails the test.
"""
import json
import struct
import unittest

import wsraw
from harness import StackTest
from wsraw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, Closed, Ended

# Frames up to 1 MB and no rate limits: the cases test the protocol, not
# the edge's limits (test_ws_violations.py does those).
ENV = {"DW_MAX_FRAME": "1048576", "DW_MAX_MESSAGE": "1048576", "DW_MSG_RATE": "0",
       "DW_EDGE_MSG_RATE": "0", "DW_IP_MAX_CONNS": "0", "DW_IP_CONN_RATE": "0",
       "DW_EDGE_CONN_RATE": "0"}

CASES = []


def case(name, expected, deviation=None):
    """Register a case. fn(conn) returns what it got, as text; expected is
    RFC 6455's answer, deviation the documented lws 4.1 one (or None)."""
    def reg(fn):
        CASES.append((name, expected, deviation, fn))
        return fn
    return reg


def sendmessage(data):
    return json.dumps({"action": "sendmessage", "data": data}, ensure_ascii=False).encode()


def sized_sendmessage(total, fill="x"):
    """A sendmessage JSON text of exactly `total` bytes, and its data."""
    base = len(sendmessage(""))
    data = fill * (total - base)
    msg = sendmessage(data)
    assert len(msg) == total, (len(msg), total)
    return msg, data


def outcome(c, want_data=None, timeout=3.0, pongs=None):
    """What came back: "delivered" when the text want_data arrived (the
    edge broadcasts a plain sendmessage to its sender too), "close <code>"
    or "no close frame (<how>)" when the connection ended."""
    try:
        while True:
            op, payload = c.recv_message(timeout, on_control=(pongs.append if pongs is not None
                                                               else None))
            if op == OP_TEXT and want_data is not None and payload == want_data.encode():
                return "delivered"
            if op == OP_TEXT and want_data is None:
                return "reply " + payload[:40].decode(errors="replace")
    except Closed as e:
        return close_text(e.frame) + after_close(c, e.frame)
    except Ended as e:
        return f"no close frame ({e.how})"


def close_text(f):
    if f.close_code is None:
        return "close (no code)" if not f.payload else f"close (payload {f.payload!r})"
    return f"close {f.close_code}"


def closes(c, timeout=3.0, answer=True):
    """The server's close frame, answered as a client should (answer=False
    when the client sent its close first); anything the server sends after
    its close frame is reported (there must be none)."""
    f, how = c.expect_close(timeout)
    if not f:
        return f"no close frame ({how})"
    return close_text(f) + after_close(c, f, answer)


def after_close(c, f, answer=True):
    try:
        if answer:
            c.send(OP_CLOSE, f.payload[:2])
    except OSError:
        pass  # the server may have closed its side already
    extra = []
    try:
        while True:
            extra.append(c.recv_frame(3.0))
    except Ended as e:
        if e.how == "timeout":
            return ", connection left open"
    return f", then {extra}" if extra else ""


# ---- framing -------------------------------------------------------------

for total, enc in ((125, "7-bit"), (126, "16-bit"), (65535, "16-bit"), (65536, "64-bit"),
                   (200000, "64-bit")):
    def _len(c, total=total):
        msg, data = sized_sendmessage(total)
        c.send(OP_TEXT, msg)
        return outcome(c, data)
    case(f"text of {total} bytes ({enc} length)", "delivered")(_len)


@case("length in a longer encoding than needed (16-bit for 40 bytes)", "delivered")
def _(c):
    msg, data = sized_sendmessage(40)
    c.send(OP_TEXT, msg, length_bytes=2)
    return outcome(c, data)


@case("length in the 64-bit encoding for 200 bytes", "delivered")
def _(c):
    msg, data = sized_sendmessage(200)
    c.send(OP_TEXT, msg, length_bytes=8)
    return outcome(c, data)


@case("empty text frame", "reply Use the sendmessage route to send a mess")
def _(c):
    c.send(OP_TEXT, b"")
    return outcome(c)


@case("unmasked client frame", "close 1002", deviation="delivered")
def _(c):
    msg, data = sized_sendmessage(60)
    c.send(OP_TEXT, msg, mask=False)
    return outcome(c, data)


for bit, name in ((4, "RSV1"), (2, "RSV2"), (1, "RSV3"), (7, "RSV1+2+3")):
    def _rsv(c, bit=bit):
        c.send(OP_TEXT, sendmessage("rsv"), rsv=bit)
        return outcome(c, "rsv")
    case(f"{name} set on a text frame", "close 1002")(_rsv)


@case("RSV1 set on a ping", "close 1002")
def _(c):
    c.send(OP_PING, b"p", rsv=4)
    return closes(c)


for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
    def _op(c, op=op):
        c.send(op, b"reserved")
        return closes(c)
    case(f"reserved opcode {op:#x}", "close 1002")(_op)


@case("binary frame (the edge takes text only)", "close 1003")
def _(c):
    c.send(OP_BINARY, b"\x00\x01\x02")
    return closes(c)


# ---- fragmentation -------------------------------------------------------

def fragments(msg, n):
    step = max(1, (len(msg) + n - 1) // n)
    return [msg[i:i + step] for i in range(0, len(msg), step)]


def send_fragmented(c, parts, opcode=OP_TEXT, between=None):
    """parts as one message: first frame opcode, then continuations;
    between(i) may return extra frames to put after fragment i."""
    out = b""
    for i, p in enumerate(parts):
        op = opcode if i == 0 else OP_CONT
        out += wsraw.encode_frame(op, p, fin=(i == len(parts) - 1))
        if between and i < len(parts) - 1:
            out += between(i)
    c.send_raw(out)


@case("text in 3 fragments", "delivered")
def _(c):
    msg = sendmessage("three fragments")
    send_fragmented(c, fragments(msg, 3))
    return outcome(c, "three fragments")


@case("text in 1-byte fragments", "delivered")
def _(c):
    msg = sendmessage("one byte at a time")
    send_fragmented(c, [msg[i:i + 1] for i in range(len(msg))])
    return outcome(c, "one byte at a time")


@case("text fragments with empty first, middle and last", "delivered")
def _(c):
    msg = sendmessage("empties")
    a, b = msg[:10], msg[10:]
    send_fragmented(c, [b"", a, b"", b, b""])
    return outcome(c, "empties")


@case("empty message in two empty fragments", "reply Use the sendmessage route to send a mess")
def _(c):
    c.send_raw(wsraw.encode_frame(OP_TEXT, b"", fin=False) + wsraw.encode_frame(OP_CONT, b""))
    return outcome(c)


@case("continuation with no message started", "close 1002")
def _(c):
    c.send(OP_CONT, b"orphan")
    return closes(c)


@case("continuation after the final fragment", "close 1002")
def _(c):
    msg = sendmessage("done")
    c.send_raw(wsraw.encode_frame(OP_TEXT, msg) + wsraw.encode_frame(OP_CONT, b"more"))
    # The message itself is fine (and may be delivered first).
    got = outcome(c, "done")
    return closes(c) if got == "delivered" else got


@case("text frame inside a fragmented message", "close 1002")
def _(c):
    c.send_raw(wsraw.encode_frame(OP_TEXT, b'{"action":', fin=False) +
               wsraw.encode_frame(OP_TEXT, b'"x"}'))
    return closes(c)


@case("binary frame inside a fragmented text message", "close 1002")
def _(c):
    c.send_raw(wsraw.encode_frame(OP_TEXT, b'{"action":', fin=False) +
               wsraw.encode_frame(OP_BINARY, b'"x"}'))
    return closes(c)


@case("ping between fragments: pong, then the message", "pong + delivered")
def _(c):
    msg = sendmessage("around a ping")
    send_fragmented(c, fragments(msg, 3), between=lambda i: wsraw.encode_frame(OP_PING, b"mid%d" % i))
    pongs = []
    got = outcome(c, "around a ping", pongs=pongs)
    payloads = [f.payload for f in pongs if f.opcode == OP_PONG]
    if got == "delivered" and payloads[:1] == [b"mid0"]:
        return "pong + delivered"
    return f"{got}, pongs {payloads}"


@case("pong between fragments", "delivered")
def _(c):
    msg = sendmessage("around a pong")
    send_fragmented(c, fragments(msg, 2), between=lambda i: wsraw.encode_frame(OP_PONG, b"unasked"))
    return outcome(c, "around a pong")


@case("fragmented ping", "close 1002")
def _(c):
    c.send_raw(wsraw.encode_frame(OP_PING, b"pi", fin=False) + wsraw.encode_frame(OP_CONT, b"ng"))
    return closes(c)


@case("fragmented close", "close 1002")
def _(c):
    c.send_raw(wsraw.encode_frame(OP_CLOSE, struct.pack("!H", 1000), fin=False) +
               wsraw.encode_frame(OP_CONT, b"bye"))
    return closes(c)


@case("ping of 126 bytes (over the 125 limit)", "close 1002")
def _(c):
    c.send(OP_PING, b"p" * 126)
    return closes(c)


@case("close of 126 bytes (over the 125 limit)", "close 1002")
def _(c):
    c.send(OP_CLOSE, struct.pack("!H", 1000) + b"r" * 124)
    return closes(c)


@case("ping of 5 bytes in a 16-bit length", "close 1002")
def _(c):
    c.send(OP_PING, b"short", length_bytes=2)
    return closes(c)


# ---- ping / pong ---------------------------------------------------------

def ping_pong(c, payload):
    c.send(OP_PING, payload)
    try:
        while True:
            f = c.recv_frame(3.0)
            if f.opcode == OP_PONG:
                return "pong, same payload" if f.payload == payload else f"pong {f.payload!r}"
            if f.opcode == OP_CLOSE:
                return close_text(f)
    except Ended as e:
        return f"no close frame ({e.how})"


@case("ping, empty", "pong, same payload")
def _(c):
    return ping_pong(c, b"")


@case("ping, 125 bytes", "pong, same payload")
def _(c):
    return ping_pong(c, bytes(range(125)))


@case("ping, binary payload", "pong, same payload")
def _(c):
    return ping_pong(c, b"\x00\xff\xfe\x80")


@case("unsolicited pong, then a message", "delivered")
def _(c):
    c.send(OP_PONG, b"nobody asked")
    c.send(OP_TEXT, sendmessage("after pong"))
    return outcome(c, "after pong")


@case("10 pings in one write", "10 pongs", deviation="a pong for the first ping only")
def _(c):
    c.send_raw(b"".join(wsraw.encode_frame(OP_PING, b"ping%d" % i) for i in range(10)))
    c.send(OP_TEXT, sendmessage("after pings"))
    pongs = []
    got = outcome(c, "after pings", pongs=pongs)
    payloads = [f.payload for f in pongs if f.opcode == OP_PONG]
    if got != "delivered":
        return got
    if payloads == [b"ping%d" % i for i in range(10)]:
        return "10 pongs"
    if payloads == [b"ping0"]:
        return "a pong for the first ping only"
    return f"pongs {payloads}"


# ---- close ---------------------------------------------------------------

@case("close 1000 with a reason: echoed", "close 1000, reason echoed")
def _(c):
    c.close(1000, "bye")
    f, how = c.expect_close()
    if not f:
        return f"no close frame ({how})"
    return close_text(f) + (", reason echoed" if f.close_reason == b"bye" else "")


@case("close with no payload", "close (no code)")
def _(c):
    c.close()
    return closes(c, answer=False)


for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999):
    def _valid(c, code=code):
        c.close(code)
        return closes(c, answer=False)
    case(f"close {code} (valid): echoed", f"close {code}")(_valid)

for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535):
    def _invalid(c, code=code):
        c.close(code)
        return closes(c, answer=False)
    case(f"close {code} (invalid)", "close 1002")(_invalid)


@case("close with a 1-byte payload", "close 1002")
def _(c):
    c.send(OP_CLOSE, b"\x03")
    return closes(c, answer=False)


@case("close 1000, 123-byte reason", "close 1000")
def _(c):
    c.close(1000, "r" * 123)
    return closes(c, answer=False)


@case("close 1000, reason not UTF-8", "close 1007")
def _(c):
    c.close(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64")
    return closes(c, answer=False)


@case("text after close: ignored", "close 1000")
def _(c):
    c.send_raw(wsraw.encode_frame(OP_CLOSE, struct.pack("!H", 1000)) +
               wsraw.encode_frame(OP_TEXT, sendmessage("too late")))
    try:
        while True:
            f = c.recv_frame(3.0)
            if f.opcode == OP_CLOSE:
                return close_text(f)
            if f.opcode == OP_TEXT:
                return "a message after the close"
    except Ended as e:
        return f"no close frame ({e.how})"


# ---- UTF-8 ---------------------------------------------------------------

GREEK = "κόσμε"  # the Autobahn testsuite's


@case("valid UTF-8 in one frame", "delivered")
def _(c):
    c.send(OP_TEXT, sendmessage(GREEK + " ∮ E⋅da = Q 😀"))
    return outcome(c, GREEK + " ∮ E⋅da = Q 😀")


@case("valid UTF-8, code points split across fragments", "delivered")
def _(c):
    msg = sendmessage(GREEK + "😀")
    # One byte per fragment: every multi-byte code point is cut.
    send_fragmented(c, [msg[i:i + 1] for i in range(len(msg))])
    return outcome(c, GREEK + "😀")


INVALID = {
    "invalid byte 0xff": b"\xff",
    "overlong encoding of '/'": b"\xc0\xaf",
    "UTF-16 surrogate U+D800": b"\xed\xa0\x80",
    "code point above U+10FFFF": b"\xf4\x90\x80\x80",
    "lone continuation byte": b"\x80",
}

for what, bad in INVALID.items():
    def _bad(c, bad=bad):
        c.send(OP_TEXT, b'{"action":"sendmessage","data":"' + bad + b'"}')
        return closes(c)
    case(f"{what}, one frame", "close 1007")(_bad)


@case("invalid sequence across a fragment boundary", "close 1007")
def _(c):
    # 0xE2 0x82 starts a 3-byte code point; the next fragment breaks it.
    c.send_raw(wsraw.encode_frame(OP_TEXT, b'{"data":"\xe2\x82', fin=False) +
               wsraw.encode_frame(OP_CONT, b'("}'))
    return closes(c)


@case("code point cut at the end of the message", "close 1007")
def _(c):
    c.send_raw(wsraw.encode_frame(OP_TEXT, b'{"data":"', fin=False) +
               wsraw.encode_frame(OP_CONT, b'x"}\xe2\x82'))
    return closes(c)


@case("invalid UTF-8 in the first fragment, message never finished (fail fast)", "close 1007")
def _(c):
    c.send(OP_TEXT, b'{"data":"\xff', fin=False)
    return closes(c)


class WsConformance(StackTest):
    ENV = ENV

    def test_rfc6455_cases(self):
        port = self.stack.edges[0].port
        rows, failures = [], []
        for name, expected, deviation, fn in CASES:
            c = wsraw.connect(port)
            try:
                got = fn(c)
            except (Ended, OSError) as e:
                got = f"error: {e}"
            finally:
                c.abort()
            if got == expected:
                verdict = "ok"
            elif deviation is not None and got == deviation:
                verdict = "lws 4.1 deviation"
            else:
                verdict = "FAIL"
                failures.append(name)
            rows.append((name, expected, got, verdict))
        w = [max(len(r[i]) for r in rows + [("case", "expected", "got", "")]) for i in range(3)]
        print()
        print(f"{'case':<{w[0]}}  {'expected':<{w[1]}}  {'got':<{w[2]}}  verdict")
        for r in rows:
            print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
        ok = sum(r[3] == "ok" for r in rows)
        dev = sum(r[3] == "lws 4.1 deviation" for r in rows)
        print(f"{len(rows)} cases: {ok} as RFC 6455 expects, {dev} documented deviations, "
              f"{len(failures)} failures")
        self.assertTrue(self.stack.edges[0].alive(), "the edge died")
        self.assertEqual(failures, [])


if __name__ == "__main__":
    unittest.main()
