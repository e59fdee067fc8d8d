#!/bin/bash
# compose_scripts.sh REPO: the two scripts the compose stack runs behave.
# - deploy/compose/dw-probe (the image's healthcheck): 0 on HTTP 200, 1 on
#   any other status or a closed port, 2 on bad usage; never hangs.
# - deploy/compose/init-secrets.sh: creates every secret once (64 hex
#   digits, mode 0600), never overwrites one.
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
before="$(cat "$tmp/secrets/"*)"
check "init-secrets: second run" 0 bash "$init" "$tmp/secrets"
if [[ "$(cat "$tmp/secrets/"*)" == "$before" ]]; then
    echo "ok   init-secrets: nothing overwritten"; passed=$((passed + 1))
else
    echo "FAIL init-secrets: a second run changed a secret"; failed=$((failed + 1))
fi
if [[ "$(cat "$tmp/secrets/js_key")" != "$(cat "$tmp/secrets/jwt_secret")" ]]; then
    echo "ok   init-secrets: secrets differ"; passed=$((passed + 1))
else
    echo "FAIL init-secrets: two secrets are equal"; failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
(( failed == 0 ))
