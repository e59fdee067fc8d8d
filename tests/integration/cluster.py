"""Cluster harness: a real nats-server JetStream cluster on loopback ports
and a DynamoWave stack with several of every service on it (issue 14).

- NatsCluster: N nats-server nodes (3 by default), each with its own client,
  route and monitoring port, its own store directory and config file, one
  cluster name, routes to every other node. Helpers to ask JetStream which
  node leads a stream (`$JS.API.STREAM.INFO.<stream>` -> cluster.leader),
  which node a process is connected to (its TCP sockets, from /proc), and
  to kill -9 / SIGSTOP / restart one node by name.
- ClusterStack: a harness.Stack whose services get every node's URL
  (DW_NATS_URL=a,b,c), with streams at DW_STREAM_REPLICAS (3), several
  dispatchers, several registry replicas and several edges; each process
  can be added, stopped (SIGTERM), killed or restarted on its own.
- RawNats: scripts/natsproto.py's minimal NATS client (request/reply,
  publish, subscriptions), for JetStream API calls the services do not make.

Everything runs in one temp directory on free ports and is stopped by PID.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from harness import BIN, NATS_SERVER, Proc, Stack, free_port, wait_until

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "scripts"))
from natsproto import NatsConn  # noqa: E402  (scripts/ is not a package)

CLUSTER_NAME = "dw-test"


class RawNats(NatsConn):
    """scripts/natsproto.py's client on a loopback port, for tests."""

    def __init__(self, port, timeout=5.0, name="rawnats"):
        super().__init__("127.0.0.1", port, name=name, timeout=timeout)


# ---------------------------------------------------------------------------
# the NATS cluster


class NatsNode(Proc):
    """One nats-server of a cluster: .server_name, .port, .route_port,
    .http_port, .store, .conf; .paused while SIGSTOPped by pause()."""
    paused = False

    def pause(self):
        super().pause()
        self.paused = True

    def resume(self):
        super().resume()
        self.paused = False

    def start(self):
        self.paused = False
        return super().start()

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"


class NatsCluster:
    """N nats-server nodes with JetStream, one cluster, on loopback.

    extra_conf: more lines for every node's config (e.g. tuning);
    node_conf: {server_name: lines} for one node."""

    def __init__(self, dirpath, nodes=3, name=CLUSTER_NAME, extra_conf="", node_conf=None,
                 domain=None):
        self.dir = dirpath
        self.name = name
        self.extra_conf = extra_conf
        self.node_conf = node_conf or {}
        self.domain = domain
        self.nodes = []
        for i in range(1, nodes + 1):
            sn = f"n{i}"
            n = NatsNode(sn, [], dict(os.environ), os.path.join(dirpath, f"nats-{sn}.log"))
            n.server_name = sn
            n.port, n.route_port, n.http_port = free_port(), free_port(), free_port()
            n.store = os.path.join(dirpath, f"nats-{sn}")
            n.conf = os.path.join(dirpath, f"nats-{sn}.conf")
            n.argv = [NATS_SERVER, "-c", n.conf]
            self.nodes.append(n)

    @property
    def urls(self):
        """Every node's client URL, comma-separated (DW_NATS_URL)."""
        return ",".join(n.url for n in self.nodes)

    def node(self, name):
        for n in self.nodes:
            if n.server_name == name:
                return n
        raise KeyError(name)

    def write_conf(self, n):
        routes = "\n".join(f"    nats-route://127.0.0.1:{o.route_port}"
                           for o in self.nodes if o is not n)
        domain = f"  domain: {self.domain}\n" if self.domain else ""
        text = (f"server_name: {n.server_name}\n"
                f"listen: 127.0.0.1:{n.port}\n"
                f"http: 127.0.0.1:{n.http_port}\n"
                f"max_payload: 8MB\n"
                f"jetstream {{\n  store_dir: \"{n.store}\"\n{domain}}}\n"
                f"cluster {{\n  name: {self.name}\n  listen: 127.0.0.1:{n.route_port}\n"
                f"  routes: [\n{routes}\n  ]\n}}\n"
                f"{self.extra_conf}\n{self.node_conf.get(n.server_name, '')}\n")
        os.makedirs(n.store, exist_ok=True)
        with open(n.conf, "w") as f:
            f.write(text)

    def start(self, timeout=30):
        for n in self.nodes:
            self.write_conf(n)
            n.start()
        for n in self.nodes:
            wait_until(lambda: self.accepts(n) or not n.alive(), 15,
                       f"{n.server_name} to accept connections")
            assert n.alive(), f"{n.server_name} died:\n{n.tail()}"
        self.wait_meta_leader(timeout)
        return self

    def stop(self):
        codes = {}
        for n in self.nodes:
            if n.p is not None:
                codes[n.server_name] = n.stop()
        return codes

    def live(self):
        """The nodes that run and are not stopped (SIGSTOP)."""
        return [n for n in self.nodes if n.alive() and not n.paused]

    @staticmethod
    def accepts(n):
        try:
            with socket.create_connection(("127.0.0.1", n.port), timeout=0.2):
                return True
        except OSError:
            return False

    def jsz(self, n, query=""):
        """A node's /jsz (monitoring port), or None."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{n.http_port}/jsz{query}",
                                        timeout=2) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def meta_leader(self):
        """The meta leader's node as some live node sees it, or None."""
        for n in self.live():
            j = self.jsz(n) or {}
            leader = (j.get("meta_cluster") or {}).get("leader")
            if leader:
                return self.node(leader)
        return None

    def wait_meta_leader(self, timeout=30):
        return wait_until(self.meta_leader, timeout, "a JetStream meta leader")

    def raw(self, node=None, timeout=5.0):
        """A RawNats connection to node (default: the first live one)."""
        n = node or next(n for n in self.live() if self.accepts(n))
        return RawNats(n.port, timeout=timeout)

    def stream_info(self, stream, node=None, timeout=2.0):
        """$JS.API.STREAM.INFO.<stream> through node (or any live one); the
        reply as a dict, or None when nothing answers in time."""
        nodes = [node] if node else self.live()
        for n in nodes:
            try:
                with self.raw(n, timeout=timeout) as r:
                    info = r.js(f"STREAM.INFO.{stream}", timeout=timeout)
                if "error" not in info:
                    return info
            except (OSError, TimeoutError, ConnectionError, ValueError):
                continue
        return None

    def leader(self, stream):
        """The node leading stream (cluster.leader of its info), or None."""
        info = self.stream_info(stream)
        name = ((info or {}).get("cluster") or {}).get("leader")
        return self.node(name) if name else None

    def step_down(self, stream):
        """Ask stream's leader to step down ($JS.API.STREAM.LEADER.STEPDOWN):
        another replica is elected (which one, JetStream picks)."""
        with self.raw() as r:
            return r.js(f"STREAM.LEADER.STEPDOWN.{stream}")

    def move_leader(self, stream, away_from, timeout=60):
        """Step stream's leader down until a node not in away_from leads it."""
        away = {n.server_name for n in away_from}
        deadline = time.monotonic() + timeout
        while True:
            ldr = wait_until(lambda: self.leader(stream), 30, f"{stream} to have a leader")
            if ldr.server_name not in away:
                return ldr
            if time.monotonic() > deadline:
                raise AssertionError(f"{stream}'s leader stays on {ldr.server_name}")
            self.step_down(stream)
            wait_until(lambda: (self.leader(stream) or ldr) is not ldr, 30,
                       f"{stream} to elect another leader")

    def stream_healthy(self, stream, replicas=None):
        """stream has a leader and every replica is current (caught up)."""
        info = self.stream_info(stream)
        c = (info or {}).get("cluster") or {}
        if not c.get("leader"):
            return False
        reps = c.get("replicas") or []
        want = (replicas or len(self.nodes)) - 1
        return len(reps) >= want and all(r.get("current") and not r.get("offline") for r in reps)

    def wait_healthy(self, streams, timeout=60, replicas=None):
        for s in streams:
            wait_until(lambda: self.stream_healthy(s, replicas), timeout, f"{s} to have a leader "
                       "and every replica current")

    def node_of_port(self, port):
        for n in self.nodes:
            if n.port == port:
                return n
        return None

    def connected_nodes(self, pid):
        """The nodes process pid has an established TCP connection to (its
        NATS connections), from /proc: [node, ...] (a node per connection)."""
        ports = {n.port for n in self.nodes}
        return [self.node_of_port(p) for p in tcp_peer_ports(pid) if p in ports]

    def kill9(self, n):
        n.kill9()

    def restart(self, n, timeout=30):
        """Start a node again on its ports and store (after kill9 or stop)."""
        n.restart()
        wait_until(lambda: self.accepts(n) or not n.alive(), timeout,
                   f"{n.server_name} to accept connections again")
        assert n.alive(), f"{n.server_name} died after its restart:\n{n.tail()}"
        return n

    def wait_rejoined(self, n, timeout=60):
        """n sees a meta leader again (it rejoined the cluster)."""
        return wait_until(lambda: ((self.jsz(n) or {}).get("meta_cluster") or {}).get("leader"),
                          timeout, f"{n.server_name} to see a meta leader")


def dump_stacks(p):
    """Every thread's stack of process p (gdb, if there is one), appended to
    its log: for a service that hangs."""
    gdb = shutil.which("gdb")
    if not gdb:
        return
    try:
        r = subprocess.run([gdb, "-p", str(p.pid), "-batch", "-ex", "thread apply all bt"],
                           capture_output=True, text=True, timeout=60)
        with open(p.log_path, "a") as f:
            f.write(f"\n=== {p.name} did not stop on SIGTERM: its threads ===\n{r.stdout}\n")
    except (OSError, subprocess.TimeoutExpired):
        pass


def tcp_peer_ports(pid):
    """Remote ports of pid's established IPv4 TCP connections to 127.0.0.1."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        with open(f"/proc/{pid}/net/tcp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if state == "01" and inode in inodes and remote.startswith("0100007F:"):
            out.append(int(remote.split(":")[1], 16))
    return out


# ---------------------------------------------------------------------------
# the stack on the cluster


class ClusterStack(Stack):
    """A DynamoWave stack on a NatsCluster: `registries` registry replicas
    (r0, r1, ...), `dispatchers` dispatchers, a deadletter service, the api
    and `edges` edges; every process gets every node's URL. Processes are
    in .registries, .dispatchers, .edges (and .registry / .dispatcher: the
    first of each, for code written for one)."""

    def __init__(self, nodes=3, edges=2, dispatchers=2, registries=2, env=None, edge_ids=None,
                 stream_replicas=None, nats_conf="", api=True):
        super().__init__(edges=edges, env=env, edge_ids=edge_ids)
        self.cluster = NatsCluster(self.dir, nodes, extra_conf=nats_conf)
        self.nats_url = self.cluster.urls
        self.nats_port = self.cluster.nodes[0].port
        self.stream_replicas = stream_replicas or min(3, nodes)
        self.n_dispatchers = dispatchers
        self.n_registries = registries
        self.with_api = api
        self.registries = []
        self.dispatchers = []
        self._names = {}

    def _name(self, base):
        i = self._names.get(base, 0)
        self._names[base] = i + 1
        return f"{base}{i}"

    # --- processes ---

    def start_nats(self):
        self.cluster.start()
        # Stack.stop() stops self.nats last; the cluster is stopped in stop().
        self.nats = None

    def nats_up(self):
        return any(self.cluster.accepts(n) for n in self.cluster.nodes if n.alive())

    def _service(self, base, binary, env):
        status_port = int(env.setdefault("STATUS_PORT", free_port()))
        p = self._spawn(self._name(base), [os.path.join(BIN, binary)],
                        self.env(**self._svc(binary, env)))
        p.status_port = status_port
        p.binary = binary
        return p

    def start_registry(self, replica=None, wait=True, **env):
        """One more registry replica (r0, r1, ... unless replica= names it)."""
        rid = replica or f"r{len(self.registries)}"
        env.setdefault("REPLICA_ID", rid)
        env.setdefault("STREAM_REPLICAS", self.stream_replicas)
        p = self._service("registry-", "registry", env)
        p.replica = rid
        self.registries.append(p)
        if self.registry is None:
            self.registry = p
        if wait:
            self.wait_ready(p, 60)
        return p

    def start_dispatcher(self, wait=True, **env):
        p = self._service("dispatcher", "dispatcher", env)
        self.dispatchers.append(p)
        if self.dispatcher is None:
            self.dispatcher = p
        if wait:
            self.wait_ready(p, 60)
        return p

    def start_deadletter(self, **env):
        env.setdefault("STREAM_REPLICAS", self.stream_replicas)
        return super().start_deadletter(**env)

    def wait_ready(self, p, timeout=30):
        wait_until(lambda: self.ready(p) or not p.alive(), timeout, f"{p.name} to be ready")
        assert p.alive(), f"{p.name} died:\n{p.tail()}"
        return p

    def ready(self, p):
        if isinstance(p, NatsNode):
            return p.alive() and self.cluster.accepts(p)
        return super().ready(p)

    def start(self):
        try:
            self.start_nats()
            # The first registry creates the streams (at stream_replicas).
            self.start_registry()
            for _ in range(1, self.n_registries):
                self.start_registry()
            for _ in range(self.n_dispatchers):
                self.start_dispatcher()
            self.start_deadletter()
            if self.with_api:
                self.start_api()
            for i in range(self.n_edges):
                if i < len(self.edge_ids):
                    self.start_edge(EDGE_ID=self.edge_ids[i])
                else:
                    self.start_edge()
            self.cluster.wait_healthy(["DW_MSG", "DW_CONN"], replicas=self.stream_replicas)
            wait_until(self.partitions_settled, 60, "the 16 DW_MSG partitions to be held")
        except BaseException:
            self.stop()
            print(self.logs())
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def stop(self):
        # Services first (they publish on the way out), the nodes last. A
        # service that does not stop on SIGTERM in 10 s is hung: its threads'
        # stacks go to its log (gdb) before it is killed.
        codes = {}
        for p in reversed(self.procs):
            if p.p is not None and p.p.poll() is None:
                p.p.send_signal(signal.SIGCONT)
                p.p.terminate()
                try:
                    p.p.wait(10)
                except subprocess.TimeoutExpired:
                    dump_stacks(p)
            codes[p.name] = p.stop()
        codes.update(self.cluster.stop())
        return codes

    def logs(self):
        return "\n".join(f"--- {p.name} ---\n{p.tail()}"
                         for p in self.procs + self.cluster.nodes)

    # --- what the dispatchers hold ---

    def metrics(self, p):
        """p's status port's metrics as {'name{labels}': value} ({} when it
        does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{p.status_port}/metrics",
                                        timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def partitions(self):
        """{dispatcher name: dw_dispatcher_partitions} of the live ones."""
        out = {}
        for d in self.dispatchers:
            if d.alive():
                m = self.metrics(d)
                if "dw_dispatcher_partitions" in m:
                    out[d.name] = int(m["dw_dispatcher_partitions"])
        return out

    def partitions_settled(self, live=None):
        """Every partition held once, by the live dispatchers, each holding
        some (when there are at most 16); returns the map or None."""
        parts = self.partitions()
        want = live if live is not None else sum(1 for d in self.dispatchers if d.alive())
        if len(parts) != want or sum(parts.values()) != 16:
            return None
        if want <= 16 and any(v == 0 for v in parts.values()):
            return None
        return parts

    def edge_nodes(self):
        """{edge name: [node names]} the edges' NATS connections go to."""
        return {e.name: [n.server_name for n in self.cluster.connected_nodes(e.pid)]
                for e in self.edges if e.alive()}
