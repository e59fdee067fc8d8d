#!/usr/bin/python3
"""Throughput of one topology, for docs/benchmarks.md ("Cluster") and the
capacity model of docs/architecture.md: a fresh stack (harness.py /
cluster.py, free ports, a temp dir, build/bin or DW_BIN_DIR), then dwbench
scenarios against it, each with every process's CPU (dwbench --pid), one
JSON line per scenario on stdout.

  /usr/bin/python3 tests/integration/clusterbench.py --topology r3
  /usr/bin/python3 tests/integration/clusterbench.py --topology single --scenarios ingest

Topologies: single (one nats-server, streams R1), r1 (3 nodes, streams R1),
r3 (3 nodes, streams R3); 1 edge, 1 dispatcher, 1 registry each (the
question is what the bus costs, not the services' spread). Scenarios:
ingest (500 v1 connections in 100 rooms of 5, 100 senders, window 32),
fanout (1,000 plain connections, 10 senders, window 32), connect (3,000
connections opened as fast as they go and held), churn (1,000 connects and
closes per second for 10 s with 100 msgs/s flowing). The stack runs with
the load generator's limits off (faultload.STACK_ENV) and log level warn.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import faultload
from cluster import ClusterStack
from harness import BIN, Stack

SCENARIOS = {
    "ingest": ["--connections", "500", "--senders", "100", "--rooms", "100", "--window", "32",
               "--duration", "10"],
    "fanout": ["--connections", "1000", "--senders", "10", "--duration", "10"],
    "connect": ["--idle", "--connections", "3000", "--duration", "3", "--connect-timeout", "60"],
    "churn": ["--connections", "200", "--senders", "10", "--rate", "100", "--churn", "1000",
              "--churn-hold-ms", "1000", "--duration", "10", "--source-ips", "4"],
}


def start(topology):
    env = dict(faultload.STACK_ENV, DW_LOG_LEVEL="warn")
    if topology == "single":
        st = Stack(edges=1, env=env).start()
        nats = {"nats": st.nats.pid}
    else:
        st = ClusterStack(nodes=3, edges=1, dispatchers=1, registries=1, env=env, api=False,
                          stream_replicas=3 if topology == "r3" else 1).start()
        nats = {f"nats_{n.server_name}": n.pid for n in st.cluster.nodes}
    pids = dict(nats, edge=st.edges[0].pid, dispatcher=st.dispatcher.pid,
                registry=st.registry.pid)
    return st, pids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", choices=("single", "r1", "r3"), required=True)
    ap.add_argument("--scenarios", default="ingest,fanout,connect,churn")
    a = ap.parse_args()
    for name in a.scenarios.split(","):
        st, pids = start(a.topology)  # a fresh stack per scenario
        try:
            cmd = [os.path.join(BIN, "dwbench"), "--url", st.edges[0].url, "--drain", "10",
                   "--scenario", f"{a.topology}-{name}", "--log-level", "warn",
                   "--pid", ",".join(f"{k}={v}" for k, v in pids.items()), *SCENARIOS[name]]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "{}"
            out = json.loads(line)
            out["topology"] = a.topology
            out["command"] = " ".join(["dwbench", *SCENARIOS[name]])
            if r.returncode:
                out["dwbench_exit"] = r.returncode
                out["stderr"] = r.stderr[-500:]
            print(json.dumps(out), flush=True)
        finally:
            st.stop()
            shutil.rmtree(st.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
