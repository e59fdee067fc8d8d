#!/usr/bin/python3
"""Instructions per delivery or per connect of the edge (or of
dwbench-baseline-ws) under callgrind: numbers that do not depend on the
load of the machine (docs/benchmarks.md, "Edge instructions").

fanout (default): a local stack (tests/integration/harness.py: nats-server,
registry, dispatcher, deadletter, api; no NATS users), the edge under
callgrind, dwbench with --connections/--senders for --duration seconds; the
counters are zeroed when dwbench is ready and dumped when it ends, so only
the measured part counts. Prints Ir / deliveries.

--connect: dwbench --idle --sync=0 opens --connections connections; the
counters are zeroed before it starts and dumped once the edge reports every
one of them ready (dw_edge_connections), so the count covers accept,
handshake, the connect event and its ack. Prints Ir / connections.

The callgrind files stay in --out (callgrind_annotate them). Everything
started is stopped by PID, also on failure.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("which", choices=["edge", "baseline"], help="the edge, or dwbench-baseline-ws")
ap.add_argument("--bin", default=os.path.join(here, "..", "build", "bin"), help="binaries [build/bin]")
ap.add_argument("--out", default="callgrind-out", help="directory for callgrind files and logs")
ap.add_argument("--tag", default="run", help="name of this run's files")
ap.add_argument("--connections", type=int, default=1000)
ap.add_argument("--senders", type=int, default=10)
ap.add_argument("--rate", type=int, default=0, help="dwbench --rate (0: window 32 per sender)")
ap.add_argument("--rooms", type=int, default=0, help="dwbench --rooms (dynamowave.v1, rooms of connections/N)")
ap.add_argument("--duration", type=int, default=10)
ap.add_argument("--connect", action="store_true", help="count the connects instead (edge only)")
ap.add_argument("--env", action="append", default=[], help="K=V for the edge (repeatable)")
a = ap.parse_args()
if a.connect and a.which != "edge":
    ap.error("--connect measures the edge")

sys.path.insert(0, os.path.join(here, "..", "tests", "integration"))
os.environ["DW_BIN_DIR"] = os.path.abspath(a.bin)
from harness import Stack, free_port, wait_until  # noqa: E402

os.makedirs(a.out, exist_ok=True)
cg = os.path.join(a.out, f"callgrind.{a.tag}")
vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}"]
bench_log = os.path.join(a.out, f"dwbench.{a.tag}.log")
st = proc = None
try:
    port = free_port()
    if a.which == "baseline":
        proc = subprocess.Popen(vg + [os.path.join(a.bin, "dwbench-baseline-ws"), "--port", str(port),
                                      "--log-level", "warn"], stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(a.out, f"valgrind.{a.tag}.log"), "w"))

        def up():
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return True
            except OSError:
                return False
        wait_until(up, 120, "the baseline under valgrind to listen")
    else:
        # As scripts/bench.sh: the abuse limits would throttle a load generator.
        st = Stack(edges=0, env={"DW_LOG_LEVEL": "warn", "DW_MSG_RATE": "0", "DW_EDGE_MSG_RATE": "0",
                                 "DW_EDGE_CONN_RATE": "0", "DW_IP_MAX_CONNS": "0",
                                 "DW_IP_CONN_RATE": "0"}).start()
        env = st.env(PORT=port, HOST="127.0.0.1", STATUS_PORT=0,
                     **dict(kv.split("=", 1) for kv in a.env))
        proc = subprocess.Popen(vg + [os.path.join(a.bin, "edge")], env=env, stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(a.out, f"valgrind.{a.tag}.log"), "w"))
        wait_until(lambda: st.http_status(port, "/readyz") == 200, 120, "the edge under valgrind")

    def ctl(*args):
        subprocess.run(["callgrind_control", *args, str(proc.pid)], check=True, capture_output=True)

    args = [os.path.join(a.bin, "dwbench"), "--url", f"ws://127.0.0.1:{port}/",
            "--connections", str(a.connections), "--senders", str(a.senders),
            "--duration", "1" if a.connect else str(a.duration), "--drain", "30",
            "--connect-timeout", "300",
            "--log-level", "info"]
    if a.rate:
        args += ["--rate", str(a.rate)]
    if a.rooms:
        args += ["--rooms", str(a.rooms)]
    if a.connect:
        args += ["--idle", "--sync=0"]
        ctl("-z")
    bench = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(bench_log, "w"), text=True)
    wait_until(lambda: 'msg="ready"' in open(bench_log).read() or bench.poll() is not None, 900,
               "dwbench to be ready", 0.05)
    if a.connect:
        def held():
            try:
                t = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                return False
            m = re.search(r"^dw_edge_connections (\d+)", t, re.M)
            return m and int(m.group(1)) >= a.connections
        wait_until(held, 900, "every connection ready at the edge", 0.2)
        ctl("-d")
    else:
        ctl("-z")
    res, _ = bench.communicate(timeout=1800)
    if not a.connect:
        ctl("-d")
finally:
    if proc:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if st:
        st.cleanup()

r = json.loads(res.strip().splitlines()[-1])
dump = f"{cg}.1"  # the first dump: the measured part
total = 0
for line in open(dump):
    if line.startswith("summary:"):
        total = int(line.split()[1])
        break
n = a.connections if a.connect else r["delivered"]
print(json.dumps({"which": a.which, "tag": a.tag, "callgrind": dump, "instructions": total,
                  "unit": "connect" if a.connect else "delivery", "count": n,
                  "instructions_per_unit": round(total / n, 1) if n else None,
                  "lost": r.get("lost"), "dup": r.get("dup"), "sent": r.get("sent")}))
