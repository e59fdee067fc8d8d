#!/bin/bash
# base-image.sh CACHE_DIR: make (or reuse) a root filesystem tarball of
# Debian 12 shaped like the official `debian:bookworm-slim` image, for
# `docker import` on a machine that can reach Debian's package archive but no
# image registry. Prints the tarball's path on stdout (progress on stderr).
#
#   tar=$(tests/compose/base-image.sh /var/cache/dynamowave)
#   docker import -c 'CMD ["bash"]' "$tar" debian:bookworm-slim
#
# Made with debootstrap --variant=minbase (the packages of the official
# image: Priority required + apt), then slimmed the way the official image
# is (debuerreotype's "slimify": no man pages, docs or translations, dpkg
# told to keep them out; apt keeps no caches or lists). Runs as root.
#
# The tarball is cached in CACHE_DIR and reused while it is younger than
# DW_BASE_MAX_AGE_DAYS (7: then it is rebuilt, which picks up security
# updates) and was made by this version of the recipe; DW_BASE_REFRESH=1
# rebuilds it now. DW_DEBIAN_MIRROR (http://deb.debian.org/debian) is where
# debootstrap downloads from.
set -euo pipefail

cache="${1:?usage: base-image.sh CACHE_DIR}"
mirror="${DW_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
max_age_days="${DW_BASE_MAX_AGE_DAYS:-7}"
# Bump when the recipe below changes: a tarball of another recipe is stale.
recipe=1
tar="$cache/debian-bookworm-slim.r$recipe.tar"

log() { echo "base-image: $*" >&2; }

if [[ "$(id -u)" != 0 ]]; then
    log "must run as root (debootstrap chroots and makes device nodes)"
    exit 1
fi
mkdir -p "$cache"
exec 9>"$cache/.base-image.lock"
flock 9   # one builder at a time; a second run waits and then reuses

if [[ -s "$tar" && "${DW_BASE_REFRESH:-0}" != 1 ]] &&
   [[ -z "$(find "$tar" -mtime +"$max_age_days")" ]]; then
    log "reusing $tar (made $(date -r "$tar" '+%F %T'))"
    echo "$tar"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    log "debootstrap is not installed (Debian: apt-get install debootstrap)"
    exit 1
fi

work="$(mktemp -d "$cache/.rootfs.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

log "debootstrap bookworm from $mirror (a few minutes, once)"
if ! nice debootstrap --variant=minbase --merged-usr bookworm "$root" "$mirror" \
        >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    log "debootstrap failed (is $mirror reachable?)"
    exit 1
fi

# What the official image's dpkg keeps out of every later install.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# Like debian:bookworm-slim: no documentation, manuals or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF
# ... and drop what debootstrap already installed of it.
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{groff,info,linda,lintian,man}/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

# apt as in the official image: no package cache, no translations,
# compressed lists, no suggests/recommends kept by autoremove.
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
printf 'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n' \
    >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
printf 'Apt::AutoRemove::SuggestsImportant "false";\n' \
    >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"

# The official image's sources: bookworm, its updates and security.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# No state of this machine in the image.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
       "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.bash_history
: >"$root/etc/hostname"
: >"$root/etc/resolv.conf"
rm -f "$root/etc/machine-id" && : >"$root/etc/machine-id"

tar --numeric-owner --xattrs --acls -C "$root" -cf "$work/rootfs.tar" .
mv -f "$work/rootfs.tar" "$tar"
# Older recipes' tarballs are stale now.
find "$cache" -maxdepth 1 -name 'debian-bookworm-slim.r*.tar' ! -name "${tar##*/}" -delete
log "made $tar ($(du -h "$tar" | cut -f1))"
echo "$tar"
