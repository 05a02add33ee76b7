"""Generation throughput: leafgen's Ray Data engine against a plain diffusers loop doing identical work.

Both render the same prompt table (prompts, per-row seeds, steps, guidance, resolution) with the same
model, batch size and cores, and both write every image as a PNG. Prints images/s for each, median of
``--repeats`` runs, with start-up (model loading; Ray actors for the engine) and without it (from the
first finished batch to the last, read from per-image finish times), and the engine/plain ratios.

    python benchmarks/generate_throughput.py                 # demo shape: 64x96, the tiny recipe's model
    python benchmarks/generate_throughput.py --sd15-shape    # SD v1.5 shapes, random weights, 512x512
    python benchmarks/generate_throughput.py --model DIR     # any diffusers folder or hub id

Random weights cost exactly what trained ones do, so ``--sd15-shape`` gives real SD v1.5 throughput on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from PIL import Image

from leafgen.config import GenerateConfig, RayConfig
from leafgen.diffusion.components import build_pipeline, initial_noise
from leafgen.diffusion.embedded.recipe import SD15_SHAPES, TinyArchitecture
from leafgen.diffusion.finetune.adapters import EngineSettings
from leafgen.diffusion.generation.prompt_table import TableSpec, prompt_table
from leafgen.distributed.generate import generate_on_ray


def random_model(arch: TinyArchitecture, folder: Path, dtype: torch.dtype) -> Path:
    build_pipeline(arch, seed=0).to(dtype=dtype).save_pretrained(folder, safe_serialization=True)
    return folder


def plain_loop(model: str, rows: list[dict], batch: int, out: Path, dtype: torch.dtype) -> list[float]:
    """What a diffusers user writes: load, then call the pipeline on batches; per-image finish times."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = StableDiffusionPipeline.from_pretrained(model, dtype=dtype, safety_checker=None).to(device)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True)
    finished = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        generators = [torch.Generator().manual_seed(r["seed"]) for r in chunk]
        images = pipe(
            [r["prompt"] for r in chunk],
            num_inference_steps=chunk[0]["steps"],
            guidance_scale=chunk[0]["guidance"],
            height=chunk[0]["height"],
            width=chunk[0]["width"],
            # Starting noise drawn in float32 (as the engine does): the same pixels in any precision.
            latents=initial_noise(pipe, generators, chunk[0]["height"], chunk[0]["width"]),
            generator=generators,
        ).images
        for row, image in zip(chunk, images):
            image.save(out / f"{row['id']}.png")
            finished.append(time.time())
    return finished


def rates(start: float, finished: list[float], batch: int) -> tuple[float, float]:
    """Images/s including start-up, and in steady state (after the first batch)."""
    finished = sorted(finished)
    with_startup = len(finished) / (finished[-1] - start)
    steady = (len(finished) - batch) / (finished[-1] - finished[batch - 1])
    return with_startup, steady


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="diffusers folder or hub id (default: a random-weight model)")
    parser.add_argument("--sd15-shape", action="store_true", help="SD v1.5-shaped random model, 512x512")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="default: 25 (SD shape) or 20")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--engine-threads",
        type=int,
        default=GenerateConfig().cpu_threads,
        help="on CPU, torch threads per engine actor (actors = cores // threads); default: the engine's",
    )
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dtype = torch.float16 if cuda else torch.float32
    arch = SD15_SHAPES if args.sd15_shape else TinyArchitecture()
    steps = args.steps or (25 if args.sd15_shape else 20)
    work = Path(tempfile.mkdtemp(prefix="leafgen-bench-"))
    model = args.model or str(random_model(arch, work / "model", dtype))
    spec = TableSpec(args.images, ("a photo of a leaf",), "", 0, steps, 7.5, arch.height, arch.width)
    rows = prompt_table(spec)
    cpus = torch.get_num_threads()
    ray_cfg = RayConfig(num_cpus=None if cuda else cpus, temp_dir=tempfile.mkdtemp(prefix="lgr-", dir="/tmp"))
    threads = min(args.engine_threads, cpus)
    device = (
        torch.cuda.get_device_name()
        if cuda
        else f"CPU, {cpus} threads; engine: {cpus // threads} actor(s) x {threads} thread(s)"
    )
    print(f"{args.images} images {arch.height}x{arch.width}, {steps} steps, batch {args.batch}, {device}")

    results: dict[str, list[tuple[float, float]]] = {"plain": [], "engine": []}
    for k in range(args.repeats):
        start = time.time()
        results["plain"].append(
            rates(start, plain_loop(model, rows, args.batch, work / f"plain{k}", dtype), args.batch)
        )
        start = time.time()
        engine = EngineSettings(model, dtype="auto")
        table = generate_on_ray(rows, engine, work / f"engine{k}", args.batch, ray_cfg, cpu_threads=threads)
        finished = pq.read_table(work / f"engine{k}" / "manifest.parquet").column("finished_at").to_pylist()
        results["engine"].append(rates(start, finished, args.batch))
        assert table.num_rows == len(rows)
        # Same rows, same images: the comparison is of identical work.
        a = np.asarray(Image.open(work / f"plain{k}" / f"{rows[0]['id']}.png"), dtype=np.int16)
        b = np.asarray(Image.open(work / f"engine{k}" / "images" / f"{rows[0]['id']}.png"), dtype=np.int16)
        print(f"  run {k + 1}: max pixel difference plain vs engine {np.abs(a - b).max()}")

    med = {
        name: tuple(statistics.median(r[i] for r in runs) for i in (0, 1)) for name, runs in results.items()
    }
    for i, label in enumerate(("with start-up", "steady state")):
        plain, engine = med["plain"][i], med["engine"][i]
        print(
            f"{label:>14}: plain {plain:7.2f} img/s  engine {engine:7.2f} img/s  ratio {engine / plain:.2f}x"
        )


if __name__ == "__main__":
    main()
