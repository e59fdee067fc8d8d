#!/usr/bin/env bash
# Run DynamoWave locally, in the foreground: nats-server (JetStream), then
# the registry, the dispatcher, the api and the edge. Ctrl-C (or SIGTERM)
# stops them all: the services first, each with SIGTERM and up to 10 s
# before SIGKILL, then nats-server. If any process dies on its own,
# everything is stopped and the exit status is 1.
#
#   scripts/up.sh [--no-build]
#
# Environment (defaults in brackets):
#   DW_PORT       WebSocket/HTTP port of the edge [8080]
#   DW_NATS_PORT  nats-server client port [4222]
#   DW_MGMT_PORT  the api's @connections port, loopback only [DW_PORT + 1]
#   the status ports (/healthz /readyz /metrics) of registry, api, deadletter
#   and dispatcher are DW_PORT + 10, 11, 12, 13, so stacks side by side differ
#   DW_DATA_DIR   JetStream store, service data, secrets and logs [var]
#   DW_BUILD_DIR  CMake build directory [build]
#   DW_TLS        self-signed: the edge serves wss:// and https:// with a
#                 certificate made once in $DW_DATA_DIR/tls [off]
# NATS runs with one user per service (deploy/nats/auth.conf); the
# passwords and the JetStream store key are made on the first run in
# $DW_DATA_DIR/secrets (mode 0600). To use dwctl against this stack:
#   DW_NATS_USER=dwctl DW_NATS_PASSWORD_FILE=$DW_DATA_DIR/secrets/nats_dwctl dwctl status
# Logs: $DW_DATA_DIR/log/<process>.log, also shown here with a prefix.
# Two stacks run side by side with different DW_PORT, DW_NATS_PORT,
# DW_MGMT_PORT and DW_DATA_DIR.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

build_first=1
case "${1:-}" in
    "") ;;
    --no-build) build_first=0 ;;
    -h|--help) sed -n '2,26s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "up.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

DW_PORT="${DW_PORT:-8080}"
DW_NATS_PORT="${DW_NATS_PORT:-4222}"
DW_MGMT_PORT="${DW_MGMT_PORT:-$((DW_PORT + 1))}"
for v in DW_PORT DW_NATS_PORT DW_MGMT_PORT; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || (( ${!v} < 1 || ${!v} > 65535 )); then
        echo "up.sh: $v='${!v}' is not a port number" >&2
        exit 2
    fi
done
# Relative paths are relative to where up.sh was started; services get
# absolute ones.
data_dir="${DW_DATA_DIR:-$root/var}"
build_dir="${DW_BUILD_DIR:-$root/build}"
mkdir -p "$data_dir/log" "$data_dir/nats"
data_dir="$(cd "$data_dir" && pwd)"
[[ "$build_dir" = /* ]] || build_dir="$PWD/$build_dir"
log_dir="$data_dir/log"
cd "$root"

export DW_PORT DW_MGMT_PORT DW_DATA_DIR="$data_dir" DW_NATS_URL="nats://127.0.0.1:$DW_NATS_PORT"

SERVICES=(registry dispatcher deadletter api edge)   # start order; stopped in reverse
declare -A STATUS_PORT=([registry]=$((DW_PORT + 10)) [api]=$((DW_PORT + 11))
                        [deadletter]=$((DW_PORT + 12)) [dispatcher]=$((DW_PORT + 13)) [edge]=0)
# One NATS user each (deploy/nats/auth.conf); deadletter's is ready for it.
NATS_USERS=(edge registry dispatcher deadletter api dwctl)
secrets_dir="$data_dir/secrets"
NATS_TIMEOUT_S=10
READY_TIMEOUT_S=30
STOP_TIMEOUT_S=10

declare -A pid_of=()   # process name -> pid
started=()             # process names in start order
tails=()               # tail -F pids
stopping=0

say() { printf 'up.sh: %s\n' "$*" >&2; }

alive() { [[ -n "${pid_of[$1]:-}" ]] && kill -0 "${pid_of[$1]}" 2>/dev/null; }

# Milliseconds on a clock good enough for deadlines (SECONDS ticks whole seconds).
now_ms() { local t="${EPOCHREALTIME//[.,]/}"; echo $(( t / 1000 )); }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

last_lines() {
    say "last lines of $log_dir/$1.log:"
    tail -n 25 "$log_dir/$1.log" | sed "s/^/    /" >&2 || true
}

# SIGTERM, up to STOP_TIMEOUT_S for a clean exit, then SIGKILL.
stop_one() {
    local name="$1" pid="${pid_of[$1]:-}"
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$(( $(now_ms) + STOP_TIMEOUT_S * 1000 ))
        while kill -0 "$pid" 2>/dev/null && (( $(now_ms) < deadline )); do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop within ${STOP_TIMEOUT_S} s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    unset "pid_of[$name]"
}

stop_all() {
    (( stopping )) && return 0
    stopping=1
    # A second Ctrl-C must not cut the shutdown short and leave orphans.
    trap '' INT TERM HUP
    local i
    for (( i = ${#started[@]} - 1; i >= 0; i-- )); do
        stop_one "${started[i]}"
    done
    for pid in "${tails[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    tails=()
}

fail() {
    say "$*"
    stop_all
    exit 1
}

# shellcheck disable=SC2317  # called by the trap
on_signal() {
    say "stopping"
    stop_all
    say "stopped"
    exit 0
}

# Start one process in its own session, so that Ctrl-C reaches only this
# script, which then stops everything in order (services before NATS).
start() {
    local name="$1"
    shift
    local log="$log_dir/$name.log"
    : > "$log"
    # --pid: the tail goes away with this script even if it is SIGKILLed.
    tail -n +1 -F --pid=$$ "$log" 2>/dev/null > >(sed -u "s/^/$(printf '%-10s' "$name") | /") &
    tails+=($!)
    setsid "$@" >> "$log" 2>&1 < /dev/null &
    pid_of[$name]=$!
    started+=("$name")
}

# secret NAME PREFIX BYTES: $secrets_dir/NAME holds PREFIX and BYTES random
# bytes in hex, made once and never overwritten (the store key cannot
# change, and the passwords must match what nats-server was given). The
# prefix is a letter: nats-server reads a bare 2e3f... as a number.
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

# Run a command as one of the NATS users: its user name and the file
# holding its password (never the password itself on a command line).
as_user() {
    local u="$1"
    shift
    env DW_NATS_USER="$u" DW_NATS_PASSWORD_FILE="$secrets_dir/nats_$u" "$@"
}

trap on_signal INT TERM HUP
trap stop_all EXIT

"$root/scripts/deps.sh"
if (( build_first )); then
    cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo
    cmake --build "$build_dir" -j2
fi
for bin in "${SERVICES[@]}" dwctl; do
    [[ -x "$build_dir/bin/$bin" ]] || fail "$build_dir/bin/$bin is missing (did the build make it?)"
done

# Someone else on our ports would answer our readiness checks: refuse early.
port_open "$DW_NATS_PORT" && fail "port $DW_NATS_PORT is in use (another nats-server? set DW_NATS_PORT)"
port_open "$DW_PORT" && fail "port $DW_PORT is in use (another stack? set DW_PORT)"
port_open "$DW_MGMT_PORT" && fail "port $DW_MGMT_PORT is in use (another stack? set DW_MGMT_PORT)"

make_secrets
case "${DW_TLS:-}" in
    ""|off|0) ;;
    self-signed) make_tls ;;
    *) fail "DW_TLS='${DW_TLS}': only 'self-signed' is known (or set DW_TLS_CERT and DW_TLS_KEY)" ;;
esac

# nats-server alone gets the passwords and the store key, through its
# environment (local.conf reads $DW_NATS_PASS_<USER> and $DW_JS_KEY).
for u in "${NATS_USERS[@]}"; do
    declare -x "DW_NATS_PASS_${u^^}=$(< "$secrets_dir/nats_$u")"
done
DW_JS_KEY="${DW_JS_KEY:-$(< "$secrets_dir/js_key")}"
export DW_JS_KEY
start nats nats-server -js -c "$root/deploy/nats/local.conf" \
    -a 127.0.0.1 -p "$DW_NATS_PORT" -sd "$data_dir/nats"
for u in "${NATS_USERS[@]}"; do
    unset "DW_NATS_PASS_${u^^}"
done
unset DW_JS_KEY
deadline=$(( $(now_ms) + NATS_TIMEOUT_S * 1000 ))
until port_open "$DW_NATS_PORT"; do
    alive nats || { last_lines nats; fail "nats-server exited during start"; }
    (( $(now_ms) < deadline )) || { last_lines nats; fail "nats-server did not accept connections within ${NATS_TIMEOUT_S} s"; }
    sleep 0.1
done

for svc in "${SERVICES[@]}"; do
    start "$svc" env DW_NATS_USER="$svc" DW_NATS_PASSWORD_FILE="$secrets_dir/nats_$svc" \
        DW_STATUS_PORT="${STATUS_PORT[$svc]}" "$build_dir/bin/$svc"
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
deadline=$(( $(now_ms) + READY_TIMEOUT_S * 1000 ))
until ready; do
    for name in "${started[@]}"; do
        if ! alive "$name"; then
            status=0
            wait "${pid_of[$name]}" || status=$?
            unset "pid_of[$name]"
            last_lines "$name"
            fail "$name exited during start (status $status)"
        fi
    done
    (( $(now_ms) < deadline )) || { last_lines edge; fail "not ready within ${READY_TIMEOUT_S} s: $(ready_why)"; }
    sleep 0.2
done

scheme=ws
[[ -n "${DW_TLS_CERT:-}" ]] && scheme=wss
echo "DynamoWave is up: $scheme://localhost:$DW_PORT/"
echo "management API: http://127.0.0.1:$DW_MGMT_PORT/@connections/{id}"
echo "dwctl: DW_NATS_URL=$DW_NATS_URL DW_NATS_USER=dwctl DW_NATS_PASSWORD_FILE=$secrets_dir/nats_dwctl $build_dir/bin/dwctl status"

# Foreground until a signal (handled by on_signal) or until a process dies.
pids=()
for name in "${started[@]}"; do pids+=("${pid_of[$name]}"); done
died=""
status=0
wait -n -p died "${pids[@]}" || status=$?
for name in "${started[@]}"; do
    if [[ "${pid_of[$name]}" == "$died" ]]; then
        unset "pid_of[$name]"   # already reaped by wait -n
        last_lines "$name"
        fail "$name exited unexpectedly (status $status); stopping everything"
    fi
done
fail "wait failed (status $status); stopping everything"
