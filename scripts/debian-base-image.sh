#!/usr/bin/env bash
# Make a Debian bookworm base image without a registry: debootstrap from a Debian mirror, then
# `docker import`. The result is close to debian:bookworm-slim (minbase, docs left out, the same
# apt sources), for builders that cannot pull images: CI here, or an air-gapped site that has only
# a Debian mirror. Use it as the Dockerfile's BASE_IMAGE.
#
# Usage: scripts/debian-base-image.sh NAME [MIRROR]   (as root; needs debootstrap and a Docker engine)
#   MIRROR: the Debian archive to install from, e.g. http://your-mirror/debian. Without it, the
#   machine's own apt sources name it: the source of suite bookworm in /etc/apt/sources.list,
#   /etc/apt/sources.list.d/*.list (one-line format) or /etc/apt/sources.list.d/*.sources (deb822).
#   SECURITY_MIRROR: the archive of bookworm-security; by default the machine's source of that
#   suite, else MIRROR with /debian replaced by /debian-security.
set -euo pipefail

name=${1:?usage: $0 NAME [MIRROR]}
suite=bookworm
docker=${DOCKER:-docker}
APT_ETC=${APT_ETC:-/etc/apt}  # another root's apt configuration (tests)

# "URI SUITE" for every enabled `deb` source of the machine, in apt's order of files.
apt_sources() {
    local lists=() sources=() file
    [ -f "$APT_ETC/sources.list" ] && lists+=("$APT_ETC/sources.list")
    for file in "$APT_ETC"/sources.list.d/*.list; do [ -f "$file" ] && lists+=("$file"); done
    for file in "$APT_ETC"/sources.list.d/*.sources; do [ -f "$file" ] && sources+=("$file"); done
    if [ ${#lists[@]} -gt 0 ]; then
        # deb [option=value ...] URI SUITE [COMPONENT...]
        awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ } print $i, $(i + 1) }' \
            "${lists[@]}"
    fi
    if [ ${#sources[@]} -gt 0 ]; then
        # deb822 stanzas: Types, URIs, Suites (each a list), Enabled; blank lines between stanzas.
        awk '
            function flush(   n, m, i, j, u, s) {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
                    n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) print u[i], s[j]
                }
                types = uris = suites = ""; enabled = "yes"
            }
            FNR == 1 { flush() }
            /^#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { next }
            {
                colon = index($0, ":"); key = tolower(substr($0, 1, colon - 1)); value = substr($0, colon + 1)
                gsub(/^[ \t]+|[ \t]+$/, "", value)
                if (key == "types") types = value; else if (key == "uris") uris = value
                else if (key == "suites") suites = value; else if (key == "enabled") enabled = tolower(value)
            }
            END { flush() }' "${sources[@]}"
    fi
}

# The first source of the machine that serves suite $1, without a trailing slash.
source_of() { apt_sources | awk -v suite="$1" '$2 == suite { sub(/\/+$/, "", $1); print $1; exit }'; }

if [ -n "${2:-}" ]; then
    mirror=${2%/}
    security_mirror=${SECURITY_MIRROR:-${mirror%/debian}/debian-security}
else
    mirror=$(source_of "$suite")
    [ -n "$mirror" ] || { echo "debian-base-image: no apt source of this machine serves $suite;" \
        "give the mirror: $0 NAME MIRROR" >&2; exit 1; }
    security=$(source_of "$suite-security")
    security_mirror=${SECURITY_MIRROR:-${security:-${mirror%/debian}/debian-security}}
fi
if [ "${DEBIAN_BASE_IMAGE_PRINT_MIRRORS:-}" = 1 ]; then  # what would be used, and stop (tests)
    echo "$mirror $security_mirror"
    exit 0
fi

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
