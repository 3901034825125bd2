#!/usr/bin/env bash
# The checks that need a GPU, in one run (a few minutes on one H100/H200):
# CUDA embedding/training/metrics throughput (tools/bench_gpu.py), per-level
# training on CUDA at bf16 and fp16, and evaluation with fine-tuning adaptation
# on CUDA.  Writes its logs to ${OUT:-build/gpu-checks}.
#
#   tools/gpu_checks.sh            (with oodml and its dependencies importable by python3)
#
# GLYPHS_ROOT=DIR reads glyph folders from DIR instead of the bytes shipped in
# oodml (tools/render_glyphs.py --folders writes them); only the shipped bytes
# carry the fingerprint that the published glyphs/v1 splits pin.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-checks}
ROOT=(${GLYPHS_ROOT:+--root "$GLYPHS_ROOT"})
source tools/gpu_run.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
run glyphs $PY -m oodml datasets info glyphs "${ROOT[@]}"
run train-bf16 $PY -m oodml -q train --dataset glyphs "${ROOT[@]}" --splits v1 --level 1,8 --iterations 400 --device cuda \
    --precision bf16 --workers 4 --out "$OUT/train-bf16"
run train-fp16 $PY -m oodml -q train --dataset glyphs "${ROOT[@]}" --splits v1 --level 1 --iterations 200 --device cuda \
    --precision fp16 --workers 4 --out "$OUT/train-fp16"
run evaluate $PY -m oodml -q evaluate "$OUT/train-bf16/level{level}.pt" --dataset glyphs "${ROOT[@]}" --splits v1 --levels 1,8 \
    --fewshot 2 --episodes 1 --adapt finetune-last --device cuda --precision bf16 --out "$OUT/evaluate"
run evaluate-all $PY -m oodml -q evaluate "$OUT/train-bf16/level{level}.pt" --dataset glyphs "${ROOT[@]}" \
    --splits v1 --levels 8 --fewshot 2 --episodes 1 --adapt finetune-all --adapt-iterations 100 --device cuda \
    --out "$OUT/evaluate-all"
[ "${BENCH:-1}" = 1 ] && run bench $PY tools/bench_gpu.py --images 8192
exit $status
