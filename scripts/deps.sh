#!/usr/bin/env bash
# Install the Debian packages listed in scripts/packages.txt that are not
# installed yet. Installs only what is missing (a no-op on a ready machine,
# without touching the network), runs `apt-get update` at most once, uses sudo
# when not root, never removes anything.
#
#   scripts/deps.sh            install what is missing
#   scripts/deps.sh --check    list what is missing; exit 1 if anything is
#
# DW_PACKAGES_FILE overrides the list (for testing this script).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
list="${DW_PACKAGES_FILE:-$here/packages.txt}"
check_only=0
case "${1:-}" in
    "") ;;
    --check) check_only=1 ;;
    -h|--help)
        sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0 ;;
    *) echo "deps.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "deps.sh: dpkg-query not found: this script needs Debian or a derivative" >&2
    exit 1
fi
if [[ ! -r "$list" ]]; then
    echo "deps.sh: cannot read the package list $list" >&2
    exit 1
fi

missing=()
while IFS= read -r line || [[ -n "$line" ]]; do
    pkg="${line%%#*}"                  # strip comments
    pkg="${pkg//[[:space:]]/}"
    [[ -z "$pkg" ]] && continue
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "installed" ]] || missing+=("$pkg")
done < "$list"

if (( ${#missing[@]} == 0 )); then
    echo "deps.sh: all packages from $(basename "$list") are installed"
    exit 0
fi
echo "deps.sh: missing: ${missing[*]}"
if (( check_only )); then
    exit 1
fi

if (( EUID == 0 )); then
    as_root=(env DEBIAN_FRONTEND=noninteractive)
elif command -v sudo >/dev/null 2>&1; then
    # sudo resets the environment, so pass the variable on the command line.
    as_root=(sudo env DEBIAN_FRONTEND=noninteractive)
else
    echo "deps.sh: not root and sudo is not installed; as root run:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi

"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}"

# apt-get succeeded, but check rather than trust: a typo in the list must fail here.
still=()
for pkg in "${missing[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "installed" ]] || still+=("$pkg")
done
if (( ${#still[@]} )); then
    echo "deps.sh: still missing after apt-get install: ${still[*]}" >&2
    exit 1
fi
echo "deps.sh: installed ${missing[*]}"
