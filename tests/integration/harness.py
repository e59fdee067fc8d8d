"""Test harness: a real nats-server, the real service binaries, real
WebSocket clients (python3-websockets). Everything runs on loopback, on
free ports, in a temp directory; everything started here is stopped here,
by PID, also when a test fails.

Environment: DW_BIN_DIR (where edge, registry, dispatcher, dwctl are),
NATS_SERVER (default: nats-server on PATH).
"""
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

import websockets

BIN = os.environ.get("DW_BIN_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "bin")
NATS_SERVER = os.environ.get("NATS_SERVER") or shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=15.0, what="condition", interval=0.02):
    """Poll pred() until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def await_until(pred, timeout=15.0, what="condition", interval=0.02):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Proc:
    def __init__(self, name, argv, env, log_path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.p = None

    def start(self):
        self.log = open(self.log_path, "ab")
        self.p = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        return self

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.p.pid, sig)

    def kill9(self):
        self.signal(signal.SIGKILL)
        self.p.wait(10)

    def pause(self):
        """SIGSTOP: the process keeps its sockets but does nothing."""
        self.signal(signal.SIGSTOP)

    def resume(self):
        """SIGCONT after pause()."""
        self.signal(signal.SIGCONT)

    def restart(self):
        """Start the program again with the same arguments and environment
        (so the same ports, store, data dir and DW_EDGE_ID), appending to
        the same log. A process still running is killed with SIGKILL first:
        this is for fault tests, not for clean restarts."""
        if self.alive():
            self.kill9()
        elif self.p is not None:
            self.p.wait(10)
        if getattr(self, "log", None):
            self.log.close()
        self.restarts = getattr(self, "restarts", 0) + 1
        return self.start()

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL after timeout. Returns the exit code."""
        if self.p is None:
            return None
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGCONT)
            self.p.terminate()
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self.log.close()
        return self.p.returncode

    def text(self):
        """The whole log so far ("" if there is none yet)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


class Stack:
    """One DynamoWave stack: nats-server + registry + dispatcher + N edges."""

    def __init__(self, edges=1, env=None, nats_conf=None, nats_env=None, service_env=None,
                 edge_ids=None):
        """nats_conf: a nats-server config file (-c), started with nats_env
        added to its environment; service_env: {"edge"|"registry"|
        "dispatcher"|"deadletter"|"api"|"dwctl": {VAR: value}}, added to
        that program's environment (e.g. its NATS user and password);
        edge_ids: a DW_EDGE_ID per edge (16 of [A-Za-z0-9_-]), so that an
        edge restarted with restart() comes back as the same edge."""
        self.dir = tempfile.mkdtemp(prefix="dw-it-")
        self.nats_conf = nats_conf
        self.nats_env = nats_env or {}
        self.service_env = service_env or {}
        self.nats_port = free_port()
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self.extra_env = env or {}
        self.procs = []
        self.edges = []
        self.registry = None
        self.dispatcher = None
        self.deadletter = None
        self.api = None
        self.nats = None
        self.n_edges = edges
        self.edge_ids = list(edge_ids or [])

    def env(self, **kw):
        e = dict(os.environ)
        e.update({"DW_NATS_URL": self.nats_url, "DW_DATA_DIR": os.path.join(self.dir, "data"),
                  "DW_LOG_LEVEL": "info"})
        e.update(self.extra_env)
        # Keyword names are config fields: PORT=1 sets DW_PORT.
        e.update({(k if k.startswith("DW_") else "DW_" + k): str(v) for k, v in kw.items()})
        return e

    def _svc(self, name, env):
        """The keyword arguments of env() for one program: its service_env,
        then the caller's (which win)."""
        return {**self.service_env.get(name, {}), **env}

    def _spawn(self, name, argv, env):
        p = Proc(name, argv, env, os.path.join(self.dir, f"{name}.log")).start()
        self.procs.append(p)
        return p

    def start_nats(self):
        store = os.path.join(self.dir, "nats")
        os.makedirs(store, exist_ok=True)
        conf = ["-c", self.nats_conf] if self.nats_conf else []
        self.nats = self._spawn("nats", [NATS_SERVER, "-js", *conf, "-a", "127.0.0.1", "-p",
                                         str(self.nats_port), "-sd", store],
                                {**os.environ, **self.nats_env})
        wait_until(self.nats_up, 10, "nats-server to accept connections")

    def start_registry(self, **env):
        # A free status port each: many stacks run on one machine.
        env.setdefault("STATUS_PORT", self.extra_env.get("DW_STATUS_PORT", free_port()))
        self.registry = self._spawn("registry", [os.path.join(BIN, "registry")],
                                    self.env(**self._svc("registry", env)))
        self.registry.status_port = int(env["STATUS_PORT"])
        return self.registry

    def start_dispatcher(self, **env):
        env.setdefault("STATUS_PORT", self.extra_env.get("DW_STATUS_PORT", free_port()))
        self.dispatcher = self._spawn("dispatcher", [os.path.join(BIN, "dispatcher")],
                                      self.env(**self._svc("dispatcher", env)))
        self.dispatcher.status_port = int(env["STATUS_PORT"])
        return self.dispatcher

    def start_api(self, **env):
        """The @connections management API (HTTP on api.mgmt_port, NATS, dw.ops.ping)."""
        mgmt_port, status_port = free_port(), free_port()
        p = self._spawn("api", [os.path.join(BIN, "api")],
                        self.env(**self._svc("api", dict(MGMT_HOST="127.0.0.1", MGMT_PORT=mgmt_port,
                                                         STATUS_PORT=status_port, **env))))
        p.mgmt_port = mgmt_port
        p.status_port = status_port
        p.base_url = f"http://127.0.0.1:{mgmt_port}"
        self.api = p
        wait_until(lambda: self.http_status(status_port, "/readyz") == 200 or not p.alive(), 20,
                   "api to be ready")
        assert p.alive(), f"api died:\n{p.tail()}"
        return p

    def start_deadletter(self, **env):
        """The dead-letter service (DW_DLQ, advisories, dw.ops.dlq.*); status on .status_port."""
        status_port = free_port()
        env.setdefault("STATUS_PORT", status_port)
        p = self._spawn("deadletter", [os.path.join(BIN, "deadletter")],
                        self.env(**self._svc("deadletter", env)))
        p.status_port = int(env["STATUS_PORT"])
        self.deadletter = p
        if p.status_port:
            wait_until(lambda: self.http_status(p.status_port, "/readyz") == 200 or not p.alive(), 20,
                       "deadletter to be ready")
        assert p.alive(), f"deadletter died:\n{p.tail()}"
        return p

    def start_edge(self, **env):
        port = free_port()
        p = self._spawn(f"edge{len(self.edges)}", [os.path.join(BIN, "edge")],
                        self.env(**self._svc("edge", dict(PORT=port, **env))))
        p.port = port
        p.url = f"ws://127.0.0.1:{port}/"
        self.edges.append(p)
        wait_until(lambda: self.http_status(port, "/readyz") == 200 or not p.alive(), 20,
                   f"edge on {port} to be ready")
        assert p.alive(), f"edge died:\n{p.tail()}"
        return p

    def start(self):
        try:
            self.start_nats()
            self.start_registry()
            self.start_dispatcher()
            self.start_deadletter()
            self.start_api()
            # The registry answers queries once it is up: wait for it.
            wait_until(lambda: self.dwctl_ok("status"), 20, "registry to answer")
            for i in range(self.n_edges):
                if i < len(self.edge_ids):
                    self.start_edge(EDGE_ID=self.edge_ids[i])
                else:
                    self.start_edge()
        except BaseException:
            self.stop()
            print(self.logs())
            # setUp never got to register the cleanup: remove the temp dir here.
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def nats_up(self):
        try:
            with socket.create_connection(("127.0.0.1", self.nats_port), timeout=0.2):
                return True
        except OSError:
            return False

    def ready(self, p):
        """True when p serves again: nats-server accepts connections, an
        edge and any service with a status port answer /readyz with 200;
        a service without a status port only has to be alive."""
        if not p.alive():
            return False
        if p is self.nats:
            return self.nats_up()
        port = p.port if p in self.edges else getattr(p, "status_port", 0)
        return not port or self.http_status(port, "/readyz") == 200

    def restart(self, p, timeout=30):
        """kill -9 p if it still runs, start it again with its own
        arguments and environment (same ports, store, data dir, edge id),
        and wait until it is ready."""
        p.restart()
        wait_until(lambda: self.ready(p) or not p.alive(), timeout, f"{p.name} to be ready again")
        assert p.alive(), f"{p.name} died after its restart:\n{p.tail()}"
        return p

    @staticmethod
    def http_status(port, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def dwctl(self, *args, check=True):
        r = subprocess.run([os.path.join(BIN, "dwctl"), *args], env=self.env(**self._svc("dwctl", {})),
                           capture_output=True,
                           text=True, timeout=30)
        if check and r.returncode != 0:
            raise AssertionError(f"dwctl {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def dwctl_ok(self, *args):
        return self.dwctl(*args, check=False).returncode == 0

    def conns(self, edge_id=None):
        """The registry's connections as dicts (dwctl conn list --json)."""
        args = ["conn", "list", "--json"] + (["--edge", edge_id] if edge_id else [])
        out = self.dwctl(*args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def conn_ids(self):
        return {c["connectionId"] for c in self.conns()}

    def wait_conn_count(self, n, timeout=20):
        return wait_until(lambda: len(self.conn_ids()) == n, timeout, f"{n} connections in the registry")

    def stop(self):
        codes = {}
        # Services first (they publish on the way out), nats-server last.
        for p in reversed(self.procs):
            if p is not self.nats:
                codes[p.name] = p.stop()
        if self.nats:
            codes["nats"] = self.nats.stop()
        return codes

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "WARNING: ThreadSanitizer")

    def sanitizer_reports(self):
        """Lines of sanitizer reports in any service's log: a test whose
        services leaked or raced fails, even when the chat itself worked."""
        found = []
        for p in self.procs:
            try:
                with open(p.log_path, errors="replace") as f:
                    for n, line in enumerate(f):
                        if any(m in line for m in self.SANITIZER_MARKS):
                            found.append(f"{p.name}:{n + 1}: {line.strip()}")
            except OSError:
                pass
        return found

    def logs(self):
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.procs)


class StackTest(unittest.TestCase):
    """A test case with a fresh stack per test; logs are printed on failure."""
    EDGES = 1
    EDGE_IDS = None
    ENV = {}

    def setUp(self):
        self.stack = Stack(edges=self.EDGES, env=self.ENV, edge_ids=self.EDGE_IDS).start()
        self.addCleanup(self._cleanup)
        self._problems = self._count_problems()

    def _count_problems(self):
        result = getattr(self._outcome, "result", None)
        return len(getattr(result, "failures", [])) + len(getattr(result, "errors", []))

    def tearDown(self):
        # Runs before the cleanups; a failure is already recorded by then
        # only for errors, so also check the outcome's current state.
        self._failed_now = self._count_problems() > self._problems or any(
            exc for _, exc in getattr(self._outcome, "errors", []) or [] if exc)

    def _cleanup(self):
        if getattr(self, "_failed_now", True) or self._count_problems() > self._problems:
            print(self.stack.logs())
        self.stack.stop()
        reports = self.stack.sanitizer_reports()
        self.stack.cleanup()
        if reports:
            raise AssertionError("sanitizer reports in service logs:\n" + "\n".join(reports))

    def run_async(self, coro, timeout=120):
        return asyncio.run(asyncio.wait_for(coro, timeout))


async def connect(url, **kw):
    return await websockets.connect(url, max_size=None, ping_interval=None, **kw)


async def recv_text(ws, timeout=10):
    m = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(m, str), f"expected a text frame, got {m!r}"
    return m


async def no_message(ws, within=0.3):
    """True when nothing arrives within `within` seconds (used only to check
    that something did NOT happen, after the positive path was awaited)."""
    try:
        m = await asyncio.wait_for(ws.recv(), within)
        return m
    except asyncio.TimeoutError:
        return None
