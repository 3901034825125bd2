#!/usr/bin/env bash
# Decoding on the GPU (oodml.decode), checked and measured in one run (about 3 minutes on one H200):
# the equality tests on CUDA (images within tolerance of the PIL loader path, same errors, embeddings
# agreeing), then tools/bench_decode.py on 4,096 CUB-sized JPEGs: loader path vs device path,
# resnet50 at fp32 and bf16 as in docs/scaling.md's GPU table (batch 256, 4 workers), the same at
# 12 workers, and the input pipeline alone (--model pool).  Logs go to ${OUT:-build/gpu-decode}.
#
#   tools/gpu_decode_check.sh            (with oodml and its dependencies importable by python3)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-decode}
TAIL_LINES=8
source tools/gpu_run.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
run tests $PY -m pytest -q -p no:cacheprovider tests/test_device_decode.py
BENCH=($PY tools/bench_decode.py --images 4096 --folder "$OUT/photos" --device cuda --batch-size 256)
run bench-fp32 "${BENCH[@]}" --model resnet50 --precision fp32 --workers 4
run bench-bf16 "${BENCH[@]}" --model resnet50 --precision bf16 --workers 4
run bench-bf16-12-workers "${BENCH[@]}" --model resnet50 --precision bf16 --workers 12
run bench-pipeline "${BENCH[@]}" --model pool --workers 4
exit $status
