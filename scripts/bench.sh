#!/usr/bin/env bash
# Run the standard benchmarks of docs/benchmarks.md on this machine: each
# scenario on a fresh local stack (nats-server -js, registry, dispatcher,
# edge) on free ports with a temporary store, plus the two baselines
# (dwbench-baseline-ws: the socket path without a bus; dwbench-baseline-js:
# raw JetStream async publish). Prints a table (figure, baseline, ratio,
# target) and keeps every dwbench JSON line in the output directory. Stops
# everything it started, by PID, also on failure or Ctrl-C.
#
#   scripts/bench.sh [--no-build] [--only LIST] [--quick]
#
#   --no-build   use the binaries already in the build directory
#   --only LIST  comma-separated subset of: fanout,latency,fresh,ingest,connections,churn
#                (the baselines each needs are run with it)
#   --quick      2 s scenarios, 5 s churn, 6000 connections: checks the script
#
# Environment (defaults in brackets):
#   DW_BUILD_DIR           CMake build directory [build]
#   DW_BENCH_OUT           results directory [$DW_BUILD_DIR/bench/<timestamp>]
#   DW_BENCH_DURATION      seconds of sending per scenario [10]
#   DW_BENCH_CHURN_S       seconds of the churn scenario [30]
#   DW_BENCH_CONNECTIONS   idle connections per edge in `connections` [18000]
#   DW_BENCH_NATS_CONF     nats-server configuration [deploy/nats/local.conf]
#   DW_BENCH_NATS_SERVER   the nats-server binary [nats-server from PATH]; e.g. a
#                          build without the 2.9.10 encrypted-store cost
#                          (docs/benchmarks.md, "nats-server 2.9.10's encrypted store")
# Every other DW_* variable is removed from the environment: each process
# gets exactly the settings written below, nothing inherited.
# Exit status: 0 when every run was clean (no loss, no duplicate, no
# error, registry consistent), 1 otherwise.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

build_first=1
only="fanout,latency,fresh,ingest,connections,churn"
quick=0
while (( $# )); do
    case "$1" in
        --no-build) build_first=0 ;;
        --only) only="${2:?--only needs a list}"; shift ;;
        --only=*) only="${1#--only=}" ;;
        --quick) quick=1 ;;
        -h|--help) sed -n '2,30s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

build_dir="${DW_BUILD_DIR:-$root/build}"
[[ "$build_dir" = /* ]] || build_dir="$PWD/$build_dir"
duration="${DW_BENCH_DURATION:-10}"
churn_s="${DW_BENCH_CHURN_S:-30}"
idle_conns="${DW_BENCH_CONNECTIONS:-18000}"
nats_conf="${DW_BENCH_NATS_CONF:-$root/deploy/nats/local.conf}"
nats_server="${DW_BENCH_NATS_SERVER:-nats-server}"
[[ "$nats_conf" = /* ]] || nats_conf="$PWD/$nats_conf"
if (( quick )); then
    duration=2 churn_s=5 idle_conns=6000
fi
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="${DW_BENCH_OUT:-$build_dir/bench/$stamp}"

# Nothing hidden: drop inherited DW_* settings (a DW_RATE or DW_WINDOW left
# in the shell would silently change what dwbench measures).
for v in $(compgen -e); do
    case "$v" in DW_*) unset "$v" ;; esac
done

# The edge's abuse limits (docs/security.md, Throttling) are set for the Internet: 10
# messages/s per connection, 10,000/s per edge, 500 new connections/s per
# edge, 100 connections and 20 new ones/s per source IP. A load generator on
# 127.0.0.x is all of those at once, and the no-bus baseline has no limits:
# switch them off, here and only here (0 = unlimited). Every other edge
# setting keeps its default.
edge_limits=(DW_MSG_RATE=0 DW_EDGE_MSG_RATE=0 DW_EDGE_CONN_RATE=0 DW_IP_MAX_CONNS=0
             DW_IP_CONN_RATE=0)

declare -A pid_of=()   # process name -> pid
started=()             # names in start order (stopped in reverse)
failures=()            # runs that were not clean
tmp=""
stopping=0

say() { printf 'bench.sh: %s\n' "$*" >&2; }
now_ms() { local t="${EPOCHREALTIME//[.,]/}"; echo $(( t / 1000 )); }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nobody listens on now (the kernel picks it; closed again at once).
free_port() {
    /usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A process that died on its own, or did not exit 0 when asked to stop, is
# a failure of the run (kept in crashes.txt, shown under the table).
crashed() {
    local what="$1 ($run): $2"
    failures+=("$what")
    echo "$what" >> "$out/crashes.txt"
    say "$what"
}

# SIGTERM, up to 10 s for a clean exit, then SIGKILL.
stop_one() {
    local name="$1" pid="${pid_of[$1]:-}" st=0
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$(( $(now_ms) + 10000 ))
        while kill -0 "$pid" 2>/dev/null && (( $(now_ms) < deadline )); do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            crashed "$name" "did not stop within 10 s of SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || st=$?
        # nats-server 2.9 exits 1 after a SIGTERM shutdown: not a failure.
        [[ "$name" == nats ]] && (( st == 1 )) && st=0
        (( st == 0 || stopping )) || crashed "$name" "exit status $st after SIGTERM"
    else
        wait "$pid" 2>/dev/null || st=$?
        local why="exit status $st"
        # 128+N: killed by signal N (139 = SIGSEGV, 134 = SIGABRT).
        (( st > 128 )) && why+=" (signal $(( st - 128 )))"
        crashed "$name" "died during the run, $why"
    fi
    unset "pid_of[$name]"
}

stop_all() {
    local i
    for (( i = ${#started[@]} - 1; i >= 0; i-- )); do
        stop_one "${started[i]}"
    done
    started=()
}

cleanup() {
    (( stopping )) && return 0
    stopping=1
    trap '' INT TERM HUP
    stop_all
    [[ -n "$tmp" ]] && rm -rf "$tmp"
}

on_signal() {
    say "interrupted: stopping everything"
    cleanup
    exit 130
}

# start NAME [VAR=value ...] -- command...: in its own session (Ctrl-C
# reaches only this script), output to $out/logs/<run>-NAME.log.
start() {
    local name="$1"; shift
    local envs=()
    while [[ "$1" != "--" ]]; do envs+=("$1"); shift; done
    shift
    setsid env "${envs[@]}" "$@" >> "$out/logs/$run-$name.log" 2>&1 < /dev/null &
    pid_of[$name]=$!
    started+=("$name")
}

alive() { [[ -n "${pid_of[$1]:-}" ]] && kill -0 "${pid_of[$1]}" 2>/dev/null; }

# client_start NAME LOG command...: a load generator, in the background so
# that a signal reaches this script's trap at once (bash runs traps only
# between foreground commands) and the trap stops it like a service.
# `timeout` is only a guard against a hung client: each one is bounded by
# its own options; timeout passes our SIGTERM on to it.
client_start() {
    local name="$1" log="$2"; shift 2
    timeout -s INT -k 10 600 "$@" > /dev/null 2>> "$log" &
    pid_of[$name]=$!
    started+=("$name")
}

# client_wait NAME: its exit status; forgets it (its PID may be reused).
client_wait() {
    local rc=0
    wait "${pid_of[$1]}" || rc=$?
    unset "pid_of[$1]"
    return "$rc"
}

die() {
    say "$*"
    cleanup
    exit 1
}

check_alive() {
    local name
    for name in "${started[@]}"; do
        alive "$name" || { tail -n 20 "$out/logs/$run-$name.log" >&2 || true; die "$name exited"; }
    done
}

wait_port() {
    local port="$1" deadline=$(( $(now_ms) + 15000 ))
    until port_open "$port"; do
        check_alive
        (( $(now_ms) < deadline )) || die "nothing listens on port $port after 15 s"
        sleep 0.1
    done
}

# NATS users: when the local configuration includes per-service users
# (deploy/nats/auth.conf, passwords from DW_NATS_PASS_<USER>), each run gets
# fresh random passwords, as scripts/up.sh makes them; nats-server gets
# them in its environment, each service its user name and password file.
nats_users=()
make_secrets() {
    mkdir -p "$tmp/secrets"
    chmod 700 "$tmp/secrets"
    local u
    mapfile -t nats_users < <(grep -hv '^[[:space:]]*#' "$(dirname "$nats_conf")"/*.conf |
        grep -o 'DW_NATS_PASS_[A-Z0-9_]\+' | sed 's/^DW_NATS_PASS_//' |
        tr '[:upper:]' '[:lower:]' | sort -u)
    for u in "${nats_users[@]}"; do
        ( umask 077; echo "p$(openssl rand -hex 24)" > "$tmp/secrets/nats_$u" )
    done
}

# as_user USER: the environment that logs a process in as USER (nothing
# when the configuration has no users).
as_user() {
    [[ -s "$tmp/secrets/nats_$1" ]] &&
        echo "DW_NATS_USER=$1" "DW_NATS_PASSWORD_FILE=$tmp/secrets/nats_$1"
    return 0
}

# nats-server with the local stack's configuration ($nats_conf)
# on a free port with a fresh store; with CONF, another configuration. If
# the configuration encrypts the store, the key is a new random one: the
# baseline pays for it too.
start_nats() {
    local conf="${1:-$nats_conf}" u envs=()
    nats_port="$(free_port)"
    mkdir -p "$tmp/$run/nats"
    for u in "${nats_users[@]}"; do
        envs+=("DW_NATS_PASS_${u^^}=$(< "$tmp/secrets/nats_$u")")
    done
    start nats "${envs[@]}" DW_JS_KEY="k$(openssl rand -hex 32)" -- "$nats_server" -js \
        -c "$conf" -a 127.0.0.1 -p "$nats_port" -sd "$tmp/$run/nats"
    wait_port "$nats_port"
}

dwctl() {
    # shellcheck disable=SC2046  # as_user prints VAR=value words
    env DW_NATS_URL="nats://127.0.0.1:$nats_port" $(as_user dwctl) "$build_dir/bin/dwctl" "$@"
}

# The stack of scripts/up.sh, on free ports, with a fresh store. With
# EDGES=2 a second edge joins (the 36,000-connection run).
nats_port="" edge_ports=()
stack_up() {
    local nedges="${1:-1}" i
    mkdir -p "$tmp/$run/data"
    start_nats
    local common=(DW_NATS_URL="nats://127.0.0.1:$nats_port" DW_DATA_DIR="$tmp/$run/data"
                  DW_STATUS_PORT=0 DW_LOG_LEVEL=warn)
    # shellcheck disable=SC2046  # as_user prints VAR=value words
    start registry "${common[@]}" $(as_user registry) -- "$build_dir/bin/registry"
    # The dispatcher's status port serves its stage histograms (--metrics).
    disp_status_port="$(free_port)"
    # shellcheck disable=SC2046
    start dispatcher "${common[@]}" $(as_user dispatcher) DW_STATUS_PORT="$disp_status_port" \
        -- "$build_dir/bin/dispatcher"
    edge_ports=()
    for (( i = 1; i <= nedges; i++ )); do
        local p; p="$(free_port)"
        edge_ports+=("$p")
        # shellcheck disable=SC2046
        start "edge$i" "${common[@]}" $(as_user edge) "${edge_limits[@]}" DW_PORT="$p" \
            DW_HOST=127.0.0.1 -- "$build_dir/bin/edge"
    done
    local deadline=$(( $(now_ms) + 30000 ))
    while :; do
        local ok=1
        for p in "${edge_ports[@]}"; do
            curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$p/readyz" 2>/dev/null || ok=0
        done
        (( ok )) && dwctl status --timeout-ms 1000 >/dev/null 2>&1 && break
        check_alive
        (( $(now_ms) < deadline )) || die "stack not ready within 30 s (logs in $out/logs)"
        sleep 0.2
    done
}

# The /metrics of every edge and of the dispatcher: dwbench reports the
# stage histograms' split of the measured part of a run.
stack_metrics() {
    local s="http://127.0.0.1:$disp_status_port/metrics" p
    for p in "${edge_ports[@]}"; do s+=",http://127.0.0.1:$p/metrics"; done
    echo "$s"
}

stack_pids() {
    local s="nats=${pid_of[nats]},registry=${pid_of[registry]},dispatcher=${pid_of[dispatcher]}" i
    for (( i = 1; i <= ${#edge_ports[@]}; i++ )); do
        if (( i == 1 )); then s+=",edge=${pid_of[edge1]}"; else s+=",edge$i=${pid_of[edge$i]}"; fi
    done
    echo "$s"
}

baseline_ws_up() {
    bws_port="$(free_port)"
    start baseline-ws -- "$build_dir/bin/dwbench-baseline-ws" --host 127.0.0.1 --port "$bws_port" \
        --log-level warn
    wait_port "$bws_port"
}

# bench NAME dwbench-args...: one dwbench run, its line in $out/NAME.json.
# Bounded by dwbench itself (connect-timeout + duration + drain); the
# timeout is only a guard against a hung process.
bench() {
    local name="$1"; shift
    local rc=0 t0 b0
    say "run $name: dwbench $*"
    read -r t0 b0 < <(cpu_jiffies)
    client_start "dwbench-$name" "$out/logs/$name-dwbench.log" "$build_dir/bin/dwbench" \
        --log-level warn --scenario "$name" --json-out "$out/$name.json" "$@"
    client_wait "dwbench-$name" || rc=$?
    machine_busy "$name" "$t0" "$b0"
    if (( rc != 0 )); then
        failures+=("$name (dwbench exit $rc)")
        say "run $name: not clean (exit $rc)"
    fi
}

# Machine-wide CPU time from /proc/stat, in clock ticks: "total busy".
cpu_jiffies() {
    awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, t - $5 - $6 }' /proc/stat
}

# What the whole machine spent during a run (ours and everybody else's):
# the table subtracts our processes to show the load others added.
machine_busy() {
    local t1 b1 hz
    read -r t1 b1 < <(cpu_jiffies)
    hz="$(getconf CLK_TCK)"
    printf '{"run":"%s","wall_cpu_s":%se-2,"busy_cpu_s":%se-2,"nproc":%s}\n' "$1" \
        $(( (t1 - $2) * 100 / hz )) $(( (b1 - $3) * 100 / hz )) "$(nproc)" > "$out/$1.machine"
}

# Counter value from an edge's /metrics; -1 when the edge does not answer.
edge_metric() {
    local text
    if ! text="$(curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null)"; then
        echo -1
        return 0
    fi
    awk -v m="$2" '$1 == m { v = $2 } END { print (v == "" ? 0 : v) }' <<< "$text"
}

# Rows in the registry's connections table; -1 when it cannot be listed.
registry_count() {
    local f="$tmp/conn_list.json"
    if dwctl conn list --json --timeout-ms 5000 > "$f" 2>> "$out/logs/$run-dwctl.log"; then
        wc -l < "$f"
    else
        echo -1
    fi
}

# ---------------------------------------------------------------------------

trap on_signal INT TERM HUP
trap cleanup EXIT

if (( build_first )); then
    cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo
    cmake --build "$build_dir" -j2 --target edge registry dispatcher dwctl \
        dwbench dwbench-baseline-ws dwbench-baseline-js
fi
for bin in edge registry dispatcher dwctl dwbench dwbench-baseline-ws dwbench-baseline-js; do
    [[ -x "$build_dir/bin/$bin" ]] || die "$build_dir/bin/$bin is missing (build first)"
done
command -v "$nats_server" >/dev/null || die "$nats_server is not installed (scripts/deps.sh)"

mkdir -p "$out/logs"
tmp="$(mktemp -d /tmp/dwbench.XXXXXX)"
make_secrets
say "results in $out"
{
    echo "date: $stamp"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel: $(uname -r)"
    echo "git: $(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "nats-server: $("$nats_server" --version 2>&1 | head -1) ($(command -v "$nats_server"))"
    echo "jetstream cipher: $(awk '/^[[:space:]]*cipher:/ { print $2; f = 1 }
                                   END { if (!f) print "none" }' "$nats_conf")"
    echo "loadavg_before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "duration_s: $duration churn_s: $churn_s idle_connections: $idle_conns"
    echo "edge limits: ${edge_limits[*]}"
    echo "nats config: $nats_conf"
    echo "nats users: ${nats_users[*]:-none}"
} > "$out/machine.txt"

want() { [[ ",$only," == *",$1,"* ]]; }
conns=1000
drain=10

# --- fanout and latency: the stack and the no-bus baseline, side by side -----
# Both are up at once and their runs alternate, so that load from other
# users of the machine falls on both alike.
if want fanout || want latency; then
    run=fanout
    stack_up 1
    baseline_ws_up
    url="ws://127.0.0.1:${edge_ports[0]}/"
    burl="ws://127.0.0.1:$bws_port/"
    if want fanout; then
        bench fanout --url "$url" --connections $conns --senders 10 \
            --duration "$duration" --drain $drain --pid "$(stack_pids)" --metrics "$(stack_metrics)"
        bench fanout_baseline_ws --url "$burl" --connections $conns --senders 10 \
            --duration "$duration" --drain $drain --pid "baseline=${pid_of[baseline-ws]}"
    fi
    if want latency; then
        bench latency --url "$url" --connections $conns --senders 10 --rate 100 \
            --duration "$duration" --drain $drain --pid "$(stack_pids)" --metrics "$(stack_metrics)"
        bench latency_baseline_ws --url "$burl" --connections $conns --senders 10 --rate 100 \
            --duration "$duration" --drain $drain --pid "baseline=${pid_of[baseline-ws]}"
    fi
    stop_all
fi

# --- fresh: send at once on a just-started stack, five times ---------------------
# Users send right after connecting (a deploy, a reconnect storm, a page
# load): no --sync, a new stack each time, 100 messages/s to 1,000
# connections. The summary reports the worst p99 and max of the five.
if want fresh; then
    for i in 1 2 3 4 5; do
        run="fresh$i"
        stack_up 1
        bench "fresh$i" --url "ws://127.0.0.1:${edge_ports[0]}/" --connections $conns \
            --senders 10 --rate 100 --sync=0 --duration "$duration" --drain $drain \
            --pid "$(stack_pids)" --metrics "$(stack_metrics)"
        stop_all
    done
fi

# --- ingest: 100 senders, each into its own room of 5, against raw JetStream ---
if want ingest; then
    run=ingest
    stack_up 1
    acc0="$(edge_metric "${edge_ports[0]}" dw_edge_messages_accepted_total)"
    # dynamowave.v1: connection i joins room r<i mod 100>, so rooms of 5 and
    # one sender (connections 0..99) in each.
    bench ingest --url "ws://127.0.0.1:${edge_ports[0]}/" --connections 500 --senders 100 \
        --rooms 100 --window 32 --duration "$duration" --drain $drain --pid "$(stack_pids)"
    acc1="$(edge_metric "${edge_ports[0]}" dw_edge_messages_accepted_total)"
    echo "{\"scenario\":\"ingest_edge_metrics\",\"accepted\":$(( ${acc1%.*} - ${acc0%.*} ))}" \
        > "$out/ingest_edge_metrics.json"
    stop_all

    # The same nats-server build and config, its own fresh store.
    # The same nats-server configuration without its per-service users
    # (the baseline publishes to a stream of its own, which no service
    # user may create), and a fresh store.
    run=baseline_js
    grep -v '^[[:space:]]*include[[:space:]]' "$nats_conf" > "$tmp/baseline_js.conf"
    start_nats "$tmp/baseline_js.conf"
    say "run ingest_baseline_js"
    read -r t0 b0 < <(cpu_jiffies)
    client_start baseline-js "$out/logs/ingest_baseline_js.log" \
        "$build_dir/bin/dwbench-baseline-js" --log-level warn \
        --nats-url "nats://127.0.0.1:$nats_port" --count 500000 --size 128 --window 4096 \
        --pid "nats=${pid_of[nats]}" --json-out "$out/ingest_baseline_js.json"
    rc=0
    client_wait baseline-js || rc=$?
    (( rc == 0 )) || failures+=("ingest_baseline_js (exit $rc)")
    machine_busy ingest_baseline_js "$t0" "$b0"
    stop_all
fi

# --- connections: 18,000 idle on one edge; 36,000 on two edges ----------------
if want connections; then
    run=connections
    stack_up 1
    bench connections --url "ws://127.0.0.1:${edge_ports[0]}/" --idle --connections "$idle_conns" \
        --source-ips 8 --duration 5 --connect-timeout 60 --pid "$(stack_pids)"
    stop_all

    run=connections_baseline_ws
    baseline_ws_up
    bench connections_baseline_ws --url "ws://127.0.0.1:$bws_port/" --idle \
        --connections "$idle_conns" --source-ips 8 --duration 5 --connect-timeout 60 \
        --pid "baseline=${pid_of[baseline-ws]}"
    stop_all

    # Two load generators, one per edge: one process may hold 20,000 files.
    run=connections2
    stack_up 2
    say "run connections2_a + connections2_b (two dwbench processes, in parallel)"
    for ab in a b; do
        i=$([[ $ab == a ]] && echo 0 || echo 1)
        client_start "dwbench-connections2_$ab" "$out/logs/connections2_$ab-dwbench.log" \
            "$build_dir/bin/dwbench" --log-level warn \
            --scenario "connections2_$ab" --json-out "$out/connections2_$ab.json" \
            --url "ws://127.0.0.1:${edge_ports[i]}/" --idle --connections "$idle_conns" \
            --source-ips 8 --duration 10 --connect-timeout 90 --pid "$(stack_pids)"
    done
    for ab in a b; do
        rc=0
        client_wait "dwbench-connections2_$ab" || rc=$?
        (( rc == 0 )) || failures+=("connections2_$ab (dwbench exit $rc)")
    done
    stop_all
fi

# --- churn: 1,000 connects + disconnects per second with traffic -------------
if want churn; then
    run=churn
    stack_up 1
    bench churn --url "ws://127.0.0.1:${edge_ports[0]}/" --connections $conns --senders 10 \
        --rate 100 --churn 1000 --churn-hold-ms 1000 --source-ips 8 --duration "$churn_s" \
        --drain $drain --pid "$(stack_pids)"
    # Consistent = every connection dwbench opened is gone from the registry
    # once the edge's disconnect events are applied (they are asynchronous:
    # poll, with a deadline).
    t0=$(now_ms) left=-1
    while (( $(now_ms) - t0 < 30000 )); do
        left="$(registry_count)"
        (( left == 0 )) && break
        sleep 0.5
    done
    edge_left="$(edge_metric "${edge_ports[0]}" dw_edge_connections)"
    printf '{"scenario":"churn_registry","registry_left":%s,"edge_left":%s,"settle_ms":%s}\n' \
        "$left" "${edge_left%.*}" $(( $(now_ms) - t0 )) > "$out/churn_registry.json"
    (( left == 0 )) || failures+=("churn: $left connections left in the registry")
    stop_all
fi

echo "loadavg_after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"

# --- the table ----------------------------------------------------------------
/usr/bin/python3 - "$out" <<'EOF' | tee "$out/table.txt"
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            lines = [l for l in f if l.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
R = {n[:-5]: load(n[:-5]) for n in os.listdir(out) if n.endswith(".json")}
rows = []
def fmt(v, unit=""):
    if v is None: return "-"
    if isinstance(v, float) and v < 100: return f"{v:.3g}{unit}"
    return f"{v:,.0f}{unit}"
def row(fig, v, b, target, ok, unit="", inverse=False):
    ratio = None
    if v is not None and b:
        ratio = (b / v if inverse else v / b) if v else None
    rows.append((fig, fmt(v, unit), fmt(b, unit), f"{ratio:.2f}" if ratio is not None else "-",
                 target, "-" if ok is None else ("yes" if ok else "NO")))
def g(r, *path):
    for p in path:
        if r is None: return None
        r = r.get(p)
    return r
f, fb = R.get("fanout"), R.get("fanout_baseline_ws")
if f or fb:
    v, b = g(f, "deliveries_per_s"), g(fb, "deliveries_per_s")
    row("fanout deliveries/s", v, b, ">= 2,000,000 and >= 60% of baseline",
        None if v is None else (v >= 2e6 and (b is None or v >= 0.6 * b)))
def ns_per_delivery(r, names=None):
    if not r or not r.get("delivered"): return None
    cpu = sum(v.get("cpu_measured_s", 0) for k, v in r.get("procs", {}).items()
              if names is None or k in names)
    return cpu * 1e9 / r["delivered"]
if f and fb:
    b = ns_per_delivery(fb)
    row("fanout CPU ns/delivery: edge", ns_per_delivery(f, ("edge",)), b, "", None,
        inverse=True)
    row("fanout CPU ns/delivery: all services", ns_per_delivery(f), b, "", None, inverse=True)
    row("fanout CPU ns/delivery: dwbench", (g(f, "self", "cpu_measured_s") or 0) * 1e9
        / max(f.get("delivered") or 1, 1), (g(fb, "self", "cpu_measured_s") or 0) * 1e9
        / max(fb.get("delivered") or 1, 1), "", None, inverse=True)
l, lb = R.get("latency"), R.get("latency_baseline_ws")
if l or lb:
    for p, t in (("p50", 1), ("p99", 5), ("p999", None)):
        v, b = g(l, "latency_ms", p), g(lb, "latency_ms", p)
        row(f"latency {p} (ratio: baseline/edge)", v, b, f"<= {t} ms" if t else "",
            None if v is None or t is None else v <= t, " ms", inverse=True)
    row("latency deliveries/s", g(l, "deliveries_per_s"), g(lb, "deliveries_per_s"), "100,000",
        None)
    if l and lb:
        row("latency CPU ns/delivery: edge", ns_per_delivery(l, ("edge",)), ns_per_delivery(lb),
            "", None, inverse=True)
if l and l.get("stages"):
    for name, st in sorted(l["stages"].items()):
        row(f"  latency stage {name}: mean (p99 bucket)", st.get("mean_ms"), None,
            f"p99 <= {st.get('p99_ms_le')} ms" if st.get("p99_ms_le") is not None else "", None,
            " ms")
fresh = [R.get(f"fresh{i}") for i in range(1, 6)]
fresh = [x for x in fresh if x]
if fresh:
    worst99 = max(g(x, "latency_ms", "p99") or 0 for x in fresh)
    worstmax = max(g(x, "latency_ms", "max") or 0 for x in fresh)
    lost = sum((x.get("lost") or 0) + (x.get("duplicates") or 0) for x in fresh)
    row(f"fresh stack, send at once: worst p99 of {len(fresh)}", worst99, None, "<= 15 ms",
        worst99 <= 15, " ms")
    row(f"fresh stack, send at once: worst max of {len(fresh)}", worstmax, None, "", None, " ms")
    row("fresh stack: lost + duplicated", lost, None, "0", lost == 0)
i, ib = R.get("ingest"), R.get("ingest_baseline_js")
if i or ib:
    v, b = g(i, "msgs_per_s"), g(ib, "msgs_per_s")
    row("ingest msgs/s (100 senders, rooms of 5)", v, b, ">= 50% of raw JetStream",
        None if v is None or not b else v >= 0.5 * b)
c, cb = R.get("connections"), R.get("connections_baseline_ws")
def rss_per_conn(r, name):
    p = g(r, "procs", name)
    if not p or not r.get("opened"): return None
    return (p["rss_kb"] - p["rss_start_kb"]) * 1024 / r["opened"]
if c or cb:
    v, b = g(c, "connect_per_s"), g(cb, "connect_per_s")
    row("connections: handshakes/s", v, b, "", None)
    v = g(c, "ready_per_s")
    row("connections: durable connects/s (ready)", v, b, ">= 10,000",
        None if v is None else v >= 1e4)
    v, b = rss_per_conn(c, "edge"), rss_per_conn(cb, "baseline")
    row("connections: edge RSS bytes/idle conn", v, b, "<= 4096", None if v is None else v <= 4096,
        inverse=True)
a, bb = R.get("connections2_a"), R.get("connections2_b")
if a or bb:
    tot = sum((x or {}).get("opened", 0) for x in (a, bb))
    want_n = sum((x or {}).get("connections", 0) for x in (a, bb))
    err = sum((x or {}).get("errors", 0) for x in (a, bb))
    row("connections on 2 edges (held, errors=%d)" % err, tot, None, f"{want_n:,}",
        tot >= want_n and err == 0)
    for x in (a, bb):
        if x:
            row(f"  {x['scenario']}: durable connects/s", x.get("ready_per_s"), None, "", None)
ch, cr = R.get("churn"), R.get("churn_registry")
if ch:
    row("churn: connects/s opened", g(ch, "churn", "opened_per_s"), None, "1,000", None)
    row("churn: errors", g(ch, "errors"), None, "0", g(ch, "errors") == 0)
if cr:
    row("churn: registry rows left after", cr.get("registry_left"), None, "0",
        cr.get("registry_left") == 0)
bad = []
for n, r in sorted(R.items()):
    if r and "lost" in r and (r.get("lost") or r.get("dup")):
        bad.append(f"{n}: lost={r['lost']} dup={r['dup']}")
row("lost + duplicate deliveries, all runs", sum((r or {}).get("lost", 0) + (r or {}).get("dup", 0)
    for r in R.values() if r and "lost" in r), None, "0", not bad)
w = [max(len(str(x[k])) for x in rows + [("figure", "value", "baseline", "ratio", "target", "ok")])
     for k in range(6)]
hdr = ("figure", "value", "baseline", "ratio", "target", "ok")
for x in [hdr] + rows:
    print("  ".join(str(x[k]).ljust(w[k]) if k in (0, 4) else str(x[k]).rjust(w[k])
                    for k in range(6)))
for b in bad: print("not clean:", b)
try:
    with open(os.path.join(out, "crashes.txt")) as f:
        for l in f: print("process failure:", l.strip())
except OSError:
    pass
print()
print("Machine load during each run (CPU-seconds; 'others' = busy minus our processes):")
for n in sorted(R):
    try:
        with open(os.path.join(out, n + ".machine")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        continue
    r = R[n] or {}
    ours = sum(v.get("cpu_run_s", 0) for v in r.get("procs", {}).values())
    ours += g(r, "self", "cpu_run_s") or g(r, "self", "cpu_s") or 0
    wall = m["wall_cpu_s"] / max(m["nproc"], 1)
    print(f"  {n:26s} {wall:6.1f} s: busy {m['busy_cpu_s']:6.1f} of {m['wall_cpu_s']:6.1f}, "
          f"ours {ours:6.1f}, others {max(m['busy_cpu_s'] - ours, 0):6.1f}")
print()
print("CPU seconds during the measured part (cpu_measured_s):")
for n in ("fanout", "fanout_baseline_ws", "latency", "latency_baseline_ws", "ingest"):
    r = R.get(n)
    if not r: continue
    parts = [f"{k}={v.get('cpu_measured_s', 0):.2f}" for k, v in sorted(r.get("procs", {}).items())]
    parts.append(f"dwbench={g(r, 'self', 'cpu_measured_s') or 0:.2f}")
    print(f"  {n:22s} over {r.get('elapsed_s', 0):.2f} s: " + " ".join(parts))
EOF

if (( ${#failures[@]} )); then
    say "not clean:"
    printf '  %s\n' "${failures[@]}" >&2
    exit 1
fi
say "all runs clean; results in $out"
