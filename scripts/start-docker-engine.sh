#!/usr/bin/env bash
# Start a local Docker engine on a dev machine that has the docker CLI but no engine
# (no systemd, no overlayfs inside the VM, no iptables rules to rely on).
#
#   sudo scripts/start-docker-engine.sh          # then: docker info
#   sudo scripts/start-docker-engine.sh --stop   # stop the engine this script started
#
# What it does, each step skipped when already done:
#   1. unpacks Debian's docker.io, containerd, runc and tini (apt-get download + dpkg -x)
#      into $ENGINE_PREFIX, leaving the system's packages alone;
#   2. starts dockerd with --storage-driver=vfs --iptables=false --bridge=none and a lowered
#      open-files limit (nofile=10000, for the daemon and as the containers' default);
#   3. builds a base image with debootstrap (Debian bookworm + python3 + venv) and loads it with
#      `docker import` as $BASE_IMAGE_TAG, for `make docker-build` with a CPU base:
#        make docker-build BASE_IMAGE=local/debian-python:bookworm DOCKER_BUILD_ARGS=--network=host
#
# Containers get no bridge network: use `--network=host` for builds and runs that need one.
set -euo pipefail

ENGINE_PREFIX=${ENGINE_PREFIX:-/opt/docker-engine}
DATA_ROOT=${DOCKER_DATA_ROOT:-/var/lib/docker-local}
EXEC_ROOT=${DOCKER_EXEC_ROOT:-/var/run/docker-local}
SOCKET=${DOCKER_SOCKET:-/var/run/docker.sock}
LOG_FILE=${DOCKER_LOG_FILE:-/var/log/dockerd-local.log}
BASE_IMAGE_TAG=${BASE_IMAGE_TAG:-local/debian-python:bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
NOFILE=${NOFILE:-10000}
# CA bundle copied into the base image, so pip in builds trusts what this machine trusts (a TLS proxy, say).
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PIDFILE="$EXEC_ROOT/dockerd.pid"

log() { echo "[start-docker-engine] $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (dockerd needs it)"
export PATH="$ENGINE_PREFIX/usr/bin:$ENGINE_PREFIX/usr/sbin:$PATH"
export DOCKER_HOST="unix://$SOCKET"

if [[ ${1:-} == "--stop" ]]; then
    if [[ -f $PIDFILE ]] && kill "$(cat "$PIDFILE")" 2>/dev/null; then
        log "sent SIGTERM to dockerd $(cat "$PIDFILE")"
    else
        log "no dockerd started by this script is running"
    fi
    exit 0
fi

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

unpack_engine() {
    [[ -x $ENGINE_PREFIX/usr/sbin/dockerd ]] && return
    log "unpacking docker.io, containerd, runc and tini into $ENGINE_PREFIX"
    local debs
    debs=$(mktemp -d)
    (cd "$debs" && apt-get download docker.io containerd runc tini) \
        || die "apt-get download failed; run 'apt-get update' first"
    mkdir -p "$ENGINE_PREFIX"
    for deb in "$debs"/*.deb; do dpkg -x "$deb" "$ENGINE_PREFIX"; done
    rm -rf "$debs"
}

start_engine() {
    mkdir -p "$DATA_ROOT" "$EXEC_ROOT" "$(dirname "$LOG_FILE")"
    ulimit -n "$NOFILE"
    log "starting dockerd (vfs, no iptables, no bridge); log: $LOG_FILE"
    setsid dockerd \
        --host "unix://$SOCKET" \
        --data-root "$DATA_ROOT" \
        --exec-root "$EXEC_ROOT" \
        --pidfile "$PIDFILE" \
        --storage-driver=vfs \
        --iptables=false \
        --ip-masq=false \
        --bridge=none \
        --default-ulimit "nofile=$NOFILE:$NOFILE" \
        >>"$LOG_FILE" 2>&1 </dev/null &
    for _ in $(seq 60); do
        engine_up && return
        sleep 1
    done
    tail -n 20 "$LOG_FILE" >&2
    die "dockerd did not answer within 60 s"
}

build_base_image() {
    docker image inspect "$BASE_IMAGE_TAG" >/dev/null 2>&1 && return
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        apt-get install -y --no-install-recommends debootstrap >/dev/null
    fi
    local rootfs
    rootfs=$(mktemp -d)
    log "debootstrap $DEBIAN_SUITE (python3, venv) from $DEBIAN_MIRROR; this takes a few minutes"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    chmod 755 "$rootfs"  # mktemp's 0700 would become the image's "/", closed to non-root users
    local changes=(--change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]')
    if [[ -s $HOST_CA_BUNDLE ]]; then
        cp "$HOST_CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
        local bundle=/etc/ssl/certs/ca-certificates.crt
        changes+=(--change "ENV PIP_CERT=$bundle SSL_CERT_FILE=$bundle REQUESTS_CA_BUNDLE=$bundle")
    fi
    log "importing the root file system as $BASE_IMAGE_TAG"
    tar -C "$rootfs" -c . | docker import "${changes[@]}" - "$BASE_IMAGE_TAG" >/dev/null
    rm -rf "$rootfs"
}

if engine_up; then
    log "an engine already answers at $DOCKER_HOST"
else
    unpack_engine
    start_engine
fi
build_base_image
log "ready: docker $(docker version --format '{{.Server.Version}}') at $DOCKER_HOST; base image $BASE_IMAGE_TAG"
echo "export DOCKER_HOST=$DOCKER_HOST"
