#!/bin/bash
# Create the secrets of the compose stack once, and hand each container only
# the ones it needs. Runs as the one-shot service `secrets` before everything
# else, so that `docker compose up` works on a fresh machine and no secret
# value is ever committed.
#
#   init-secrets.sh [DIR [SHARE_ROOT]]
#
# DIR (the `secrets` volume, /etc/dynamowave/secrets) keeps the originals;
# only the `secrets` service mounts it. An existing file there is never
# overwritten: js_key encrypts the JetStream store and registry_key the
# registry's values, so changing either makes stored data unreadable, and the
# NATS passwords must match what nats-server was given. Back the volume up.
#
# SHARE_ROOT/<consumer> (one volume per container: nats, registry,
# dispatcher, deadletter, api, edge, dwctl, and worker for your own
# workers) gets copies of exactly the files
# that consumer reads (table below), rewritten from DIR on every run, so a
# container never sees another service's NATS password or key. When run as
# root (the `secrets` service is), the copies are given to DW_SECRETS_UID
# (10001, the image's user), mode 0400.
#
# To bring your own value, write it into DIR before the first start (or
# replace it and restart the stack: the copies follow), e.g.
#   docker compose run --rm --no-deps --entrypoint bash secrets \
#     -c 'cat > /etc/dynamowave/secrets/jwt_secret' < my-jwt-secret
# Optional files, copied to the edge when present: tls.crt + tls.key (then
# set DW_TLS_CERT/DW_TLS_KEY, see .env.example) and jwt_secret_prev (a JWT
# secret rotation, DW_JWT_SECRET_PREV_FILE); to the registry:
# registry_key_old (a registry key rotation, which docker-compose.yml hands
# over as DW_REGISTRY_OLD_KEY_FILES while the file is there).
#
# Rotating the registry key (docs/security.md has the steps):
#   DW_ROTATE=registry_key       keep the current key as registry_key_old
#                                and make a new registry_key
#   DW_ROTATE_DONE=registry_key  remove registry_key_old, once
#                                `dwctl registry rotate-key` re-sealed the table
set -euo pipefail

dir="${1:-/etc/dynamowave/secrets}"
share="${2:-}"
owner_uid="${DW_SECRETS_UID:-10001}"
owner_gid="${DW_SECRETS_GID:-10001}"
umask 077

# One NATS user per service (deploy/nats/auth.conf), and `worker` for user
# code; nats-server gets every password, each consumer only its own
# (nats_<user>).
NATS_USERS=(edge registry dispatcher deadletter api dwctl worker)

# gen NAME BYTES [PREFIX]: NAME gets PREFIX and BYTES random bytes from the
# kernel CSPRNG, in hex.
gen() {
    local f="$dir/$1"
    if [[ -s "$f" ]]; then
        echo "init-secrets: keeping $1"
        return
    fi
    { printf '%s' "${3:-}"; od -An -v -tx1 -N"$2" /dev/urandom | tr -d ' \n'; } > "$f.tmp"
    mv -f "$f.tmp" "$f"
    echo "init-secrets: created $1"
}

case "${DW_ROTATE:-}" in
    "") ;;
    registry_key)
        if [[ -e "$dir/registry_key_old" ]]; then
            echo "init-secrets: registry_key_old exists: a rotation is under way; finish it first" \
                 "(dwctl registry rotate-key, then DW_ROTATE_DONE=registry_key)" >&2
            exit 1
        fi
        if [[ ! -s "$dir/registry_key" ]]; then
            echo "init-secrets: there is no registry_key to rotate" >&2
            exit 1
        fi
        mv "$dir/registry_key" "$dir/registry_key_old"
        echo "init-secrets: registry_key is now registry_key_old (still read); a new one follows"
        ;;
    *)
        echo "init-secrets: DW_ROTATE=$DW_ROTATE: only registry_key rotates this way (docs/security.md)" >&2
        exit 1
        ;;
esac
case "${DW_ROTATE_DONE:-}" in
    "") ;;
    registry_key)
        rm -f "$dir/registry_key_old"
        echo "init-secrets: registry_key_old removed"
        ;;
    *)
        echo "init-secrets: DW_ROTATE_DONE=$DW_ROTATE_DONE: only registry_key rotates this way" >&2
        exit 1
        ;;
esac

gen js_key 32        # JetStream store encryption (nats.conf: key: $JS_KEY)
gen jwt_secret 32    # HS256 secret for DW_AUTH=jwt (DW_JWT_SECRET_FILE)
gen registry_key 32  # registry values at rest, AES-256-GCM (DW_REGISTRY_KEY_FILE)
gen admin_token 32   # bearer token of the api service's management API (DW_ADMIN_TOKEN_FILE)
# NATS passwords (DW_NATS_PASSWORD_FILE; nats-server: DW_NATS_PASS_<USER>).
# They start with a letter, as deploy/nats/auth.conf asks: nats-server would
# read a bare 2e3f... as a number (the nats entrypoint quotes them anyway).
for u in "${NATS_USERS[@]}"; do
    gen "nats_$u" 32 p
done

[[ -n "$share" ]] || exit 0

# What each consumer reads. A leading `?` marks an optional file: copied
# when DIR has it, removed from the consumer's copy when DIR does not.
declare -A NEEDS=(
    [nats]="js_key ${NATS_USERS[*]/#/nats_}"
    [registry]="nats_registry registry_key ?registry_key_old"
    [dispatcher]="nats_dispatcher"
    [deadletter]="nats_deadletter"
    [api]="nats_api admin_token"
    [edge]="nats_edge jwt_secret ?jwt_secret_prev ?tls.crt ?tls.key"
    [dwctl]="nats_dwctl"
    [worker]="nats_worker"
)

as_root=0
if [[ "$(id -u)" == 0 ]]; then as_root=1; fi

# copy SRC DST: DST becomes a mode-0400 copy of SRC owned by the consumer's
# user, replaced atomically (a container starting now sees old or new).
copy() {
    local tmp="$2.tmp"
    rm -f "$tmp"
    cat "$1" > "$tmp"
    chmod 0400 "$tmp"
    if (( as_root )); then chown "$owner_uid:$owner_gid" "$tmp"; fi
    mv -f "$tmp" "$2"
}

for consumer in nats registry dispatcher deadletter api edge dwctl worker; do
    out="$share/$consumer"
    if [[ ! -d "$out" ]]; then
        echo "init-secrets: $out is missing (docker-compose.yml mounts one volume per consumer)" >&2
        exit 1
    fi
    copied=()
    for name in ${NEEDS[$consumer]}; do
        optional=0
        if [[ "$name" == \?* ]]; then
            optional=1
            name="${name#\?}"
        fi
        if [[ -s "$dir/$name" ]]; then
            copy "$dir/$name" "$out/$name"
            copied+=("$name")
        elif (( optional )); then
            rm -f "$out/$name"
        else
            echo "init-secrets: $dir/$name is missing" >&2
            exit 1
        fi
    done
    # Only when needed, and chmod before chown: root without CAP_FOWNER (the
    # `secrets` service has CHOWN, DAC_OVERRIDE and FOWNER only) may not
    # chmod what it gave away.
    want_owner="$(id -u)"
    if (( as_root )); then want_owner="$owner_uid"; fi
    if [[ "$(stat -c %u:%a "$out")" != "$want_owner:700" ]]; then
        chmod 0700 "$out"
        if (( as_root )); then chown "$owner_uid:$owner_gid" "$out"; fi
    fi
    echo "init-secrets: $consumer gets ${copied[*]}"
done
