#!/usr/bin/env bash
# Build the batchserve image from the repository root with BuildKit, passing a CA bundle when set.
#
# Usage: scripts/build-image.sh [docker build options...]
#   scripts/build-image.sh -t batchserve                       torch from pip's index (PyPI: CUDA)
#   scripts/build-image.sh -t batchserve --build-arg TORCH_INDEX_URL=URL \
#       --build-arg REQUIREMENTS=requirements/image-cpu.txt      torch from another index, its lock
#   CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt scripts/build-image.sh ...     TLS-inspecting proxy
#
# CA_BUNDLE: a PEM bundle that pip inside the build trusts instead of its own (the build secret
# `ca-bundle`). It must hold the public roots as well as the proxy's: the system bundle does.
# DOCKER: the client to use. The Dockerfile needs BuildKit: a client with the buildx plugin, or a
# 20.10 client, whose BuildKit is built in (Debian bookworm's docker.io) with DOCKER_BUILDKIT=1.
set -euo pipefail
cd "$(dirname "$0")/.."

client_major() { "$1" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true; }

pick_client() {
    local candidates=() cli major
    [ -n "${DOCKER:-}" ] && candidates+=("$DOCKER")
    candidates+=(docker /usr/bin/docker)
    for cli in "${candidates[@]}"; do
        command -v "$cli" > /dev/null || continue
        if "$cli" buildx version > /dev/null 2>&1; then echo "$cli"; return; fi
    done
    for cli in "${candidates[@]}"; do
        command -v "$cli" > /dev/null || continue
        major=$(client_major "$cli")
        if [[ "$major" =~ ^[0-9]+$ ]] && [ "$major" -lt 23 ]; then echo "$cli"; return; fi
    done
    echo "build-image: no Docker client with BuildKit: install the buildx plugin" \
         "(or Debian bookworm's docker.io, whose 20.10 client has it built in)" >&2
    return 1
}

cli=$(pick_client)
secret=()
if [ -n "${CA_BUNDLE:-}" ]; then
    [ -r "$CA_BUNDLE" ] || { echo "build-image: CA_BUNDLE=$CA_BUNDLE is not readable" >&2; exit 1; }
    secret=(--secret "id=ca-bundle,src=$CA_BUNDLE")
fi
set -x
DOCKER_BUILDKIT=1 exec "$cli" build "${secret[@]}" "$@" .
