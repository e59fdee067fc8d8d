#!/bin/bash
# compose_config.sh REPO: docker-compose.yml passes `docker-compose config -q`
# (Debian's docker-compose validates against the Compose schema without a
# Docker engine), with the defaults and with .env.example, defines the
# services README.md and k8s/README.md talk about, and encrypts the
# registry out of the box. Exit 77 without docker-compose.
set -euo pipefail
repo="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/../..}" && pwd)"
if ! command -v docker-compose >/dev/null 2>&1; then
    echo "SKIP: docker-compose is not installed (Debian: apt-get install docker-compose)"
    exit 77
fi
dc=(docker-compose --project-directory "$repo" -f "$repo/docker-compose.yml")
status=0

# Defaults only: an .env in the work tree must not decide the result.
empty_env="$(mktemp)"
trap 'rm -f "$empty_env"' EXIT
if "${dc[@]}" --env-file "$empty_env" config -q; then
    echo "ok   docker-compose config -q (defaults)"
else
    echo "FAIL docker-compose config -q (defaults)"; status=1
fi
if "${dc[@]}" --env-file "$repo/.env.example" config -q; then
    echo "ok   docker-compose config -q (.env.example)"
else
    echo "FAIL docker-compose config -q (.env.example)"; status=1
fi

services="$("${dc[@]}" --env-file "$empty_env" --profile tools config --services | sort | tr '\n' ' ')"
for s in secrets nats registry dispatcher deadletter api edge proxy dwctl; do
    if [[ " $services" != *" $s "* ]]; then
        echo "FAIL service $s is missing (have: $services)"; status=1
    fi
done

# Every variable the compose file reads is documented in .env.example.
vars="$(grep -o '\${[A-Z_][A-Z0-9_]*' "$repo/docker-compose.yml" | sed 's/^\${//' | sort -u)"
for v in $vars; do
    if ! grep -q "^$v=" "$repo/.env.example"; then
        echo "FAIL \${$v} is used in docker-compose.yml but not documented in .env.example"; status=1
    fi
done
# ... and every knob .env.example documents is used.
for v in $(sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' "$repo/.env.example"); do
    if ! grep -q "\${$v[:}-]" "$repo/docker-compose.yml"; then
        echo "FAIL $v is in .env.example but docker-compose.yml never reads it"; status=1
    fi
done
(( status == 0 )) && echo "ok   services: $services"

# Secure by default: the registry seals its table with registry_key, which
# `secrets` makes on the first start and hands to the registry only.
rendered="$("${dc[@]}" --env-file "$empty_env" config)"
if ! grep -q 'DW_REGISTRY_KEY_FILE: /etc/dynamowave/secrets/registry_key$' <<<"$rendered"; then
    echo "FAIL the registry does not get DW_REGISTRY_KEY_FILE=/etc/dynamowave/secrets/registry_key"; status=1
elif ! grep -q '^gen registry_key ' "$repo/deploy/compose/init-secrets.sh"; then
    echo "FAIL deploy/compose/init-secrets.sh does not generate registry_key"; status=1
else
    echo "ok   the registry's table is encrypted with a generated key"
fi
exit "$status"
