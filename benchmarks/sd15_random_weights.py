"""Write a Stable Diffusion v1.5 pipeline folder with random weights: the hub model's exact architecture
(UNet2DConditionModel, AutoencoderKL, CLIPTextModel configs of stable-diffusion-v1-5, CLIP's tokenizer
rebuilt offline), stored as float16 safetensors (about 2 GB). It stands in for the hub model where there
is no network (the GPU machine): speed and memory are the real model's, images are noise.

    python benchmarks/sd15_random_weights.py --out /tmp/sd15-random          # on a GPU: ~20 s
    leafgen run --config configs/sd15.yaml base_model.name_or_path=/tmp/sd15-random ...

Built where it is used, never committed. Initialises on the GPU when there is one (seconds), else on
the CPU (a minute or two on two cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from leafgen.diffusion.sd15_architecture import (
    PARAMETERS,
    build_components,
    parameter_counts,
    sd15_configs,
    write_random_pipeline,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder to write (made; an existing one is left as is)")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (Path(args.out) / "model_index.json").is_file():
        print(f"{args.out} already holds a pipeline; left as is")
        return
    counts = parameter_counts(build_components(sd15_configs(), "meta"))
    assert counts == PARAMETERS, counts  # the configs are SD v1.5's
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    folder = write_random_pipeline(args.out, dtype=getattr(torch, args.dtype), device=device, seed=args.seed)
    print(
        f"wrote {folder} in {time.perf_counter() - t0:.1f} s on {device}: "
        + ", ".join(f"{name} {n / 1e6:.2f}M" for name, n in counts.items())
    )


if __name__ == "__main__":
    main()
