#!/usr/bin/env bash
# Issue 14's GPU figures in one command (a few minutes on an H100 or H200): the CUDA
# sync-debug test of a training step (tests/test_speed.py; its CPU twins run in CI), then
# step time and peak memory of every built-in architecture against upstream's standard SAE
# at the issue's LM sizes (fp32 and bf16 autocast, eager), the sparse step at L0 32 and its
# crossover density (issue 22), compiled rows in bf16 (with cold compile times), and the
# ReLU-mask kernel. Figures go to stdout and $OUT (default runs/gpu-speed): gpu_speed.log and one JSON
# file per benchmark run. The most important come first, so a run cut short keeps them.
#
# On a machine without network whose Python already holds torch (the device tool's), make
# the wheels here first (bash scripts/gpu_wheels.sh) and carry .whl: where sae-lens-ext is
# not installed yet, they are installed before anything runs. PYTHON picks the interpreter
# (default: ./.venv's, else python3). A step that fails is reported and the next one runs;
# the exit status says whether any failed. SAE_LENS_EXT_SMOKE=1 runs the same steps at tiny
# sizes (tests/test_gpu_speed_script.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu-speed}"
PY="${PYTHON:-}"
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
mkdir -p "$OUT"
LOG="$OUT/gpu_speed.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
installed() { "$PY" -c "import importlib.metadata as m; m.version('sae-lens-ext')" 2>/dev/null; }
if [ -d .whl ] && ! installed; then  # a bare machine: install the carried wheels
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check .whl/*.whl 2>&1 | tee -a "$LOG" || exit 1
fi
FAILED=0
run() {  # a step of this script: echoed, run, all its output in the log
    echo "\$ $*" | tee -a "$LOG"
    "$@" 2>&1 | sed '/No CUDA runtime is found/d' | tee -a "$LOG" ||
        { FAILED=1; echo "FAILED: $*" | tee -a "$LOG"; }
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$LOG"
run "$PY" -m pytest -q -p no:cacheprovider tests/test_speed.py -k no_cuda_sync
STEP=("$PY" benchmarks/step_benchmark.py --rounds 15 --warm-up 3)
run "${STEP[@]}" --sizes 768x16384x4096,2304x65536x4096 --dtypes fp32,bf16 --json "$OUT/eager.json"
# issue 22: the sparse step at L0 32 (codes held there), then where it stops paying
SPARSE_ROWS=(--rows freq_ordered --rows temporal_consistency --rows "freq_ordered + prefix" --rows tsae)
run "${STEP[@]}" --sizes 768x16384x4096,2304x65536x4096 --dtypes fp32,bf16 --l0 32 \
    "${SPARSE_ROWS[@]}" --json "$OUT/sparse.json"
run "${STEP[@]}" --sizes 768x16384x4096 --dtypes bf16 --l0 32,128,512,2048 \
    --rows "freq_ordered, sparse" --rows "freq_ordered, dense" --json "$OUT/crossover.json"
run "${STEP[@]}" --sizes 768x16384x4096 --dtypes bf16 --compile --json "$OUT/compiled_768.json"
run "$PY" benchmarks/relu_mask_benchmark.py
run "${STEP[@]}" --sizes 2304x65536x4096 --dtypes bf16 --compile --json "$OUT/compiled_2304.json"
echo "done ($([ "$FAILED" = 0 ] && echo "every step passed" || echo "a step FAILED")): $LOG" | tee -a "$LOG"
exit "$FAILED"
