#!/bin/bash
# Create the secrets of the compose stack once, in the `secrets` volume
# (mounted at /etc/dynamowave/secrets), so that `docker compose up` works on
# a fresh machine and no secret value is ever committed. Runs as the one-shot
# service `secrets` before everything else.
#
# An existing file is never overwritten: js_key encrypts the JetStream store
# and the registry key encrypts registry values, so changing either makes
# stored data unreadable. Back the volume up (see README.md).
#
# To bring your own value, write it before the first start, e.g.
#   docker compose run --rm --no-deps --entrypoint bash secrets \
#     -c 'cat > /etc/dynamowave/secrets/jwt_secret' < my-jwt-secret
set -euo pipefail

dir="${1:-/etc/dynamowave/secrets}"
umask 077

# gen NAME BYTES: NAME gets BYTES random bytes from the kernel CSPRNG, hex.
gen() {
    local f="$dir/$1"
    if [[ -s "$f" ]]; then
        echo "init-secrets: keeping $1"
        return
    fi
    od -An -v -tx1 -N"$2" /dev/urandom | tr -d ' \n' > "$f.tmp"
    mv -f "$f.tmp" "$f"
    echo "init-secrets: created $1"
}

gen js_key 32        # JetStream store encryption (nats.conf: key: $JS_KEY)
gen jwt_secret 32    # HS256 secret for DW_AUTH=jwt (DW_JWT_SECRET_FILE)
gen registry_key 32  # registry values at rest, AES-256-GCM (DW_REGISTRY_KEY_FILE)
gen admin_token 32   # bearer token of the api service's management API (DW_ADMIN_TOKEN_FILE)

# ---- per-service NATS credentials: issue #5 --------------------------------
# One file per service (nats_edge, nats_registry, nats_dispatcher,
# nats_deadletter, nats_dwctl) in the format DW_NATS_CREDS reads, and the
# matching auth.conf for nats-server, are generated here once issue #5 has
# fixed both formats.
