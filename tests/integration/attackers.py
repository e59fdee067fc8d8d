"""Hostile clients for the latency-under-attack test, one kind per process
(so that they compete with the edge for the machine, not with the
measuring client's own thread). Each runs until killed, and keeps its
attack going: what the edge closes, it opens again.

    python3 attackers.py half_open PORT N      N connections with an unfinished HTTP request
    python3 attackers.py flood PORT             one client sending messages as fast as it can
    python3 attackers.py slow_reader PORT       one client that reads nothing
    python3 attackers.py storm PORT RATE        RATE WebSocket connects (and closes) a second

Every second each prints one line of counts to stdout ("opened 12 closed 3").
"""
import os
import select
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wsraw  # noqa: E402


def report(counts):
    print(" ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)


def half_open(port, n):
    counts = {"opened": 0, "closed": 0}
    poller = select.poll()
    socks = {}

    def open_one():
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks[s.fileno()] = s
        poller.register(s, select.POLLOUT | select.POLLIN | select.POLLRDHUP)
        counts["opened"] += 1

    for _ in range(n):
        open_one()
    sent = set()
    last = time.monotonic()
    while True:
        for fd, ev in poller.poll(200):
            s = socks.get(fd)
            if s is None:
                continue
            if ev & (select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                poller.unregister(fd)
                del socks[fd]
                sent.discard(fd)
                s.close()
                counts["closed"] += 1
                open_one()
            elif ev & select.POLLOUT and fd not in sent:
                try:
                    s.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
                except OSError:
                    pass
                sent.add(fd)
                poller.modify(s, select.POLLIN | select.POLLRDHUP)
        if time.monotonic() - last >= 1:
            report(counts)
            last = time.monotonic()


def flood(port):
    counts = {"connects": 0, "frames": 0, "closed": 0}
    frame = wsraw.encode_frame(wsraw.OP_TEXT, b'{"action":"sendmessage","data":"flood"}' * 1,
                               mask_key=b"abcd")
    batch = frame * 50
    last = time.monotonic()
    while True:
        try:
            c = wsraw.connect(port)
        except (OSError, wsraw.HandshakeError):
            time.sleep(0.1)
            continue
        counts["connects"] += 1
        done = threading.Event()

        def drain(c=c):
            try:
                while not done.is_set():
                    c.recv_frame(30)
            except Exception:
                pass
            done.set()
        threading.Thread(target=drain, daemon=True).start()
        try:
            while not done.is_set():
                c.send_raw(batch)
                counts["frames"] += 50
                if time.monotonic() - last >= 1:
                    report(counts)
                    last = time.monotonic()
        except OSError:
            pass
        done.set()
        c.abort()
        counts["closed"] += 1


def slow_reader(port):
    counts = {"connects": 0, "closed": 0}
    last = time.monotonic()
    while True:
        try:
            c = wsraw.connect(port, rcvbuf=4096)
        except (OSError, wsraw.HandshakeError):
            time.sleep(0.1)
            continue
        counts["connects"] += 1
        p = select.poll()
        p.register(c.sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        while not p.poll(1000):
            if time.monotonic() - last >= 1:
                report(counts)
                last = time.monotonic()
        c.abort()
        counts["closed"] += 1


def storm(port, rate):
    counts = {"upgraded": 0, "refused": 0, "failed": 0}
    interval = 1.0 / rate
    nxt = time.monotonic()
    last = nxt
    while True:
        try:
            c = wsraw.connect(port, timeout=5)
            counts["upgraded"] += 1
            c.abort()
        except wsraw.HandshakeError:
            counts["refused"] += 1
        except OSError:
            counts["failed"] += 1
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.monotonic()
        if time.monotonic() - last >= 1:
            report(counts)
            last = time.monotonic()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "half_open":
        half_open(port, int(sys.argv[3]))
    elif kind == "flood":
        flood(port)
    elif kind == "slow_reader":
        slow_reader(port)
    elif kind == "storm":
        storm(port, float(sys.argv[3]))
    else:
        sys.exit(f"unknown attacker {kind}")
