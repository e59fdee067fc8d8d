#!/bin/bash
# compose_scripts.sh REPO: the two scripts the compose stack runs behave.
# - deploy/compose/dw-probe (the image's healthcheck): 0 on HTTP 200, 1 on
#   any other status or a closed port, 2 on bad usage; never hangs.
# - deploy/compose/init-secrets.sh: creates every secret once (64 hex
#   digits, mode 0600; a NATS password for every user of
#   deploy/nats/auth.conf, starting with a letter), never overwrites one, and
#   gives each consumer's volume exactly the files that consumer needs.
set -euo pipefail
repo="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/../..}" && pwd)"
probe="$repo/deploy/compose/dw-probe"
init="$repo/deploy/compose/init-secrets.sh"
py=/usr/bin/python3
[[ -x "$py" ]] || py="$(command -v python3 || true)"
if [[ -z "$py" ]]; then
    echo "SKIP: python3 is not installed"
    exit 77
fi

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
    local rc=$?
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
passed=0 failed=0
check() { # name expected-status command...
    local name="$1" want="$2" got=0
    shift 2
    "$@" >/dev/null 2>&1 || got=$?
    if (( got == want )); then
        echo "ok   $name"; passed=$((passed + 1))
    else
        echo "FAIL $name: exit $got, expected $want"; failed=$((failed + 1))
    fi
}

# A loopback HTTP server: /readyz 200, /draining 503, /slow never answers.
cat > "$tmp/server.py" <<'PY'
import http.server, socketserver, sys, threading, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(30)
        code = 200 if self.path == "/readyz" else 503
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
s = S(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
PY
"$py" "$tmp/server.py" "$tmp/port" &
server_pid=$!
deadline=$((SECONDS + 10))
until [[ -s "$tmp/port" ]]; do
    (( SECONDS < deadline )) || { echo "FAIL the test HTTP server did not start"; exit 1; }
    sleep 0.05
done
port="$(cat "$tmp/port")"
# A port nothing listens on: bind one, note it, release it.
closed="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

check "dw-probe: 200 is healthy" 0 "$probe" "$port" /readyz
check "dw-probe: 503 is unhealthy" 1 "$probe" "$port" /draining
check "dw-probe: closed port is unhealthy" 1 "$probe" "$closed" /readyz
check "dw-probe: bad port is a usage error" 2 "$probe" x /readyz
check "dw-probe: bad path is a usage error" 2 "$probe" "$port" readyz
start=$SECONDS
check "dw-probe: a silent server is unhealthy" 1 "$probe" "$port" /slow
if (( SECONDS - start > 6 )); then
    echo "FAIL dw-probe waited $((SECONDS - start)) s on a silent server"; failed=$((failed + 1))
fi

mkdir "$tmp/secrets"
check "init-secrets: first run" 0 bash "$init" "$tmp/secrets"
for f in js_key jwt_secret registry_key admin_token; do
    v="$(cat "$tmp/secrets/$f" 2>/dev/null || true)"
    mode="$(stat -c %a "$tmp/secrets/$f" 2>/dev/null || true)"
    if [[ "$v" =~ ^[0-9a-f]{64}$ && "$mode" == 600 ]]; then
        echo "ok   init-secrets: $f is 64 hex digits, mode 600"; passed=$((passed + 1))
    else
        echo "FAIL init-secrets: $f is '$v' with mode '$mode'"; failed=$((failed + 1))
    fi
done
# One password per NATS user of auth.conf; nats-server reads a bare value
# that starts with a digit as a number, so they start with a letter.
mapfile -t users < <(sed -n 's/^[[:space:]]*user:[[:space:]]*\([A-Za-z0-9_-]*\).*/\1/p' "$repo/deploy/nats/auth.conf")
if (( ${#users[@]} == 0 )); then
    echo "FAIL deploy/nats/auth.conf defines no user"; failed=$((failed + 1))
fi
for u in "${users[@]}"; do
    f="nats_$u"
    v="$(cat "$tmp/secrets/$f" 2>/dev/null || true)"
    mode="$(stat -c %a "$tmp/secrets/$f" 2>/dev/null || true)"
    if [[ "$v" =~ ^[a-z][0-9a-f]{64}$ && "$mode" == 600 ]]; then
        echo "ok   init-secrets: $f is a letter and 64 hex digits, mode 600"; passed=$((passed + 1))
    else
        echo "FAIL init-secrets: $f is '$v' with mode '$mode'"; failed=$((failed + 1))
    fi
done
before="$(cat "$tmp/secrets/"*)"
check "init-secrets: second run" 0 bash "$init" "$tmp/secrets"
if [[ "$(cat "$tmp/secrets/"*)" == "$before" ]]; then
    echo "ok   init-secrets: nothing overwritten"; passed=$((passed + 1))
else
    echo "FAIL init-secrets: a second run changed a secret"; failed=$((failed + 1))
fi
if [[ "$(for f in "$tmp/secrets/"*; do cat "$f"; echo; done | sort | uniq -d)" == "" ]]; then
    echo "ok   init-secrets: secrets differ"; passed=$((passed + 1))
else
    echo "FAIL init-secrets: two secrets are equal"; failed=$((failed + 1))
fi

# Least privilege: each consumer's volume holds exactly what it reads.
declare -A want=(
    [nats]="js_key $(printf 'nats_%s ' "${users[@]}")"
    [registry]="nats_registry registry_key"
    [dispatcher]="nats_dispatcher"
    [deadletter]="nats_deadletter"
    [api]="nats_api admin_token"
    [edge]="nats_edge jwt_secret"
    [dwctl]="nats_dwctl"
    [worker]="nats_worker"
)
share="$tmp/share"
for c in "${!want[@]}"; do mkdir -p "$share/$c"; done
# shares() CONSUMER EXTRA...: the consumer's volume holds exactly its files
# (plus EXTRA), each equal to the original and readable by its owner only.
shares() {
    local c="$1" f problem=""
    shift
    local expect have
    expect="$(printf '%s\n' ${want[$c]} "$@" | sort | tr '\n' ' ')"
    have="$(ls -A "$share/$c" | sort | tr '\n' ' ')"
    [[ "$have" == "$expect" ]] || problem="has '$have', expected '$expect'"
    for f in ${want[$c]} "$@"; do
        [[ -z "$problem" ]] || break
        cmp -s "$tmp/secrets/$f" "$share/$c/$f" || problem="$f differs from the original"
        [[ "$(stat -c %a "$share/$c/$f")" == 400 ]] || problem="$f is not mode 400"
    done
    if [[ -z "$problem" ]]; then
        echo "ok   init-secrets: $c gets $(echo ${want[$c]} "$@")"; passed=$((passed + 1))
    else
        echo "FAIL init-secrets: $c $problem"; failed=$((failed + 1))
    fi
}
check "init-secrets: with the consumers' volumes" 0 bash "$init" "$tmp/secrets" "$share"
for c in nats registry dispatcher deadletter api edge dwctl worker; do shares "$c"; done
# Optional files reach the edge when present and leave when removed.
printf 'cert\n' > "$tmp/secrets/tls.crt"
printf 'key\n' > "$tmp/secrets/tls.key"
check "init-secrets: with a TLS certificate" 0 bash "$init" "$tmp/secrets" "$share"
shares edge tls.crt tls.key
rm "$tmp/secrets/tls.crt" "$tmp/secrets/tls.key"
check "init-secrets: without it again" 0 bash "$init" "$tmp/secrets" "$share"
shares edge
# A registry key rotation: the old key stays readable next to a new one
# until DW_ROTATE_DONE; a second rotation before that is refused.
old_key="$(cat "$tmp/secrets/registry_key")"
check "init-secrets: DW_ROTATE=registry_key" 0 env DW_ROTATE=registry_key bash "$init" "$tmp/secrets" "$share"
new_key="$(cat "$tmp/secrets/registry_key")"
if [[ "$(cat "$tmp/secrets/registry_key_old")" == "$old_key" && "$new_key" =~ ^[0-9a-f]{64}$ &&
      "$new_key" != "$old_key" ]]; then
    echo "ok   init-secrets: a new registry_key, the old one as registry_key_old"; passed=$((passed + 1))
else
    echo "FAIL init-secrets: rotation left registry_key '$new_key', registry_key_old" \
         "'$(cat "$tmp/secrets/registry_key_old" 2>/dev/null)'"; failed=$((failed + 1))
fi
shares registry registry_key_old
check "init-secrets: a second rotation under way is refused" 1 env DW_ROTATE=registry_key bash "$init" "$tmp/secrets" "$share"
check "init-secrets: DW_ROTATE of another secret is refused" 1 env DW_ROTATE=js_key bash "$init" "$tmp/secrets" "$share"
check "init-secrets: DW_ROTATE_DONE=registry_key" 0 env DW_ROTATE_DONE=registry_key bash "$init" "$tmp/secrets" "$share"
shares registry
if [[ "$(cat "$tmp/secrets/registry_key")" == "$new_key" && ! -e "$tmp/secrets/registry_key_old" ]]; then
    echo "ok   init-secrets: the new key stays, the old one is gone"; passed=$((passed + 1))
else
    echo "FAIL init-secrets: after DW_ROTATE_DONE"; failed=$((failed + 1))
fi
rm -rf "${share:?}/dwctl"
check "init-secrets: a consumer's volume missing is an error" 1 bash "$init" "$tmp/secrets" "$share"

echo "$passed passed, $failed failed"
(( failed == 0 ))
