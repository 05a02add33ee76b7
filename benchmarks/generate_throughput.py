"""Generation throughput: leafgen's Ray Data engine against a plain diffusers loop doing identical work,
and each speed lever of the engine on and off.

Both render the same prompt table (prompts, per-row seeds, steps, guidance, resolution) with the same
model, batch size and cores, and both write every image as a PNG. Prints images/s for each, median of
``--repeats`` runs, with start-up (model loading; Ray actors for the engine) and without it (after the
first pipeline call, read from per-image finish times), and the engine/plain ratios. ``--best`` adds an
engine run with generate settings of your choice (the levers), ``--levers`` a table of each lever toggled
from the engine's defaults, measured in this process on one ``ImageGenerator`` per lever (driven by two
threads when writes overlap, as Ray Data drives an actor), each row printed as soon as it is measured.

    python benchmarks/generate_throughput.py                 # demo shape: 64x96, the tiny recipe's model
    python benchmarks/generate_throughput.py --sd15-shape    # SD v1.5 (random weights), 512x512, 25 steps
    python benchmarks/generate_throughput.py --sd15-shape --model DIR --repeats 1 --levers \\
        --best compile=true fuse_qkv=true batch_size=auto   # what benchmarks/gpu_checks.sh runs
    python benchmarks/generate_throughput.py --model DIR     # any diffusers folder or hub id

Random weights cost exactly what trained ones do, so ``--sd15-shape`` gives real SD v1.5 throughput on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from PIL import Image

from leafgen.config import GenerateConfig, RayConfig, load_config
from leafgen.diffusion.components import build_pipeline, initial_noise
from leafgen.diffusion.embedded.recipe import SD15_SHAPES, TinyArchitecture
from leafgen.diffusion.finetune.adapters import EngineSettings
from leafgen.diffusion.generation.generator import ImageGenerator
from leafgen.diffusion.generation.prompt_table import ROW_KEYS, TableSpec, columns_from_rows, prompt_table
from leafgen.diffusion.sd15_architecture import write_random_pipeline


# Lever table: each row changes the engine's defaults by these generate settings (overlap_writes and
# channels_last are toggled from what their default resolves to on this machine).
def levers(cuda: bool) -> dict[str, list[str]]:
    on_gpu = str(not cuda).lower()
    return {
        "engine defaults": [],
        f"overlap_writes {on_gpu}": [f"overlap_writes={on_gpu}"],
        f"channels_last {on_gpu}": [f"channels_last={on_gpu}"],
        "fuse_qkv true": ["fuse_qkv=true"],
        "compile true": ["compile=true"],
        "dtype bfloat16": ["dtype=bfloat16"],
        "batch_size 16": ["batch_size=16"],
        "batch_size auto": ["batch_size=auto"],
    }


def settings(overrides: list[str]) -> GenerateConfig:
    """``generate`` settings from KEY=VALUE overrides, typed and checked as on the command line."""
    return load_config(None, [f"generate.{o}" for o in overrides]).generate


def engine_of(model: str, g: GenerateConfig) -> EngineSettings:
    return EngineSettings(
        model, dtype=g.dtype, channels_last=g.channels_last, fuse_qkv=g.fuse_qkv, compile=g.compile
    )


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


def rates(start: float, finished: list[float], first: int) -> tuple[float, float]:
    """Images/s including start-up, and in steady state (after the ``first`` images of the first call)."""
    finished = sorted(finished)
    with_startup = len(finished) / (finished[-1] - start)
    steady = (len(finished) - first) / (finished[-1] - finished[first - 1])
    return with_startup, steady


def engine_times(out: Path) -> tuple[list[float], int]:
    """Every image's finish time, and how many images the first manifest part (pipeline call) holds."""
    parts = [pq.read_table(p).column("finished_at").to_pylist() for p in (out / "manifest").glob("part-*")]
    return [t for part in parts for t in part], len(min(parts, key=max))


def slug(name: str) -> str:
    return name.replace(" ", "-")


def max_difference(a: Path, b: Path) -> int:
    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (a, b))
    return int(np.abs(x - y).max())


def lever_run(model: str, spec: TableSpec, g: GenerateConfig, out: Path, threads: int | None) -> dict:
    """One lever setting in this process: load (and, for auto, probe), one warm-up call (compiles when
    asked), then timed calls of at least 16 images in all."""
    t0 = time.time()
    generator = ImageGenerator(asdict(engine_of(model, g)), str(out), threads, g.batch_size)
    rows = prompt_table(replace(spec, num_images=1))
    size = generator.call_size(rows[0])
    load = time.time() - t0
    rows = prompt_table(replace(spec, num_images=size * (1 + math.ceil(16 / size))))
    calls = [columns_from_rows(rows[i : i + size], ROW_KEYS) for i in range(0, len(rows), size)]
    overlap = torch.cuda.is_available() if g.overlap_writes is None else g.overlap_writes
    t1 = time.time()
    if overlap:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(generator, calls))
    else:
        for call in calls:
            generator(call)
    finished, first = engine_times(out)
    _, steady = rates(t1, finished, first)
    del generator
    gc.collect()
    torch._dynamo.reset()  # the next lever compiles (or not) on its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"steady": steady, "load": load, "first_call": sorted(finished)[first - 1] - t1, "batch": size}


def lever_table(model: str, spec: TableSpec, rows: dict[str, list[str]], work: Path, threads, plain) -> None:
    """Each lever's row as soon as it is measured: images/s, against the engine's defaults and against
    the plain loop's steady state (``plain``, when measured), and the first image's largest pixel
    difference from the defaults' (the same row and seed)."""
    print("\nlevers (one ImageGenerator each, in this process; images/s after a warm-up call)", flush=True)
    print(
        f"{'lever':>26} {'img/s':>8} {'x dflt':>6} {'x plain':>7} {'batch':>5} {'load s':>7} "
        f"{'1st call s':>10} {'max diff':>8}"
    )
    reference = None
    for name, change in rows.items():
        out = work / f"lever-{len(list(work.glob('lever-*')))}"
        try:
            r = lever_run(model, spec, settings(change), out, threads)
        except Exception as exc:  # one broken lever must not hide the others
            print(f"{name:>26}  failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        reference = reference or (r["steady"], out)
        diff = max_difference(reference[1] / "images" / "syn-000000.png", out / "images" / "syn-000000.png")
        vs_plain = f"{r['steady'] / plain:6.2f}x" if plain else f"{'-':>7}"
        print(
            f"{name:>26} {r['steady']:8.2f} {r['steady'] / reference[0]:5.2f}x {vs_plain} {r['batch']:5d} "
            f"{r['load']:7.1f} {r['first_call']:10.1f} {diff:8d}",
            flush=True,
        )


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
    parser.add_argument(
        "--best", nargs="*", default=None, help="generate KEY=VALUE settings of a third run (and lever row)"
    )
    parser.add_argument("--levers", action="store_true", help="then the table of each lever on and off")
    parser.add_argument("--skip-plain", action="store_true", help="engine runs and levers only")
    parser.add_argument("--no-ray", action="store_true", help="no Ray engine runs (plain loop and levers)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dtype = torch.float16 if cuda else torch.float32
    arch = SD15_SHAPES if args.sd15_shape else TinyArchitecture()
    steps = args.steps or (25 if args.sd15_shape else 20)
    work = Path(tempfile.mkdtemp(prefix="leafgen-bench-"))
    if args.model:
        model = args.model
    elif args.sd15_shape:
        model = str(write_random_pipeline(work / "model", dtype=dtype, device="cuda" if cuda else "cpu"))
    else:
        model = str(work / "model")
        build_pipeline(arch, seed=0).to(dtype=dtype).save_pretrained(model, safe_serialization=True)
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

    no_ray = args.no_ray or importlib.util.find_spec("ray") is None
    engines = [] if no_ray else ["engine", *(["engine best"] if args.best is not None else [])]
    runs: dict[str, list] = {name: [] for name in ([] if args.skip_plain else ["plain"]) + engines}
    if no_ray:
        print("Ray engine runs skipped (--no-ray, or ray is not importable); the lever table stands in")
    for k in range(args.repeats):
        for name in runs:
            out, start = work / f"{slug(name)}{k}", time.time()
            if name == "plain":
                runs[name].append(rates(start, plain_loop(model, rows, args.batch, out, dtype), args.batch))
                continue
            from leafgen.distributed.generate import generate_on_ray

            g = settings([f"batch_size={args.batch}", *(args.best if name == "engine best" else [])])
            table = generate_on_ray(
                rows,
                engine_of(model, g),
                out,
                g.batch_size,
                ray_cfg,
                cpu_threads=threads,
                overlap_writes=g.overlap_writes,
            )
            assert table.num_rows == len(rows)
            finished, first = engine_times(out)
            runs[name].append(rates(start, finished, first))
            print(
                f"  {name} run {k + 1}: first call done {sorted(finished)[first - 1] - start:.1f} s "
                "after the start"
            )
        if "plain" in runs and engines:
            # Same rows, same images: the comparison is of identical work.
            name = f"{rows[0]['id']}.png"
            diffs = [
                f"{n} {max_difference(work / f'plain{k}' / name, work / f'{slug(n)}{k}' / 'images' / name)}"
                for n in engines
            ]
            print(f"  run {k + 1}: max pixel difference plain vs " + ", ".join(diffs))

    med = {n: tuple(statistics.median(r[i] for r in runs[n]) for i in (0, 1)) for n in runs}
    for i, label in enumerate(("with start-up", "steady state")):
        line = "  ".join(f"{n} {med[n][i]:7.2f} img/s" for n in runs)
        if "plain" in runs and engines:
            line += "  ratio " + ", ".join(f"{n} {med[n][i] / med['plain'][i]:.2f}x" for n in engines)
        print(f"{label:>14}: {line}", flush=True)
    if args.levers:
        base = [f"batch_size={args.batch}"]
        table = {name: base + change for name, change in levers(cuda).items()}
        if args.best:
            table["--best together"] = base + args.best
        plain = med["plain"][1] if "plain" in med else None
        lever_table(model, spec, table, work, None if cuda else threads, plain)


if __name__ == "__main__":
    main()
