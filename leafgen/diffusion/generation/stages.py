"""The ``generate`` and ``gate`` pipeline stages.

``generate`` turns ``GenerateConfig`` into a prompt table (img2img rows take real train-split images of the
target class as sources) and renders it on Ray Data into ``run_dir/generate/`` (``images/``,
``manifest.parquet``, ``samples.png``); an interrupted stage resumes from its manifest parts. ``gate``
scores every image with the baseline classifier, drops copies of real images and writes
``run_dir/gate/manifest.parquet`` with each score and decision, plus ``summary.json`` and grids.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from torchvision.utils import save_image

from leafgen import atomic
from leafgen.classifier.stage import CACHE_DIR
from leafgen.classifier.training import input_size, load_classifier
from leafgen.config import PipelineConfig
from leafgen.data.images import image_path
from leafgen.data.split import read_split
from leafgen.data.stages import dataset_root
from leafgen.diffusion.components import absolute_if_local
from leafgen.diffusion.finetune.adapters import EngineSettings, adapter_kind
from leafgen.diffusion.finetune.clusters import read_clusters
from leafgen.diffusion.generation.allocation import allocation_table, error_weights, load_pixels
from leafgen.diffusion.generation.gate import (
    RealImages,
    check_acceptance,
    gate_rows,
    load_float_images,
    perceptual_hashes,
)
from leafgen.diffusion.generation.manifest import MANIFEST_FILE, read_manifest
from leafgen.diffusion.generation.prompt_table import (
    TableSpec,
    assign_clusters,
    prompt_table,
    read_prompt_table,
)
from leafgen.errors import ConfigError, LeafgenError
from leafgen.labels import CLASSES
from leafgen.stages import Stage, StageContext

GRID_IMAGES = 32
ALLOCATION_FILE = "allocation.json"


def engine_settings(cfg: PipelineConfig, adapter: str | None = None) -> EngineSettings:
    """What each generation actor loads: the base model (plus ``adapter``) and the sampler settings."""
    g, b = cfg.generate, cfg.base_model
    adapter = absolute_if_local(adapter) if adapter else None
    return EngineSettings(
        absolute_if_local(b.name_or_path),
        b.revision,
        adapter,
        g.scheduler,
        g.dtype,
        channels_last=g.channels_last,
        fuse_qkv=g.fuse_qkv,
        compile=g.compile,
    )


def table_spec(cfg: PipelineConfig, **changes: Any) -> TableSpec:
    """The prompt table ``generate`` asks for at the base model's resolution, with ``changes`` applied."""
    g, b = cfg.generate, cfg.base_model
    spec = TableSpec(
        num_images=g.num_images,
        prompts=g.prompts,
        negative_prompt=g.negative_prompt,
        seed=g.seed,
        steps=g.num_inference_steps,
        guidance=g.guidance_scale,
        height=b.resolution,
        width=b.width or b.resolution,
        mode=g.mode,
        strength=g.strength,
    )
    return replace(spec, **changes)


def train_sources(cfg: PipelineConfig, ctx: StageContext) -> list[tuple[str, Path]]:
    """(id, path) of the train split's target-class images: the only real images img2img may start from."""
    root = dataset_root(cfg, ctx.inputs["dataset"], ctx.run.root) / "images"
    target = CLASSES.index(cfg.data.target_class)
    split = read_split(ctx.input_path("split", "split_csv"))
    return [(i, image_path(root, i)) for i, label in split["train"] if label == target]


def save_grid(paths: list[Path], out: Path) -> None:
    if paths:
        with atomic.atomic_path(out) as tmp:
            save_image(load_float_images(paths[:GRID_IMAGES]), tmp, nrow=8, padding=1)


def render_into_stage(cfg: PipelineConfig, ctx: StageContext, rows: list, engine: EngineSettings) -> pa.Table:
    """Generate ``rows`` on Ray into the stage folder with ``cfg.generate``'s batching, draw a sample
    grid beside them and return their manifest."""
    from leafgen.distributed.generate import generate_on_ray

    g = cfg.generate
    table = generate_on_ray(
        rows,
        engine,
        ctx.dir,
        g.batch_size,
        cfg.ray,
        g.num_actors,
        g.cpu_threads,
        run=ctx.run.storage,
        overlap_writes=g.overlap_writes,
    )
    save_grid([ctx.dir / f for f in table.column("file").to_pylist()], ctx.dir / "samples.png")
    return table


def _check_generate(cfg: PipelineConfig) -> None:
    table = cfg.generate.prompt_table
    if table and not Path(table).expanduser().is_file():
        raise LeafgenError(f"generate.prompt_table {table} does not exist")
    if cfg.generate.adapter:
        adapter_kind(cfg.generate.adapter)  # a bad adapter path fails before anything is cleared


def _check_finetuned(cfg: PipelineConfig) -> None:
    if cfg.generate.adapter:
        raise ConfigError(
            "generate.adapter is for `leafgen generate`; the pipeline generates from its own DreamBooth "
            "output (run_dir/dreambooth/model): drop the override"
        )
    _check_generate(cfg)


def _error_allocation(cfg: PipelineConfig, ctx: StageContext, sources: list[tuple[str, Path]]) -> dict:
    """``allocation: errors``: the gating classifier's errors near each source, on the validation split
    (the only split read here)."""
    root = dataset_root(cfg, ctx.inputs["dataset"], ctx.run.root) / "images"
    target = CLASSES.index(cfg.data.target_class)
    val = [i for i, y in read_split(ctx.run.root / ctx.inputs["split"]["split_csv"])["val"] if y == target]
    if not val:
        raise ConfigError(
            f"generate.allocation: 'errors' needs {cfg.data.target_class} images in the validation split, "
            "and it holds none: use allocation even, or a larger data.split validation share"
        )
    model, _ = load_classifier(ctx.input_path("classifier", "model_dir"))
    size = input_size(cfg.classifier)
    cache, limit = ctx.run.root / CACHE_DIR, cfg.data.max_image_pixels
    return error_weights(
        model,
        size,
        load_pixels([p for _, p in sources], size, cache, limit),
        load_pixels([image_path(root, i) for i in val], size, cache, limit),
        target,
        cfg.generate.allocation_floor,
    )


def _generate(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    g = cfg.generate
    adapter = g.adapter
    if "dreambooth" in ctx.inputs:
        adapter = str(ctx.input_path("dreambooth", "model_dir"))
    sources = train_sources(cfg, ctx) if g.mode == "img2img" or g.prompt_table else []
    info = _error_allocation(cfg, ctx, sources) if g.allocation == "errors" and not g.prompt_table else None
    spec = table_spec(cfg, source_weights=info["weights"] if info else None)
    if g.prompt_table:
        rows = read_prompt_table(Path(g.prompt_table).expanduser(), spec, sources)
    else:
        rows = prompt_table(spec, sources)
    if g.mode == "img2img" and not g.prompt_table:
        allocation = {
            "allocation": g.allocation,
            "floor": g.allocation_floor if info else None,
            "sources": allocation_table([i for i, _ in sources], rows, info),
            **(
                {"val": {k: info[k] for k in ("val_target_probability", "val_nearest_source")}}
                if info
                else {}
            ),
        }
        atomic.write_json(ctx.dir / ALLOCATION_FILE, allocation)
    clustering = read_clusters(Path(adapter).expanduser()) if adapter else None
    if clustering is not None:  # one identifier per cluster: each row names its cluster's token
        sources = dict(zip(clustering.ids, clustering.labels))
        args = (clustering.tokens, clustering.sizes, clustering.identifier, g.cluster_allocation, sources)
        rows = assign_clusters(rows, *args)
    table = render_into_stage(cfg, ctx, rows, engine_settings(cfg, adapter))
    seconds = sum(table.column("seconds").to_pylist())
    return {"manifest": f"{ctx.dir.name}/{MANIFEST_FILE}", "images": table.num_rows, "model_seconds": seconds}


def real_images(cfg: PipelineConfig, ctx: StageContext) -> RealImages:
    """pHash bits of every labelled real image: train, val and test."""
    root = dataset_root(cfg, ctx.inputs["dataset"], ctx.run.root) / "images"
    ids = [i for part in read_split(ctx.input_path("split", "split_csv")).values() for i, _ in part]
    paths = [image_path(root, i) for i in ids]
    return RealImages(ids, perceptual_hashes(paths, "hashing real images", cfg.data.max_image_pixels))


def _gate(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    generated = ctx.input_path("generate", "manifest")
    rows = read_manifest(generated)
    model, meta = load_classifier(ctx.input_path("classifier", "model_dir"))
    gated = gate_rows(
        rows,
        generated.parent,
        model,
        input_size(cfg.classifier),
        real_images(cfg, ctx),
        cfg.data.target_class,
        cfg.gate,
    )
    rate = check_acceptance(gated, cfg.gate, cfg.data.target_class)
    with atomic.atomic_path(ctx.dir / MANIFEST_FILE) as tmp:
        pq.write_table(pa.Table.from_pylist(gated), tmp)
    by_strength = sorted(gated, key=lambda r: r["strength"])  # grids read from gentle edits to bold ones
    for name, keep in (("accepted", True), ("rejected", False)):
        save_grid(
            [generated.parent / r["file"] for r in by_strength if r["accepted"] == keep],
            ctx.dir / f"{name}.png",
        )
    strengths = sorted({r["strength"] for r in gated})
    summary = {
        "images": len(gated),
        "accepted": sum(r["accepted"] for r in gated),
        "acceptance_rate": rate,
        "rejected_by_reason": dict(Counter(r["reason"] for r in gated if r["reason"])),
        "by_strength": [
            {
                "strength": s,
                "images": sum(r["strength"] == s for r in gated),
                "accepted": sum(r["accepted"] for r in gated if r["strength"] == s),
            }
            for s in strengths
        ],
        "threshold": cfg.gate.threshold,
        "margin": cfg.gate.margin,
        "max_score": cfg.gate.max_score,
        "near_duplicate_distance": cfg.gate.near_duplicate_distance,
    }
    atomic.write_json(ctx.dir / "summary.json", summary)
    return {"manifest": f"{ctx.dir.name}/{MANIFEST_FILE}", **summary}


# Batch size, actor count, threads and the speed levers (overlap_writes, channels_last, fuse_qkv, compile)
# change how fast images come, never which images: they stay out of the key, so changing them resumes a
# run instead of starting it over.
_IMAGE_KEYS = tuple(
    f"generate.{name}"
    for name in (
        "num_images",
        "prompts",
        "negative_prompt",
        "mode",
        "strength",
        "allocation",
        "allocation_floor",
        "num_inference_steps",
        "guidance_scale",
        "scheduler",
        "seed",
        "prompt_table",
        "adapter",
        "dtype",
        "cluster_allocation",
    )
)


def _prompt_file_checksum(cfg: PipelineConfig) -> str | None:
    # The table lives outside the run directory: key the stage on its bytes so an edit is noticed.
    path = Path(cfg.generate.prompt_table or "").expanduser()
    if not cfg.generate.prompt_table or not path.is_file():
        return None  # absent: the stage's check reports a missing file before anything runs
    return hashlib.sha256(path.read_bytes()).hexdigest()


GENERATE = Stage(
    name="generate",
    summary=lambda o: f"{o['images']} images",
    fn=_generate,
    config_keys=("base_model", *_IMAGE_KEYS, "data.target_class"),
    inputs=("dataset", "split"),
    # The gating classifier decides where rows go under allocation 'errors', and only then is read.
    inputs_when=lambda cfg: ("classifier",) if cfg.generate.allocation == "errors" else (),
    fingerprint_inputs=_prompt_file_checksum,
    check=_check_generate,
)
# The pipeline's variant: the same images, drawn from the DreamBooth output of the same run.
GENERATE_FINETUNED = replace(
    GENERATE,
    config_keys=tuple(k for k in GENERATE.config_keys if k != "generate.adapter"),
    inputs=(*GENERATE.inputs, "dreambooth"),
    check=_check_finetuned,
)
GATE = Stage(
    name="gate",
    summary=lambda o: f"accepted {o['accepted']} of {o['images']} ({o['acceptance_rate']:.1%})",
    fn=_gate,
    config_keys=("gate", "classifier", "data.target_class"),
    inputs=("dataset", "split", "classifier", "generate"),
)
