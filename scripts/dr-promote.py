#!/usr/bin/python3
"""Promote a standby region after the primary region is lost: turn its
read-only mirrors of DW_MSG and DW_CONN into the writable streams the
services use, keeping every message and every sequence number.

  scripts/dr-promote.py [--nats-url nats://HOST:PORT] [--backup-dir DIR]
                        [--dry-run] [STREAM ...]

STREAM: DW_MSG and DW_CONN by default (also DW_DLQ, if mirrored). For each:

  1. STREAM.INFO: it must be a mirror; its last sequence and lag are shown
     (what the primary stored after the lag is gone with the region);
  2. a snapshot of the mirror goes to DIR/<stream>.snapshot (and its info to
     DIR/<stream>.info.json): the promotion's only copy in between, keep it;
  3. the mirror stream is deleted and the snapshot restored under the same
     name with the mirror's settings minus the mirror, plus the stream's
     subjects (dw.msg.>, dw.conn.>, dw.dlq.>) and a 2 min duplicate window,
     then updated once with that configuration (so the store keeps it);
  4. the restored stream must have the same last sequence;
  5. DW_MSG only: a durable consumer `dispatcher` is started at the last
     sequence and made to ack it. Every dispatcher partition starts after the
     highest floor it finds, that consumer's ack floor included
     (docs/architecture.md), so the standby's dispatchers deliver only what
     is stored from now on; what the lost region had stored, clients get by
     resuming (`join` with `since`) or with `history`.

Mirrors cannot be made writable in place before nats-server 2.12; the
snapshot/restore keeps sequence numbers, timestamps and headers (Nats-Msg-Id
included), which resume and history depend on.

Connection: --nats-url or the first URL of DW_NATS_URL (default
nats://127.0.0.1:4222), one plain-TCP connection (no TLS: run it next to the
standby's nats-server); DW_NATS_USER with DW_NATS_PASSWORD_FILE or
DW_NATS_PASSWORD log in as that user, which must be allowed $JS.API.>.
Exit status 0 when every stream was promoted (or, with --dry-run, could be).
docs/operations.md, "A second region", is the whole procedure.
"""
import argparse
import json
import os
import sys
import time

from natsproto import NatsConn  # scripts/natsproto.py, next to this script

SUBJECTS = {"DW_MSG": ["dw.msg.>"], "DW_CONN": ["dw.conn.>"], "DW_DLQ": ["dw.dlq.>"]}
DEDUP_NS = 120 * 10**9
CHUNK = 128 * 1024


class Nats(NatsConn):
    """natsproto's client, plus what a promotion needs: JetStream API calls
    that raise on an error reply, a snapshot (chunks acked one by one) and a
    restore."""

    def __init__(self, url, user=None, password=None, timeout=10.0):
        hostport = url.split("://", 1)[-1].split(",")[0].rsplit("@", 1)[-1]
        host, _, port = hostport.rpartition(":")
        super().__init__(host or "127.0.0.1", int(port or 4222), user=user, password=password,
                         name="dr-promote", timeout=timeout)

    def msg(self, timeout):
        """The next message: (subject, reply, headers, payload)."""
        return self.next_msg(time.monotonic() + timeout)

    def pub(self, subject, payload=b"", reply=None):
        self.publish(subject, payload, reply)

    def request(self, subject, payload=b"", timeout=10.0):
        try:
            return super().request(subject, payload, timeout)
        except ConnectionRefusedError:
            raise ConnectionError(f"no responders on {subject} (JetStream enabled?)") from None

    def js(self, api, body=None, timeout=10.0):
        out = super().js(api, body, timeout)
        if "error" in out:
            raise RuntimeError(f"{api}: {out['error'].get('description', out['error'])}")
        return out

    def snapshot(self, stream, path):
        """Stream a snapshot into path; returns its size."""
        deliver = self.new_inbox("snap")
        self.js(f"STREAM.SNAPSHOT.{stream}", {"deliver_subject": deliver, "no_consumers": True,
                                                "chunk_size": CHUNK}, timeout=30)
        size = 0
        with open(path + ".tmp", "wb") as f:
            while True:
                subj, reply, hdr, data = self.msg(30)
                if subj != deliver:
                    continue
                if not data:  # the end: headers only ("NATS/1.0 204", or an error)
                    if hdr and not hdr.startswith(b"NATS/1.0 204"):
                        raise RuntimeError(f"snapshot of {stream} ended with {hdr[:60]!r}")
                    break
                f.write(data)
                size += len(data)
                if reply:
                    self.pub(reply)  # flow control: the server sends more on acks
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        return size

    def restore(self, stream, config, state, path):
        """Restore the snapshot in path as stream with config."""
        rep = self.js(f"STREAM.RESTORE.{stream}", {"config": config, "state": state}, timeout=30)
        deliver = rep["deliver_subject"]
        with open(path, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                self.request(deliver, chunk, timeout=30)
        out = json.loads(self.request(deliver, b"", timeout=120))
        if "error" in out:
            raise RuntimeError(f"restore of {stream}: {out['error'].get('description')}")
        return out


def dispatch_floor(nc, stream, last):
    """Make `last` the floor every dispatcher partition starts after: the
    durable consumer `dispatcher` (the one dispatchers used before DW_MSG
    was partitioned, whose ack floor they still honour), started at `last`
    and made to ack it: its ack floor is then `last`."""
    name = "dispatcher"
    nc.js(f"CONSUMER.DURABLE.CREATE.{stream}.{name}", {
        "stream_name": stream,
        "config": {"durable_name": name, "deliver_policy": "by_start_sequence",
                   "opt_start_seq": last, "ack_policy": "explicit",
                   "filter_subject": "dw.msg.>"}})
    inbox = nc.new_inbox("next")
    nc.pub(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
           json.dumps({"batch": 1, "expires": 5 * 10**9}).encode(), inbox)
    deadline = time.monotonic() + 10
    while True:
        # A delivery keeps its own subject; its ack subject names the consumer.
        _, reply, _, _ = nc.msg(max(0.1, deadline - time.monotonic()))
        if reply and reply.startswith(f"$JS.ACK.{stream}.{name}."):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"dr-promote: {stream} message {last} not delivered")
    nc.request(reply, b"+ACK")  # acked once the server answers
    floor = nc.js(f"CONSUMER.INFO.{stream}.{name}")["ack_floor"]["stream_seq"]
    if floor != last:
        raise SystemExit(f"dr-promote: dispatch floor is {floor}, not {last}")
    return floor


def promoted_config(stream, mirror_config):
    """The mirror's settings as a writable stream of its own."""
    cfg = {k: v for k, v in mirror_config.items()
           if k not in ("mirror", "sources", "subjects", "mirror_direct", "sealed")}
    cfg["name"] = stream
    cfg["subjects"] = SUBJECTS.get(stream) or []
    if not cfg["subjects"]:
        raise SystemExit(f"dr-promote: no subjects known for {stream}")
    if not cfg.get("duplicate_window"):
        cfg["duplicate_window"] = DEDUP_NS
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="docs/operations.md, 'A second region'.")
    ap.add_argument("streams", nargs="*", default=["DW_MSG", "DW_CONN"], metavar="STREAM")
    ap.add_argument("--nats-url", default=os.environ.get("DW_NATS_URL", "nats://127.0.0.1:4222"))
    ap.add_argument("--backup-dir", default=".", help="where the snapshots go (default: .)")
    ap.add_argument("--dry-run", action="store_true", help="check and show, change nothing")
    a = ap.parse_args(argv)

    password = os.environ.get("DW_NATS_PASSWORD")
    pf = os.environ.get("DW_NATS_PASSWORD_FILE")
    if pf:
        with open(pf) as f:
            password = f.read().strip()
    nc = Nats(a.nats_url, os.environ.get("DW_NATS_USER"), password)
    os.makedirs(a.backup_dir, exist_ok=True)
    for stream in a.streams:
        info = nc.js(f"STREAM.INFO.{stream}")
        cfg, state = info["config"], info["state"]
        if not cfg.get("mirror"):
            print(f"{stream}: not a mirror (already promoted?): left as it is", file=sys.stderr)
            continue
        m = info.get("mirror") or {}
        print(f"{stream}: mirror of {cfg['mirror'].get('name')}, last_seq {state['last_seq']}, "
              f"messages {state['messages']}, lag {m.get('lag')}, last contact "
              f"{(m.get('active') or 0) / 1e9:.1f} s ago")
        new = promoted_config(stream, cfg)
        if a.dry_run:
            print(f"{stream}: would become {json.dumps(new)}")
            continue
        snap = os.path.join(a.backup_dir, f"{stream}.snapshot")
        with open(os.path.join(a.backup_dir, f"{stream}.info.json"), "w") as f:
            json.dump(info, f, indent=1)
        size = nc.snapshot(stream, snap)
        print(f"{stream}: snapshot {snap} ({size} bytes)")
        nc.js(f"STREAM.DELETE.{stream}")
        nc.restore(stream, new, state, snap)
        # The restored store keeps the snapshot's own settings on disk (the
        # mirror's); an update writes the new ones, so a restart keeps them.
        nc.js(f"STREAM.UPDATE.{stream}", new)
        after = nc.js(f"STREAM.INFO.{stream}")
        if after["state"]["last_seq"] != state["last_seq"] or after["config"].get("mirror"):
            raise SystemExit(f"dr-promote: {stream} restored wrong: {after['state']}")
        print(f"{stream}: promoted: subjects {new['subjects']}, last_seq {state['last_seq']}")
        if stream == "DW_MSG" and state["last_seq"]:
            floor = dispatch_floor(nc, stream, state["last_seq"])
            print(f"{stream}: dispatchers start after {floor} (consumer 'dispatcher')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
