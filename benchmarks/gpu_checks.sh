#!/usr/bin/env bash
# Every GPU check of issue 25 in one run, sized for a fresh H200 lease (under 9 minutes, machine start
# not counted), each section under its own time limit and failing alone (one broken lever does not stop
# the rest), with a summary table at the end. docs/benchmarks.md records the figures.
#
#   1 env        GPU, driver, package versions
#   2 sd15       SD v1.5's exact architecture with random weights, float16 (benchmarks/sd15_random_weights.py)
#   3 generate   plain diffusers loop, the engine (Ray Data, when Ray is importable) with its defaults and
#                with every lever on, then the lever table (benchmarks/generate_throughput.py)
#   4 dreambooth plain step, leafgen's trainer and each lever (benchmarks/dreambooth_step.py)
#   6 pipeline   configs/sd15.yaml end to end at Kaggle's image size (needs Ray and imagehash), sized to
#                fit: procedural data at 2048x1365 and scale 0.05 (not 1.0), 1 classifier epoch, LoRA
#                DreamBooth 20 steps, 8 class and 16 generated images, 1 seed, drift on 2 samples
#   5 tests      pytest -m gpu
#
# Run from the repository root with the machine's python3 (torch, transformers, peft there). Packages it
# lacks come from .gpu/site.tar.xz (benchmarks/gpu_bundle.sh, run beforehand where pip works), unpacked
# to /tmp/leafgen-site. Logs go to $OUT (default ./gpu-logs): one file per section plus summary.txt, at
# most 8 files. GPU_CHECKS_SCALE=0.5 halves every time limit (a dry run on a small budget);
# GPU_CHECKS_ONLY="generate tests" runs only those sections (env always runs).
#
# Time: the limits add up to 540 s (9 minutes) without the pipeline, which is what runs today: Ray
# cannot travel beside the working tree (benchmarks/gpu_bundle.sh). Where Ray is importable, the
# generate section also runs the Ray engine (about 80 s more, inside its limit at the lever table's
# expense) and the pipeline section adds up to 150 s: choose sections with GPU_CHECKS_ONLY then.
#   device run:  bash benchmarks/gpu_checks.sh        (carry: .gpu)
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SCALE=${GPU_CHECKS_SCALE:-1}
MODEL=${SD15_MODEL:-/tmp/sd15-random}
SITE=/tmp/leafgen-site
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/leafgen-inductor}
if [ -f .gpu/site.tar.xz ]; then
  mkdir -p "$SITE" && tar -xJf .gpu/site.tar.xz -C "$SITE"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
SUMMARY=()

has() { "$PY" -c "import $1" >/dev/null 2>&1; }

# section NAME LIMIT_SECONDS COMMAND...: runs COMMAND with a time limit, output to $OUT/NAME.log.
section() {
  local name=$1 limit=$2 t0 rc status
  shift 2
  if [ -n "${GPU_CHECKS_ONLY:-}" ] && [ "$name" != env ] && [[ " $GPU_CHECKS_ONLY " != *" $name "* ]]; then
    skip "$name" "not in GPU_CHECKS_ONLY"
    return
  fi
  limit=$(awk -v l="$limit" -v s="$SCALE" 'BEGIN { printf "%d", l * s }')
  echo "=== $name (limit ${limit}s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status="failed ($rc)" ;; esac
  SUMMARY+=("$(printf '%-11s %-12s %5ss  %s' "$name" "$status" "$(($(date +%s) - t0))" "$OUT/$name.log")")
  grep -E "$FOCUS" "$OUT/$name.log" | tail -40
}
skip() { SUMMARY+=("$(printf '%-11s %-12s %5s   %s' "$1" skipped - "$2")"); echo "=== $1 skipped: $2"; }

FOCUS='NVIDIA|H200|[a-z]+ [0-9]|missing'
VERSIONS='
import importlib
for m in ("torch", "diffusers", "transformers", "peft", "ray", "imagehash", "bitsandbytes", "leafgen"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "(no version)"))
    except Exception as exc:
        print(m, "missing:", type(exc).__name__, exc)
'
section env 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; $PY -c '$VERSIONS'"

FOCUS='wrote|already'
section sd15 60 "$PY" benchmarks/sd15_random_weights.py --out "$MODEL"

FOCUS='images|run [0-9]|img/s|ratio|lever|x dflt|failed|skipped|^ +[a-z]'
RAY_ARG=()
has ray || RAY_ARG=(--no-ray)
section generate 210 "$PY" benchmarks/generate_throughput.py --sd15-shape --model "$MODEL" --repeats 1 \
  --images 32 \
  --levers --best compile=true fuse_qkv=true batch_size=auto "${RAY_ARG[@]}"

FOCUS='512|s/step|plain|leafgen|\+|-|fastest|failed|skipped'
section dreambooth 160 "$PY" benchmarks/dreambooth_step.py --sd15-shape --model "$MODEL" --steps 5 --repeats 2

FOCUS='passed|failed|skipped|error|PASS|FAIL|SKIP'
section tests 80 "$PY" -m pytest -m gpu -q -p no:cacheprovider -rA tests/classifier/test_gpu.py \
  tests/diffusion/generation/test_generation_gpu.py tests/diffusion/finetune/test_dreambooth_gpu.py


FOCUS='^\[|Error|error:'
if has ray && has imagehash; then
  section pipeline 150 "$PY" -m leafgen.cli run --config configs/sd15.yaml run_dir=/tmp/leafgen-sd15-run \
    data.root=null data.procedural.size=2048 data.procedural.scale=0.05 data.procedural.test_fraction=0.2 \
    base_model.name_or_path="$MODEL" classifier.weights=embedded classifier.epochs=1 \
    dreambooth.lora_rank=8 dreambooth.max_train_steps=20 dreambooth.num_class_images=8 \
    dreambooth.checkpointing_steps=20 dreambooth.validation_steps=20 dreambooth.num_validation_images=1 \
    generate.num_images=16 generate.num_inference_steps=25 generate.batch_size=8 \
    gate.threshold=0.0 gate.near_duplicate_distance=0 eval.seeds=[0] eval.judge.epochs=1 \
    eval.drift_samples=2 eval.drift_other_samples=1 eval.bootstrap_samples=100
else
  skip pipeline "needs ray and imagehash (benchmarks/gpu_bundle.sh full; too large to carry beside the tree)"
fi

{
  echo "=== summary ($(($(date +%s) - START)) s in all; time limits x$SCALE)"
  printf '%s\n' "${SUMMARY[@]}"
} | tee "$OUT/summary.txt"
