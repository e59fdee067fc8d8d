#!/bin/bash
# make test-compose: docker-compose.yml on a real Docker engine.
#
#   tests/compose/run.sh        (as root; `make test-compose` runs it)
#
# 1. Starts a Docker daemon of its own (Debian's docker.io): its data root,
#    exec root, pidfile, socket and config under one temp dir, its own
#    containerd, its own cgroup parent, its own address pool; it never talks
#    to a system daemon. It changes nothing on the host outside that dir:
#    no iptables rules (--iptables=false), no IP forwarding, no masquerade,
#    no default bridge. Containers reach each other on the compose network
#    and the host through ports published on 127.0.0.1 (docker-proxy);
#    nothing they run reaches beyond this machine. Builds run with the
#    host's network (--network host): apt inside a build reaches Debian's
#    archive as the host does.
#    Everything is stopped and removed on exit, also after a failure or ^C.
# 2. Imports debian:bookworm-slim from a debootstrap tarball
#    (tests/compose/base-image.sh; cached in DW_CACHE_DIR, default
#    /var/cache/dynamowave) — no image registry is needed.
# 3. Builds the project image from ./Dockerfile, and stand-ins for the
#    official nats and haproxy images from Debian's packages
#    (tests/compose/standins/), all niced.
# 4. Runs tests/compose/test_compose.py against it: up, health, the AWS
#    guide, a v1 room, scaling, kills under load, dwctl, encryption at
#    rest, down.
#
# Exit 0: passed; 1: failed; 77: skipped (one line saying why), only where
# no Docker daemon can start here (not root, docker.io not installed, or
# dockerd refuses to run).
#
# Environment: DW_CACHE_DIR (the base image cache), DW_COMPOSE_ADDRESS_POOL
# (the compose networks' addresses, default 10.213.0.0/16 in /24s),
# DW_BASE_REFRESH=1 (rebuild the cached base now).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${DW_CACHE_DIR:-/var/cache/dynamowave}"
pool="${DW_COMPOSE_ADDRESS_POOL:-10.213.0.0/16}"
t_start=$SECONDS

skip() { echo "SKIP: $*"; exit 77; }
log() { echo "test-compose: $*"; }
elapsed() { echo "$((SECONDS - ${1:-$t_start})) s"; }

[[ "$(id -u)" == 0 ]] || skip "not root: a Docker daemon of its own needs root (sudo make test-compose)"
command -v dockerd >/dev/null 2>&1 || skip "dockerd is not installed (Debian: apt-get install docker.io)"
# Debian's CLI, not some other docker on PATH: it matches the daemon.
docker_bin=/usr/bin/docker
[[ -x "$docker_bin" ]] || docker_bin="$(command -v docker || true)"
[[ -n "$docker_bin" ]] || skip "the docker CLI is not installed (Debian: apt-get install docker.io)"
command -v docker-compose >/dev/null 2>&1 || skip "docker-compose is not installed (Debian: apt-get install docker-compose)"
[[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import websockets' 2>/dev/null ||
    skip "python3-websockets is not installed (Debian: apt-get install python3-websockets)"

tmp="$(mktemp -d /tmp/dw-compose.XXXXXX)"
id="${tmp##*.}"
id="${id,,}"  # compose project names are lower case
cgroup_parent="dw-compose-$id"
export DOCKER_HOST="unix://$tmp/docker.sock"
# The CLI's own config (and no credentials of this machine's user).
export DOCKER_CONFIG="$tmp/cli"
export DOCKER_BUILDKIT=0
mkdir -p "$DOCKER_CONFIG"
dockerd_pid=""

docker() { "$docker_bin" "$@"; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n "$dockerd_pid" ]] && kill -0 "$dockerd_pid" 2>/dev/null; then
        # test_compose.py runs `down -v` itself; this is for a failure
        # before or inside it. Containers, then networks (their bridges
        # live in the host's network namespace).
        local ids
        ids="$(timeout 30 "$docker_bin" ps -aq 2>/dev/null)"
        [[ -n "$ids" ]] && timeout 60 "$docker_bin" rm -f $ids >/dev/null 2>&1
        ids="$(timeout 30 "$docker_bin" network ls -q --filter type=custom 2>/dev/null)"
        [[ -n "$ids" ]] && timeout 30 "$docker_bin" network rm $ids >/dev/null 2>&1
        kill -TERM "$dockerd_pid" 2>/dev/null
        for _ in $(seq 1 60); do
            kill -0 "$dockerd_pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$dockerd_pid" 2>/dev/null; then
            log "dockerd did not stop in 30 s: SIGKILL"
            kill -KILL "$dockerd_pid" 2>/dev/null
        fi
        wait "$dockerd_pid" 2>/dev/null
    fi
    # Whatever survived its daemon: processes in this run's cgroups
    # (containers), then its containerd and shims (their command lines name
    # this run's temp dir), each by PID.
    local pids p
    pids="$(cat /sys/fs/cgroup/*/"$cgroup_parent"/cgroup.procs /sys/fs/cgroup/*/"$cgroup_parent"/*/cgroup.procs 2>/dev/null | sort -u)"
    for p in $pids $(pgrep -f -- "$tmp/" 2>/dev/null); do
        [[ "$p" != "$$" ]] && kill -KILL "$p" 2>/dev/null
    done
    # Mounts under the temp dir (overlays, shm, network namespaces), deepest first.
    findmnt -rn -o TARGET | grep -F "$tmp/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
    # This run's (empty) cgroups.
    find /sys/fs/cgroup/*/"$cgroup_parent" -depth -type d -exec rmdir {} \; 2>/dev/null
    rm -rf "$tmp"
    if [[ -e "$tmp" ]]; then log "could not remove $tmp"; fi
    (( rc == 77 )) || log "total $(elapsed) (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ the daemon --
echo '{}' >"$tmp/daemon.json"  # not /etc/docker/daemon.json
t0=$SECONDS
# nice: the builds and the containers inherit it (2 shared cores).
nice -n 10 dockerd \
    --config-file "$tmp/daemon.json" \
    --data-root "$tmp/data" \
    --exec-root "$tmp/exec" \
    --pidfile "$tmp/dockerd.pid" \
    --host "unix://$tmp/docker.sock" \
    --containerd-namespace "dw-compose-$id" \
    --containerd-plugins-namespace "dw-compose-$id-plugins" \
    --cgroup-parent "$cgroup_parent" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --bridge=none \
    --default-address-pool "base=$pool,size=24" \
    >"$tmp/dockerd.log" 2>&1 &
dockerd_pid=$!
until docker version >/dev/null 2>&1; do
    if ! kill -0 "$dockerd_pid" 2>/dev/null || (( SECONDS - t0 > 60 )); then
        reason="$(grep -E 'level=(fatal|error)|failed to start' "$tmp/dockerd.log" | tail -n 1 | sed 's/^time="[^"]*" //')"
        skip "dockerd cannot start here: ${reason:-no answer in 60 s}"
    fi
    sleep 0.2
done
log "dockerd $(docker version --format '{{.Server.Version}}') up in $(elapsed "$t0"): $tmp"

# ----------------------------------------------------------------- images --
t0=$SECONDS
base_tar="$(bash "$here/base-image.sh" "$cache")"
docker import -c 'CMD ["bash"]' "$base_tar" debian:bookworm-slim >/dev/null
log "debian:bookworm-slim imported from $base_tar in $(elapsed "$t0")"

build() {  # build TAG CONTEXT [docker build args...]
    local tag="$1" ctx="$2" t=$SECONDS
    shift 2
    if ! docker build --network host -t "$tag" "$@" "$ctx" >"$tmp/build-${tag//[\/:]/_}.log" 2>&1; then
        tail -n 40 "$tmp/build-${tag//[\/:]/_}.log"
        log "building $tag failed"
        exit 1
    fi
    log "built $tag in $(elapsed "$t")"
}
build dw-standin/nats:debian "$here/standins" -f "$here/standins/nats.Dockerfile"
build dw-standin/haproxy:debian "$here/standins" -f "$here/standins/haproxy.Dockerfile"
build dynamowave:compose-test "$repo"

# ------------------------------------------------------------------ tests --
: >"$tmp/empty.env"
DW_IMAGE=dynamowave:compose-test \
DW_NATS_IMAGE=dw-standin/nats:debian \
DW_PROXY_IMAGE=dw-standin/haproxy:debian \
DW_COMPOSE_PROJECT="dwtest$id" \
DW_COMPOSE_ENV_FILE="$tmp/empty.env" \
DW_DOCKER="$docker_bin" \
PYTHONDONTWRITEBYTECODE=1 \
    /usr/bin/python3 "$here/test_compose.py"
