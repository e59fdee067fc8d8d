#!/usr/bin/env bash
# Run DynamoWave locally, in the foreground: nats-server (JetStream; one node,
# or a 3-node cluster), then the registry, the dispatcher, the deadletter
# service, the api and the edge. A process that exits on its own once the
# stack is up is restarted, after 0.5 s, then 1, 2, 4 ... up to 30 s while
# it keeps failing (back to 0.5 s once it stayed up 60 s); one line says
# which, why and when. Ctrl-C (or SIGTERM) stops everything, also while a
# restart is pending: the services in reverse order, each with SIGTERM and
# up to 10 s before SIGKILL, then nats-server. A process that dies during
# start-up stops everything (exit status 1).
#
#   scripts/up.sh [--no-build]
#
# Environment (defaults in brackets):
#   DW_PORT       WebSocket/HTTP port of the edge [8080]
#   DW_NATS_PORT  nats-server client port [4222]
#   DW_MGMT_PORT  the api's @connections port, loopback only [DW_PORT + 1]
#   the status ports (/healthz /readyz /metrics) of registry, api, deadletter
#   and dispatcher are DW_PORT + 10, 11, 12, 13, so stacks side by side differ
#   DW_DATA_DIR   JetStream store, service data, secrets, logs, pid files
#                 [var; var/cluster with DW_NATS_NODES=3]
#   DW_BUILD_DIR  CMake build directory [build]
#   DW_TLS        self-signed: the edge serves wss:// and https:// with a
#                 certificate made once in $DW_DATA_DIR/tls [off]
#   DW_NATS_NODES 3: a local JetStream cluster of three nats-servers, clients
#                 on DW_NATS_PORT, +1, +2, routes on DW_NATS_ROUTE_PORT, +1,
#                 +2 [DW_NATS_PORT + 2000], monitoring (/jsz) on
#                 DW_NATS_HTTP_PORT, +1, +2 [DW_NATS_PORT + 4000], a store
#                 each ($DW_DATA_DIR/nats1..3); every service gets all three
#                 URLs and the streams have 3 replicas [1]
#   DW_REGISTRY_KEY  none: the registry's table is NOT encrypted (a warning
#                 says so). By default it is sealed with AES-256-GCM under
#                 $DW_DATA_DIR/secrets/registry_key, made on the first run;
#                 DW_REGISTRY_KEY_FILE (and DW_REGISTRY_OLD_KEY_FILES, for
#                 a rotation: docs/security.md) name other key files
#   other DW_* settings reach the services as they are, e.g.
#                 DW_ROUTES=echo:sync,audit:async for the edge's routes
#                 (docs/integrations.md)
#   DW_RESTART    off: a process that exits stops everything, as during
#                 start-up [on]
#   DW_RESTART_DELAY_MS, DW_RESTART_MAX_DELAY_MS  first and longest wait
#                 before a restart [500, 30000]; DW_RESTART_RESET_S: uptime
#                 after which the wait starts again from the first [60]
# NATS runs with one user per service (deploy/nats/auth.conf); the
# passwords and the JetStream store key are made on the first run in
# $DW_DATA_DIR/secrets (mode 0600). To use dwctl against this stack:
#   DW_NATS_USER=dwctl DW_NATS_PASSWORD_FILE=$DW_DATA_DIR/secrets/nats_dwctl dwctl status
# Your workers log in as the user worker (examples/workers/):
#   DW_NATS_USER=worker DW_NATS_PASSWORD_FILE=$DW_DATA_DIR/secrets/nats_worker
# Logs: $DW_DATA_DIR/log/<process>.log, also shown here with a prefix; this
# script's own lines also go to $DW_DATA_DIR/log/up.log. While it runs,
# $DW_DATA_DIR/run/<process>.pid holds each process's PID (up.pid: this
# script's) and $DW_DATA_DIR/run/restarts each process's restart count.
# Two stacks run side by side with different DW_PORT, DW_NATS_PORT,
# DW_MGMT_PORT and DW_DATA_DIR.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

build_first=1
case "${1:-}" in
    "") ;;
    --no-build) build_first=0 ;;
    # The help is the comment above, up to `set -euo pipefail`.
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "up.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

usage_error() { echo "up.sh: $*" >&2; exit 2; }

DW_NATS_NODES="${DW_NATS_NODES:-1}"
[[ "$DW_NATS_NODES" == 1 || "$DW_NATS_NODES" == 3 ]] ||
    usage_error "DW_NATS_NODES='$DW_NATS_NODES': 1 (one nats-server) or 3 (a local cluster)"
DW_PORT="${DW_PORT:-8080}"
DW_NATS_PORT="${DW_NATS_PORT:-4222}"
DW_MGMT_PORT="${DW_MGMT_PORT:-$((DW_PORT + 1))}"
DW_NATS_ROUTE_PORT="${DW_NATS_ROUTE_PORT:-$((DW_NATS_PORT + 2000))}"
DW_NATS_HTTP_PORT="${DW_NATS_HTTP_PORT:-$((DW_NATS_PORT + 4000))}"
# port_var NAME LAST_OFFSET: NAME holds a port, and so does NAME + LAST_OFFSET.
port_var() {
    if ! [[ "${!1}" =~ ^[0-9]+$ ]] || (( ${!1} < 1 || ${!1} + $2 > 65535 )); then
        usage_error "$1='${!1}' is not a port number (1 to $((65535 - $2)): the $2 ports after it are used too)"
    fi
}
port_var DW_PORT 13   # status ports
port_var DW_MGMT_PORT 0
port_var DW_NATS_PORT $((DW_NATS_NODES - 1))
if (( DW_NATS_NODES > 1 )); then
    port_var DW_NATS_ROUTE_PORT $((DW_NATS_NODES - 1))
    port_var DW_NATS_HTTP_PORT $((DW_NATS_NODES - 1))
fi
restart_on=1
case "${DW_RESTART:-on}" in
    on|1|yes) ;;
    off|0|no) restart_on=0 ;;
    *) usage_error "DW_RESTART='${DW_RESTART}': on or off" ;;
esac
RESTART_DELAY_MS="${DW_RESTART_DELAY_MS:-500}"
RESTART_MAX_DELAY_MS="${DW_RESTART_MAX_DELAY_MS:-30000}"
RESTART_RESET_S="${DW_RESTART_RESET_S:-60}"
for v in RESTART_DELAY_MS RESTART_MAX_DELAY_MS RESTART_RESET_S; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || (( ${!v} == 0 )); then
        usage_error "DW_$v='${!v}' is not a positive integer"
    fi
done
(( RESTART_MAX_DELAY_MS >= RESTART_DELAY_MS )) || RESTART_MAX_DELAY_MS=$RESTART_DELAY_MS
case "${DW_REGISTRY_KEY:-}" in
    ""|none) ;;
    *) usage_error "DW_REGISTRY_KEY='${DW_REGISTRY_KEY}': only 'none' is known (DW_REGISTRY_KEY_FILE names a key file)" ;;
esac
if [[ "${DW_REGISTRY_KEY:-}" == none && -n "${DW_REGISTRY_KEY_FILE:-}" ]]; then
    usage_error "DW_REGISTRY_KEY=none and DW_REGISTRY_KEY_FILE contradict each other"
fi

# Relative paths are relative to where up.sh was started; services get
# absolute ones.
abs() { if [[ "$1" = /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
if [[ -n "${DW_DATA_DIR:-}" ]]; then
    data_dir="$DW_DATA_DIR"
elif (( DW_NATS_NODES > 1 )); then
    data_dir="$root/var/cluster"   # its own registry table: it follows its own streams
else
    data_dir="$root/var"
fi
build_dir="$(abs "${DW_BUILD_DIR:-$root/build}")"
registry_key_file=""
if [[ -n "${DW_REGISTRY_KEY_FILE:-}" ]]; then
    registry_key_file="$(abs "$DW_REGISTRY_KEY_FILE")"
fi
registry_old_key_files=""
if [[ -n "${DW_REGISTRY_OLD_KEY_FILES:-}" ]]; then
    IFS=, read -ra olds <<< "$DW_REGISTRY_OLD_KEY_FILES"
    for f in "${olds[@]}"; do
        [[ -n "$f" ]] && registry_old_key_files+="${registry_old_key_files:+,}$(abs "$f")"
    done
fi
# nats-server alone gets the JetStream key (and the passwords), in launch.
js_key_env="${DW_JS_KEY:-}"
unset DW_JS_KEY DW_REGISTRY_KEY_FILE DW_REGISTRY_OLD_KEY_FILES

mkdir -p "$data_dir/log" "$data_dir/run"
data_dir="$(cd "$data_dir" && pwd)"
log_dir="$data_dir/log"
run_dir="$data_dir/run"
secrets_dir="$data_dir/secrets"
cd "$root"

# One up.sh per data directory: a second one would share the stores and
# overwrite the pid files. The lock goes away with this script.
exec {lock_fd}> "$run_dir/up.lock"
if ! flock -n "$lock_fd"; then
    echo "up.sh: another up.sh runs on $data_dir (pid $(cat "$run_dir/up.pid" 2>/dev/null || echo ?))" >&2
    exit 1
fi
rm -f "$run_dir"/*.pid "$run_dir/restarts"
echo $$ > "$run_dir/up.pid"

# The NATS nodes: process name, client, route and monitoring port, store.
NATS_NODES=()
declare -A NATS_PORT_OF=() ROUTE_PORT_OF=() HTTP_PORT_OF=() STORE_OF=()
if (( DW_NATS_NODES == 1 )); then
    NATS_NODES=(nats)
    NATS_PORT_OF[nats]=$DW_NATS_PORT
    STORE_OF[nats]="$data_dir/nats"
else
    for (( i = 1; i <= DW_NATS_NODES; i++ )); do
        NATS_NODES+=("nats$i")
        NATS_PORT_OF[nats$i]=$((DW_NATS_PORT + i - 1))
        ROUTE_PORT_OF[nats$i]=$((DW_NATS_ROUTE_PORT + i - 1))
        HTTP_PORT_OF[nats$i]=$((DW_NATS_HTTP_PORT + i - 1))
        STORE_OF[nats$i]="$data_dir/nats$i"
    done
fi
nats_urls=""
for n in "${NATS_NODES[@]}"; do
    nats_urls+="${nats_urls:+,}nats://127.0.0.1:${NATS_PORT_OF[$n]}"
done
export DW_PORT DW_MGMT_PORT DW_DATA_DIR="$data_dir" DW_NATS_URL="$nats_urls"

SERVICES=(registry dispatcher deadletter api edge)   # start order; stopped in reverse
declare -A STATUS_PORT=([registry]=$((DW_PORT + 10)) [api]=$((DW_PORT + 11))
                        [deadletter]=$((DW_PORT + 12)) [dispatcher]=$((DW_PORT + 13)) [edge]=0)
# One NATS user each (deploy/nats/auth.conf), and `worker` for user code
# (examples/workers, docs/integrations.md): its password is made with the
# others, in $DW_DATA_DIR/secrets/nats_worker.
NATS_USERS=(edge registry dispatcher deadletter api dwctl worker)
NATS_TIMEOUT_S=10
READY_TIMEOUT_S=$(( DW_NATS_NODES > 1 ? 60 : 30 ))
STOP_TIMEOUT_S=10

# The process table. Every process, once started, is in started[] (start
# order); pid_of holds the PIDs of those running, restart_at_ms the time a
# pending restart is due.
declare -A pid_of=() restart_at_ms=() started_ms_of=() restarts_of=() attempt_of=() delay_ms_of=()
started=()
tails=()               # tail -F pids
stopping=0
failed=0
launching=0            # a signal that arrives inside launch is handled after it
stop_pending=0
supervising=0          # 0 during start-up: a process that dies stops everything

# This script's lines go to the terminal (term_fd: stderr as it was given)
# and to up.log, which also gets bash's own messages once the stack is up.
exec {term_fd}>&2
say() {
    printf 'up.sh: %s\n' "$*" >&"$term_fd"
    printf '%(%F %T)T %s\n' -1 "$*" >> "$log_dir/up.log" 2>/dev/null || true
}

# now: milliseconds on a clock good enough for deadlines (SECONDS ticks whole
# seconds). A function that sets a variable: $(...) would fork every time.
clock() { now="${EPOCHREALTIME//[.,]/}"; now=$(( now / 1000 )); }

# tick SECONDS: sleep without a fork (read times out on a FIFO that nobody
# writes to); a signal with a trap ends it at once.
mkfifo "$run_dir/tick.$$"
exec {tick_fd}<> "$run_dir/tick.$$"
rm -f "$run_dir/tick.$$"
tick() { read -r -t "$1" -u "$tick_fd" _ || true; }

# running PID: the process exists and has not exited. Not kill -0 alone: a
# process that exited stays a zombie until bash reaps it, and bash reaps
# nothing while it runs a trap (SIGCHLD is blocked there).
running() {
    local stat
    { read -r stat < "/proc/$1/stat"; } 2>/dev/null || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z ]]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

last_lines() {
    say "last lines of $log_dir/$1.log:"
    tail -n 25 "$log_dir/$1.log" | sed "s/^/    /" >&"$term_fd" || true
}

# "exit status 1" or "killed by SIGKILL" (wait's 128 + signal number).
describe_exit() {
    if (( $1 > 128 )) && kill -l "$(( $1 - 128 ))" >/dev/null 2>&1; then
        echo "killed by SIG$(kill -l "$(( $1 - 128 ))")"
    else
        echo "exit status $1"
    fi
}

seconds() { printf '%d.%d s' $(( $1 / 1000 )) $(( $1 % 1000 / 100 )); }

write_restarts() {
    local n
    for n in "${started[@]}"; do
        printf '%s %d\n' "$n" "${restarts_of[$n]:-0}"
    done > "$run_dir/restarts.tmp"
    mv -f "$run_dir/restarts.tmp" "$run_dir/restarts"
}

# In launch's child: nats-server alone gets the passwords and the store key,
# through its environment (local.conf reads $DW_NATS_PASS_<USER> and
# $DW_JS_KEY), never on a command line.
exec_nats() {
    local name="$1" u conf="$root/deploy/nats/local.conf"
    for u in "${NATS_USERS[@]}"; do
        export "DW_NATS_PASS_${u^^}=$(< "$secrets_dir/nats_$u")"
    done
    export DW_JS_KEY="${js_key_env:-$(< "$secrets_dir/js_key")}"
    (( DW_NATS_NODES > 1 )) && conf="$run_dir/$name.conf"
    exec setsid setpriv --pdeathsig TERM -- nats-server -js -c "$conf" \
        -a 127.0.0.1 -p "${NATS_PORT_OF[$name]}" -sd "${STORE_OF[$name]}"
}

# In launch's child: a service logs in as its own NATS user.
exec_service() {
    local name="$1"
    local env=(DW_NATS_USER="$name" DW_NATS_PASSWORD_FILE="$secrets_dir/nats_$name"
               DW_STATUS_PORT="${STATUS_PORT[$name]}")
    case "$name" in
        registry)
            env+=(DW_REGISTRY_KEY_FILE="$registry_key_file"
                  DW_REGISTRY_OLD_KEY_FILES="$registry_old_key_files")
            (( DW_NATS_NODES > 1 )) && env+=(DW_STREAM_REPLICAS="${DW_STREAM_REPLICAS:-$DW_NATS_NODES}")
            ;;
        deadletter)
            (( DW_NATS_NODES > 1 )) && env+=(DW_STREAM_REPLICAS="${DW_STREAM_REPLICAS:-$DW_NATS_NODES}")
            ;;
    esac
    exec setsid setpriv --pdeathsig TERM -- env "${env[@]}" "$build_dir/bin/$name"
}

# Start (or restart) one process in its own session, so that Ctrl-C
# reaches only this script, which then stops everything in order (services
# before NATS). setpriv --pdeathsig: if this script is SIGKILLed, its
# processes get a SIGTERM instead of running on unattended.
launch() {
    local name="$1" log="$log_dir/$1.log"
    launching=1
    if [[ -z "${started_ms_of[$name]:-}" ]]; then
        : > "$log"   # a restart appends: the log keeps what came before
        # --pid: the tail goes away with this script even if it is SIGKILLed.
        # It ignores SIGINT, so that a Ctrl-C in the terminal (which reaches
        # the whole process group) leaves the shutdown's lines visible.
        ( trap '' INT; exec {lock_fd}>&- {tick_fd}>&- {term_fd}>&-
          exec tail -n +1 -F --pid=$$ "$log" 2>/dev/null > >(sed -u "s/^/$(printf '%-10s' "$name") | /") ) &
        tails+=($!)
        started+=("$name")
    fi
    (
        exec {lock_fd}>&- {tick_fd}>&- {term_fd}>&- < /dev/null >> "$log" 2>&1
        if [[ -n "${NATS_PORT_OF[$name]:-}" ]]; then exec_nats "$name"; else exec_service "$name"; fi
    ) &
    local pid=$! now
    pid_of[$name]=$pid
    clock
    started_ms_of[$name]=$now
    echo "$pid" > "$run_dir/$name.pid"
    launching=0
    if (( stop_pending )); then on_signal; fi
}

# NAME's process is gone (not running): collect its exit status (bash
# keeps it, also when the process was reaped during another command) and
# schedule its restart after the current backoff delay, or stop everything.
exited() {
    local name="$1" status=0 up_ms now
    wait "${pid_of[$name]}" 2>/dev/null || status=$?
    clock
    up_ms=$(( now - ${started_ms_of[$name]} ))
    unset "pid_of[$name]"
    rm -f "$run_dir/$name.pid"
    if (( ! supervising )); then
        last_lines "$name"
        fail "$name exited during start-up ($(describe_exit "$status"))"
    elif (( ! restart_on )); then
        last_lines "$name"
        fail "$name exited unexpectedly ($(describe_exit "$status")); stopping everything (DW_RESTART=off)"
    fi
    # A process that ran a while before dying is back to the first delay.
    if (( up_ms >= RESTART_RESET_S * 1000 )); then
        attempt_of[$name]=0
        delay_ms_of[$name]=$RESTART_DELAY_MS
    fi
    local delay="${delay_ms_of[$name]:-$RESTART_DELAY_MS}"
    attempt_of[$name]=$(( ${attempt_of[$name]:-0} + 1 ))
    restarts_of[$name]=$(( ${restarts_of[$name]:-0} + 1 ))
    delay_ms_of[$name]=$(( delay * 2 > RESTART_MAX_DELAY_MS ? RESTART_MAX_DELAY_MS : delay * 2 ))
    write_restarts
    say "$name exited ($(describe_exit "$status")) after $(seconds "$up_ms"): restart ${restarts_of[$name]}" \
        "(attempt ${attempt_of[$name]} in a row) in $(seconds "$delay"); log $log_dir/$name.log"
    restart_at_ms[$name]=$(( now + delay ))
}

# SIGTERM, up to STOP_TIMEOUT_S for a clean exit, then SIGKILL.
stop_one() {
    local name="$1" pid="${pid_of[$1]:-}"
    [[ -n "$pid" ]] || return 0
    if running "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        local now deadline
        clock
        deadline=$(( now + STOP_TIMEOUT_S * 1000 ))
        while running "$pid" && (( now < deadline )); do
            tick 0.1
            clock
        done
        if running "$pid"; then
            say "$name did not stop within ${STOP_TIMEOUT_S} s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    unset "pid_of[$name]"
    rm -f "$run_dir/$name.pid"
}

stop_all() {
    (( stopping )) && return 0
    stopping=1
    # A second Ctrl-C must not cut the shutdown short and leave orphans.
    trap '' INT TERM HUP
    local i pid
    restart_at_ms=()   # pending restarts: cancelled
    for (( i = ${#started[@]} - 1; i >= 0; i-- )); do
        stop_one "${started[i]}"
    done
    for pid in "${tails[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    tails=()
    rm -f "$run_dir/up.pid"
}

fail() {
    say "$*"
    failed=1
    stop_all
    exit 1
}

# shellcheck disable=SC2317  # called by the trap
on_exit() {
    local rc=$?
    stop_all
    if (( rc != 0 && ! failed )); then
        say "ended with status $rc (an error in this script? see $log_dir/up.log)"
    fi
}

# shellcheck disable=SC2317  # called by the trap
on_signal() {
    if (( launching )); then   # launch has not recorded its PID yet
        stop_pending=1
        return 0
    fi
    say "stopping"
    stop_all
    say "stopped"
    exit 0
}

# secret NAME PREFIX BYTES: $secrets_dir/NAME holds PREFIX and BYTES random
# bytes in hex, made once and never overwritten (the store keys cannot
# change, and the passwords must match what nats-server was given). The
# prefix is a letter where nats-server reads the value: it reads a bare
# 2e3f... as a number.
secret() {
    local f="$secrets_dir/$1"
    [[ -s "$f" ]] && return 0
    ( umask 077
      printf '%s%s\n' "$2" "$(od -An -v -tx1 -N"$3" /dev/urandom | tr -d ' \n')" > "$f.tmp" )
    mv -f "$f.tmp" "$f"
    say "created $f"
}

make_secrets() {
    ( umask 077; mkdir -p "$secrets_dir" )
    chmod 700 "$secrets_dir"
    secret js_key k 32
    local u
    for u in "${NATS_USERS[@]}"; do
        secret "nats_$u" p 24
    done
    (( DW_NATS_NODES > 1 )) && secret nats_route p 24
    # The registry's AES-256 key: 64 hex digits (services/common crypto.c).
    if [[ "${DW_REGISTRY_KEY:-}" != none && -z "$registry_key_file" ]]; then
        secret registry_key "" 32
        registry_key_file="$secrets_dir/registry_key"
    fi
    return 0
}

# DW_TLS=self-signed: a certificate for localhost and 127.0.0.1, made once.
make_tls() {
    local dir="$data_dir/tls"
    if [[ ! -s "$dir/cert.pem" || ! -s "$dir/key.pem" ]]; then
        ( umask 077; mkdir -p "$dir" )
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
            -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null ||
            fail "openssl could not make a self-signed certificate in $dir"
        say "created a self-signed certificate: $dir/cert.pem"
    fi
    export DW_TLS_CERT="$dir/cert.pem" DW_TLS_KEY="$dir/key.pem"
}

# DW_NATS_NODES=3: one config per node, local.conf plus a cluster block.
# The routes log in with their own password, which a route URL must carry:
# the file is the node's secret (mode 0600), rewritten at every start.
make_cluster_confs() {
    local name other pass rel
    pass="$(< "$secrets_dir/nats_route")"
    rel="$(realpath --relative-to="$run_dir" "$root/deploy/nats/local.conf")"
    for name in "${NATS_NODES[@]}"; do
        mkdir -p "${STORE_OF[$name]}"
        ( umask 077
          {
            echo "# Made by scripts/up.sh for DW_NATS_NODES=$DW_NATS_NODES; rewritten at every start."
            echo "include \"$rel\""
            echo "server_name: dynamowave-local-${name#nats}"
            echo "http: 127.0.0.1:${HTTP_PORT_OF[$name]}"
            echo "cluster {"
            echo "  name: dynamowave-local"
            echo "  listen: 127.0.0.1:${ROUTE_PORT_OF[$name]}"
            echo "  authorization { user: route, password: \"$pass\" }"
            echo "  routes: ["
            for other in "${NATS_NODES[@]}"; do
                [[ "$other" == "$name" ]] ||
                    echo "    nats://route:$pass@127.0.0.1:${ROUTE_PORT_OF[$other]}"
            done
            echo "  ]"
            echo "}"
          } > "$run_dir/$name.conf.tmp" )
        mv -f "$run_dir/$name.conf.tmp" "$run_dir/$name.conf"
    done
}

# The JetStream meta leader's name, from the first node that answers /jsz.
meta_leader() {
    local name out
    for name in "${NATS_NODES[@]}"; do
        out="$(curl -fsS --max-time 1 "http://127.0.0.1:${HTTP_PORT_OF[$name]}/jsz" 2>/dev/null)" || continue
        out="${out//[[:space:]]/}"
        if [[ "$out" =~ \"meta_cluster\":\{[^}]*\"leader\":\"([^\"]+)\" ]]; then
            echo "${BASH_REMATCH[1]}"
            return 0
        fi
    done
    return 1
}

# Run a command as one of the NATS users: its user name and the file
# holding its password (never the password itself on a command line).
as_user() {
    local u="$1"
    shift
    env DW_NATS_USER="$u" DW_NATS_PASSWORD_FILE="$secrets_dir/nats_$u" "$@"
}

# One look at every process: a process that is gone is handled by exited
# (during start-up: everything stops), a restart that is due is made.
check_processes() {
    local name now
    for name in "${started[@]}"; do
        if [[ -n "${pid_of[$name]:-}" ]]; then
            running "${pid_of[$name]}" || exited "$name"
        elif [[ -n "${restart_at_ms[$name]:-}" ]]; then
            clock
            if (( now >= ${restart_at_ms[$name]} )); then
                unset "restart_at_ms[$name]"
                launch "$name"
            fi
        fi
    done
}

trap on_signal INT TERM HUP
trap on_exit EXIT

"$root/scripts/deps.sh"
if (( build_first )); then
    cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo
    cmake --build "$build_dir" -j2
fi
for bin in "${SERVICES[@]}" dwctl; do
    [[ -x "$build_dir/bin/$bin" ]] || fail "$build_dir/bin/$bin is missing (did the build make it?)"
done

# Someone else on our ports would answer our readiness checks: refuse early.
for n in "${NATS_NODES[@]}"; do
    for p in "${NATS_PORT_OF[$n]}" "${ROUTE_PORT_OF[$n]:-}" "${HTTP_PORT_OF[$n]:-}"; do
        [[ -z "$p" ]] || ! port_open "$p" || fail "port $p is in use (another nats-server? set DW_NATS_PORT)"
    done
done
for p in "$DW_PORT" "$DW_MGMT_PORT" "${STATUS_PORT[@]}"; do
    (( p == 0 )) || ! port_open "$p" || fail "port $p is in use (another stack? set DW_PORT and DW_MGMT_PORT)"
done
# A registry table follows the DW_CONN stream it was built from: a table
# made with one node must not meet a cluster's fresh streams, or the reverse.
if [[ -d "$data_dir/registry" ]]; then
    if (( DW_NATS_NODES > 1 )) && [[ -d "$data_dir/nats/jetstream" ]]; then
        fail "$data_dir holds a one-node stack; its registry follows that store. Use another DW_DATA_DIR for DW_NATS_NODES=$DW_NATS_NODES"
    elif (( DW_NATS_NODES == 1 )) && [[ -d "$data_dir/nats1" ]]; then
        fail "$data_dir holds a cluster stack; its registry follows those stores. Use another DW_DATA_DIR, or DW_NATS_NODES=3"
    fi
fi

make_secrets
case "${DW_TLS:-}" in
    ""|off|0) ;;
    self-signed) make_tls ;;
    *) fail "DW_TLS='${DW_TLS}': only 'self-signed' is known (or set DW_TLS_CERT and DW_TLS_KEY)" ;;
esac
if [[ -z "$registry_key_file" ]]; then
    say "WARNING: DW_REGISTRY_KEY=none: the registry writes connection records (user ids, source IPs, user agents) in plaintext under $data_dir/registry"
fi

(( DW_NATS_NODES > 1 )) && make_cluster_confs
mkdir -p "${STORE_OF[@]}"
for n in "${NATS_NODES[@]}"; do
    launch "$n"
done
clock
deadline=$(( now + NATS_TIMEOUT_S * 1000 ))
for n in "${NATS_NODES[@]}"; do
    until port_open "${NATS_PORT_OF[$n]}"; do
        check_processes
        clock
        (( now < deadline )) || { last_lines "$n"; fail "$n did not accept connections within ${NATS_TIMEOUT_S} s"; }
        tick 0.1
    done
done
if (( DW_NATS_NODES > 1 )); then
    # Streams can be made only once the nodes have elected a meta leader.
    until leader="$(meta_leader)"; do
        check_processes
        clock
        (( now < deadline )) || { last_lines "${NATS_NODES[0]}"; fail "the JetStream cluster has no meta leader after ${NATS_TIMEOUT_S} s"; }
        tick 0.1
    done
    say "JetStream cluster of $DW_NATS_NODES nodes up, meta leader $leader"
fi

for svc in "${SERVICES[@]}"; do
    launch "$svc"
done

# Up = the edge says it is ready and `dwctl status` finds the registry
# answering, both streams and the dispatcher's consumer.
ready() {
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$DW_PORT/readyz" 2>/dev/null &&
        as_user dwctl "$build_dir/bin/dwctl" status --timeout-ms 1000 >/dev/null 2>&1
}
# Only the reason: stderr to the caller, stdout away.
# shellcheck disable=SC2069
ready_why() {
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$DW_PORT/readyz" 2>&1 ||
        as_user dwctl "$build_dir/bin/dwctl" status --timeout-ms 1000 2>&1 >/dev/null
}
clock
deadline=$(( now + READY_TIMEOUT_S * 1000 ))
until ready; do
    check_processes
    clock
    (( now < deadline )) || { last_lines edge; fail "not ready within ${READY_TIMEOUT_S} s: $(ready_why)"; }
    tick 0.2
done

# A table written before the registry had a key still holds plaintext rows
# (the registry warns): seal them now. Checkpoints taken before keep theirs.
if [[ -n "$registry_key_file" ]] &&
    as_user dwctl "$build_dir/bin/dwctl" registry status --json 2>/dev/null | grep -q '"plaintext"'; then
    say "the registry's table still holds plaintext rows from before it had a key: sealing them (dwctl registry rotate-key)"
    as_user dwctl "$build_dir/bin/dwctl" registry rotate-key >&"$term_fd" ||
        say "dwctl registry rotate-key failed; run it by hand (docs/security.md)"
    say "checkpoints taken before still hold plaintext: delete them from $data_dir/registry/*/checkpoints once a new one exists"
fi

scheme=ws
[[ -n "${DW_TLS_CERT:-}" ]] && scheme=wss
echo "DynamoWave is up: $scheme://localhost:$DW_PORT/"
echo "management API: http://127.0.0.1:$DW_MGMT_PORT/@connections/{id}"
echo "dwctl: DW_NATS_URL=$DW_NATS_URL DW_NATS_USER=dwctl DW_NATS_PASSWORD_FILE=$secrets_dir/nats_dwctl $build_dir/bin/dwctl status"
echo "workers: DW_NATS_URL=$DW_NATS_URL DW_NATS_USER=worker DW_NATS_PASSWORD_FILE=$secrets_dir/nats_worker (docs/integrations.md)"
if (( DW_NATS_NODES > 1 )); then
    for n in "${NATS_NODES[@]}"; do
        echo "$n: nats://127.0.0.1:${NATS_PORT_OF[$n]}, monitoring http://127.0.0.1:${HTTP_PORT_OF[$n]}/jsz, pid file $run_dir/$n.pid"
    done
fi
write_restarts

# Foreground until a signal (handled by on_signal), looking at every
# process ten times a second. Not `wait -n`: it never returns a process that
# bash reaped and reported ("Killed") while it ran another command.
# bash's own reports of that kind go to up.log from here on.
exec 2>> "$log_dir/up.log"
supervising=1
while :; do
    check_processes
    tick 0.1
done
