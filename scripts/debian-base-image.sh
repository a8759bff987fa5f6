#!/usr/bin/env bash
# Make a Debian bookworm base image without a registry: debootstrap from a Debian mirror, then
# `docker import`. The result is close to debian:bookworm-slim (minbase, docs left out, the same
# apt sources), for builders that cannot pull images: CI here, or an air-gapped site that has only
# a Debian mirror. Use it as the Dockerfile's BASE_IMAGE.
#
# Usage: scripts/debian-base-image.sh NAME [MIRROR]   (as root; needs debootstrap and a Docker engine)
#   MIRROR defaults to http://deb.debian.org/debian; SECURITY_MIRROR to .../debian-security.
set -euo pipefail

name=${1:?usage: $0 NAME [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
security_mirror=${SECURITY_MIRROR:-${mirror%/debian}/debian-security}
suite=bookworm
docker=${DOCKER:-docker}

rootfs=$(mktemp -d /tmp/batchserve-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "debian-base-image: debootstrap $suite from $mirror" >&2
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" > "$rootfs.log" 2>&1 \
    || { cat "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"

# What debian:bookworm-slim does: no docs or man pages from later installs, no apt lists kept.
cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
rm -f "$rootfs/etc/apt/sources.list"
cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
find "$rootfs/usr/share/doc" -type f ! -name copyright -delete

tar -C "$rootfs" --numeric-owner -c . \
    | "$docker" import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase $suite" - "$name"
echo "debian-base-image: $name" >&2
