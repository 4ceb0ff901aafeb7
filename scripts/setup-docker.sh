#!/usr/bin/env bash
# setup-docker.sh - idempotent: Docker engine + Compose v2 plugin + running dockerd + a registry-free base image.
# For a Debian 12 CI/dev machine without systemd or a container registry (docs/ci.md).
# Every step is skipped when its result is already there; on a machine that already has Docker and Compose v2
# (a GPU host) it only checks them. Caches live under ~/.cache/pdsuite.
set -euo pipefail

CACHE=${PDSUITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pdsuite}
BASE_IMAGE=${PDSUITE_BASE_IMAGE:-local/debian:bookworm-py}   # debootstrap'ed bookworm: python3.11 + venv
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SKIP_BASE=${SKIP_BASE:-0}   # 1: Docker + Compose only (GPU hosts pull python:3.11-slim instead)
mkdir -p "$CACHE"

log() { printf '>>> setup-docker: %s\n' "$*"; }
need_root() { [ "$(id -u)" = 0 ] || { echo "setup-docker: $1 needs root (run with sudo)" >&2; exit 1; }; }
timed() {  # timed NAME CMD... : run CMD and print its wall time (read by docs/ci.md)
  local name=$1 t0; shift; t0=$(date +%s.%N); "$@"
  log "$(awk -v n="$name" -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%-16s %6.1fs", n, b-a}')"
}

install_pkgs() {
  if command -v dockerd >/dev/null && { [ "$SKIP_BASE" = 1 ] || command -v debootstrap >/dev/null; }; then
    return
  fi
  need_root "installing docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-cache policy docker.io | grep -q 'Candidate: [0-9]' || apt-get update -qq
  apt-get install -y -qq docker.io debootstrap >/dev/null
}

# Compose v2 plugin: bookworm has only compose v1, so take the plugin binary from trixie's docker-compose .deb
# with a private apt sources list (the system's sources stay untouched).
install_compose() {
  docker compose version >/dev/null 2>&1 && return
  need_root "installing the compose plugin"
  local d=$CACHE/apt-trixie
  mkdir -p "$d/lists/partial" "$d/debs" "$d/x"
  echo "deb $MIRROR trixie main" >"$d/trixie.list"
  local A=(-o APT::Sandbox::User=root -o Dir::Etc::sourcelist="$d/trixie.list" -o Dir::Etc::sourceparts=-
           -o Dir::State::Lists="$d/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
  ls "$d"/debs/docker-compose_*.deb >/dev/null 2>&1 || {
    apt-get "${A[@]}" update -qq
    (cd "$d/debs" && apt-get "${A[@]}" download docker-compose >/dev/null 2>&1)
  }
  dpkg -x "$(ls "$d"/debs/docker-compose_*.deb | head -n1)" "$d/x"
  install -D -m755 "$d/x/usr/libexec/docker/cli-plugins/docker-compose" \
    /usr/local/lib/docker/cli-plugins/docker-compose
}

# No systemd here: start dockerd once, detached, and wait for its API. Never a second daemon.
start_dockerd() {
  docker info >/dev/null 2>&1 && return
  need_root "starting dockerd"
  if [ -S /var/run/docker.sock ] && pgrep -x dockerd >/dev/null; then
    log "dockerd is running but not answering yet; waiting"
  else
    setsid dockerd ${DOCKERD_ARGS:-} >"$CACHE/dockerd.log" 2>&1 </dev/null &
    echo $! >"$CACHE/dockerd.pid"
  fi
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && return; sleep 0.5; done
  echo "setup-docker: dockerd did not come up; see $CACHE/dockerd.log" >&2; tail -n 20 "$CACHE/dockerd.log" >&2
  exit 1
}

# Base image without a registry: debootstrap a minimal bookworm with python3 (3.11) and venv, then import it.
build_base() {
  [ "$SKIP_BASE" = 1 ] && return
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return
  need_root "debootstrap"
  local root=$CACHE/rootfs
  rm -rf "$root"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
}

timed apt-install install_pkgs
timed compose-plugin install_compose
timed dockerd-start start_dockerd
timed base-image build_base
log "$(docker compose version) / dockerd $(docker info --format '{{.ServerVersion}} storage={{.Driver}}')"
