#!/usr/bin/env bash
# Every GPU check in one run (what a session with a GPU runs first; docs/benchmarks.md records the figures):
# the SD-v1.5-shaped generation and DreamBooth benchmarks, then the gpu-marked tests. Logs go to $OUT
# (default ./gpu-logs). Run from the repository root with leafgen and its dependencies importable.
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, diffusers, ray; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'ray', ray.__version__)"
echo "=== generation throughput, SD v1.5 shapes"
timeout 240 python3 benchmarks/generate_throughput.py --sd15-shape 2>&1 | tee "$OUT/generate.log" | grep -E "images|run|ratio"
echo "=== DreamBooth step, SD v1.5 shapes"
timeout 200 python3 benchmarks/dreambooth_step.py --sd15-shape 2>&1 | tee "$OUT/dreambooth.log" | grep -E "512|step|plain"
echo "=== gpu-marked tests"
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/classifier/test_gpu.py \
  tests/diffusion/test_generation_gpu.py tests/diffusion/test_dreambooth_gpu.py 2>&1 | tee "$OUT/tests.log" | tail -15
