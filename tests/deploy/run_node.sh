#!/bin/bash
# run_node.sh SCRIPT [ARGS...]: run a node script of tests/deploy with its
# npm dependencies (package-lock.json) installed into tests/deploy/node_modules.
# Exits 77 (ctest: skipped) with the reason when node or npm is missing or
# the packages cannot be installed (no registry reachable).
set -euo pipefail
src="${BASH_SOURCE[0]}"
[[ "$src" == */* ]] || src="./$src"
here="$(cd "${src%/*}" && pwd)"
script="$1"
shift

if ! command -v node >/dev/null 2>&1; then
    echo "SKIP: node is not installed (Debian: apt-get install nodejs npm)"
    exit 77
fi
stamp="$here/node_modules/.dw-package-lock"
if ! cmp -s "$here/package-lock.json" "$stamp"; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "SKIP: npm is not installed and tests/deploy/node_modules is missing or stale"
        exit 77
    fi
    echo "npm ci in tests/deploy (package-lock.json changed or first run)"
    if ! (cd "$here" && npm ci --no-audit --no-fund --loglevel=error); then
        echo "SKIP: npm ci failed (is the npm registry reachable?)"
        exit 77
    fi
    cp "$here/package-lock.json" "$stamp"
fi
exec node "$here/$script" "$@"
