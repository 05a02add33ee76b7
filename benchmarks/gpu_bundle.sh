#!/usr/bin/env bash
# Packs the Python packages the GPU machine lacks into .gpu/site.tar.xz (an ignored folder) for a device
# run to carry: that machine has no network, and its image holds torch, transformers, peft, accelerate,
# pyarrow and the rest, but not diffusers, Ray, open_clip_torch (CLIP's vocabulary) or imagehash.
# Run here, from the repository root, before a device session; benchmarks/gpu_checks.sh unpacks it.
#
#   bash benchmarks/gpu_bundle.sh            # minimal: diffusers + open_clip_torch, ~5 MB
#   bash benchmarks/gpu_bundle.sh full       # + Ray[default,data,train,tune] and its dependencies,
#                                            #   imagehash, optuna, bitsandbytes (CUDA 13 library only)
#
# Why two sizes: a device call carries the working tree and the carried paths, 64 MiB in all, and the
# tree alone is ~59 MB (the embedded models in leafgen/assets are 48 MB). The minimal bundle fits beside
# it and runs the SD v1.5 benchmarks (plain loop, in-process engine and levers, DreamBooth table) and the
# gpu tests that need no Ray. The full one is ~62 MB as xz (Ray's wheel alone is 79 MB), so the Ray
# engine runs, the real-size pipeline and 8-bit AdamW need a smaller tree or another route to the
# machine. Versions are this project's (pyproject.toml's ranges, as its venv resolves them), for the
# device's Python 3.12 on x86-64.
set -euo pipefail
KIND=${1:-minimal}
DEST=.gpu
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
MINIMAL=(diffusers==0.42.1 open_clip_torch==3.3.0)
FULL=(ray==2.60.0 imagehash==4.3.2 pywavelets==1.10.0 optuna==4.9.0 bitsandbytes==0.50.2
  aiohttp-cors==0.8.1 alembic==1.20.1 annotated-types==0.8.0 cffi==2.1.1 colorful==0.5.8 colorlog==6.12.0
  cryptography==50.0.2 distlib==0.4.4 ftfy==6.3.1 google-api-core==2.44.0 google-auth==2.63.0
  googleapis-common-protos==1.76.0 importlib-metadata==10.2.0 jsonschema==4.26.0
  jsonschema-specifications==2025.9.1 mako==1.4.3 opencensus==0.11.4 opencensus-context==0.1.3
  opentelemetry-api==1.45.2 opentelemetry-exporter-prometheus==0.66b2 opentelemetry-proto==1.45.2
  opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 platformdirs==4.14.9
  proto-plus==1.29.0 pyasn1==0.6.5 pyasn1-modules==0.4.2 pycparser==3.12 pydantic==2.14.4
  pydantic-core==2.50.5 python-discovery==1.9.6 referencing==0.37.0 rpds-py==2026.9.1 smart-open==9.0.4
  sqlalchemy==2.1.9 tensorboardx==2.6.5 typing-inspection==0.4.5 virtualenv==21.15.11 wcwidth==0.9.4)
PACKAGES=("${MINIMAL[@]}")
[ "$KIND" = full ] && PACKAGES+=("${FULL[@]}")
PLATFORMS=()
for tag in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$WORK/wheels" "${PACKAGES[@]}"
mkdir -p "$WORK/site"
for wheel in "$WORK"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$WORK/site"; done
# What leafgen never runs there: Ray's Java jars, RLlib, Serve and LLM libraries, py-spy; bitsandbytes'
# libraries for other CUDA versions, ROCm and XPU (the machine's torch is built for CUDA 13.0).
rm -rf "$WORK"/site/ray/{jars,rllib,serve,llm} "$WORK"/site/py_spy*
find "$WORK/site" -name '__pycache__' -type d -prune -exec rm -rf {} +
if [ -d "$WORK/site/bitsandbytes" ]; then
  find "$WORK/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*_cpu.so' ! -name '*_cuda130.so' -delete
fi
mkdir -p "$DEST"
tar -C "$WORK/site" -cf - . | xz -T0 -9 >"$DEST/site.tar.xz"
ls -l "$DEST/site.tar.xz"
