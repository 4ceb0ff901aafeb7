#!/usr/bin/env bash
# Real vLLM through the suite on a GPU host without Docker or registry access (docs/gpu-h200.md): vLLM from the
# offline wheelhouse (scripts/wheelhouse.py), the host driver, dummy weights from the model's config.json.
#
#   bash bench/gpu_host_run.sh smoke     OUT   # install if needed; suite + Locust + router (emulated); UCX diagnosis
#   bash bench/gpu_host_run.sh colocated OUT   # plans/one-gpu.yaml on vllm-colocated-1gpu (one GPU)
#   bash bench/gpu_host_run.sh disagg    OUT   # plans/one-gpu.yaml on vllm-disagg-1gpu (one GPU, NIXL)
#   PLAN=exp4-pd-vs-tp2-vs-dp2 bash bench/gpu_host_run.sh plan OUT [pdsuite run options]   # any plan (2+ GPUs)
#
# CHUNKS (default .gpu/chunks) holds the wheelhouse pieces, PREFIX (default .gpu/site) the install, MODEL_DIR a
# folder with the model's config.json (dummy weights: no download). Each step ends in OUT/<step>.tgz (results).
set -uo pipefail
step=${1:?smoke|colocated|disagg|plan}; out=${2:?output folder}
cd "$(dirname "$0")/.."
CHUNKS=${CHUNKS:-.gpu/chunks}; PREFIX=${PREFIX:-$PWD/.gpu/site}; MODEL_DIR=${MODEL_DIR:-/tmp/llama-3.1-8b}
LIMIT_S=${LIMIT_S:-540}   # the whole step, install included; SIGINT at the limit keeps every finished point
PACK_S=${PACK_S:-30}      # kept back from the run for its teardown and the results archive (a job's wall limit)
started=$(date +%s)
left() {  # seconds the run may take; timeout(1) reads 0 as "no limit", so none left ends the step here
  local s=$(( LIMIT_S - ($(date +%s) - started) - PACK_S ))
  if [ "$s" -le 0 ]; then echo "no time left for the run within LIMIT_S=$LIMIT_S" >&2; exit 1; fi
  echo "$s"
}
mkdir -p "$out"
if [ ! -f "$PREFIX/env.sh" ]; then
  t=$(date +%s); python3 scripts/wheelhouse.py install "$CHUNKS" --prefix "$PREFIX" --tmp "${TMPDIR:-/tmp}" || exit 1
  echo "install: $(( $(date +%s) - t )) s"
fi
# shellcheck disable=SC1091
source "$PREFIX/env.sh"
export PYTHONPATH="$PWD:$PYTHONPATH" PYTHONUNBUFFERED=1 ENGINE_PREFIX="$PREFIX"
mkdir -p "$MODEL_DIR" && cp suite/modelcfg/configs/llama-3.1-8b.json "$MODEL_DIR/config.json"
export MODEL="$MODEL_DIR" LOAD_FORMAT=dummy VLLM_EXTRA_ARGS="--skip-tokenizer-init"  # token-id prompts, no tokenizer
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; python3 -V
  python3 -c 'import torch, vllm; print("torch", torch.__version__, "vllm", vllm.__version__)' 2>&1 | tail -1; } \
  | tee "$out/$step-env.txt"
pack() { tar czf "$out/$step.tgz" -C results "$1" 2>/dev/null; ls -la "$out"; }
case "$step" in
  smoke)
    timeout 120 python3 -m suite.cli run bench/plans/smoke-1gpu.yaml --backend emu --driver host --out results \
      && echo "smoke: suite, Locust and vllm-router ran"
    timeout 300 python3 bench/ucx_one_gpu.py --out "results/ucx-one-gpu.json" \
      --tls "(unset)" all "cuda_ipc,cuda_copy,self" > /dev/null
    cp results/ucx-one-gpu.json "$out/" 2>/dev/null; pack smoke-1gpu ;;
  colocated|disagg)
    [ "$step" = disagg ] && export UCX_PROTO_INFO=y  # the engines log the transport UCX picked per protocol
    pts=(); for p in ${POINTS:-}; do pts+=(--point "$p"); done  # POINTS="rate=2 rate=6": only these points
    t=$(left) || exit 1
    timeout -s INT "$t" python3 -m suite.cli run one-gpu --driver host --deployment "vllm-$step-1gpu" \
      "${pts[@]}" --out results; echo "run: exit $?"
    pack one-gpu ;;
  plan)
    shift 2
    t=$(left) || exit 1
    timeout -s INT "$t" python3 -m suite.cli run "${PLAN:?PLAN=name}" --driver host --out results "$@"
    echo "run: exit $?"
    pack "$(basename "${PLAN%.yaml}")" ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
