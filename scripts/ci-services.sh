#!/usr/bin/env bash
# Install and start what the service tests need, on Debian as root (CI, or a developer's machine):
#   - Docker engine: Debian's docker.io, dockerd started when no daemon answers;
#   - a Debian base image made offline (scripts/debian-base-image.sh), since no registry is reachable;
#   - Prometheus (Debian's package; tests/services/test_prometheus.py runs it as a plain process);
#   - docker-compose (v1) to validate deploy/docker-compose.yml when no `docker compose` plugin exists;
#   - Chromium (headless) to render /docs with no network (tests/e2e/test_docs.py);
#   - nginx (Debian's nginx-light; its service is not started): the replica check of `recommend`
#     (batchserve_planning/replicas.py, tests/e2e/test_replicas.py) runs it as a plain process.
# Idempotent: a second run installs and starts nothing. .ci/run calls it before `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BATCHSERVE_BASE_IMAGE:-batchserve/debian-base:bookworm}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/batchserve-dockerd.log}
packages=(docker.io debootstrap prometheus docker-compose chromium nginx-light)

log() { echo "ci-services: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "needs root (apt-get, dockerd)"; exit 1; }

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    # Packages must not start their services (prometheus and nginx would listen on every interface):
    # this script starts what the tests need, the way they need it.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" > /tmp/batchserve-apt.log 2>&1 \
        || { tail -n 30 /tmp/batchserve-apt.log >&2; exit 1; }
fi

if ! docker info > /dev/null 2>&1; then
    # A pid file left by a daemon that is gone makes dockerd refuse to start.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    log "starting dockerd (log: $DOCKERD_LOG)"
    # Detached, with no inherited stdout/stderr, so that it outlives this script and its caller
    # does not wait on its output.
    setsid dockerd > "$DOCKERD_LOG" 2>&1 < /dev/null &
    for _ in $(seq 120); do
        docker info > /dev/null 2>&1 && break
        sleep 0.5
    done
    docker info > /dev/null 2>&1 || { tail -n 30 "$DOCKERD_LOG" >&2; log "dockerd did not start"; exit 1; }
fi

if ! docker image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
    log "making base image $BASE_IMAGE"
    scripts/debian-base-image.sh "$BASE_IMAGE"
fi
log "ready: $(docker version --format 'docker {{.Server.Version}}'), base image $BASE_IMAGE," \
    "$(prometheus --version 2>&1 | head -n 1)"
