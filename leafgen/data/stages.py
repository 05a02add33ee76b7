"""Pipeline stages of the data layer: the validated dataset folder, and its train/val/test split."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from leafgen import atomic
from leafgen.config import PipelineConfig
from leafgen.data.plant_pathology import read_folder
from leafgen.data.procedural import FORMAT_VERSION, ProceduralSpec, contact_sheet, make_dataset
from leafgen.data.split import read_split, split_counts, stratified_split, write_split
from leafgen.stages import Stage, StageContext

PROCEDURAL_DIR = "plant-pathology-procedural"


def dataset_root(cfg: PipelineConfig, outputs: dict[str, Any], run_root: Path) -> Path:
    """The dataset folder a completed ``dataset`` stage points at."""
    root = Path(outputs["root"])
    return root if root.is_absolute() else run_root / root


def _input_fingerprint(cfg: PipelineConfig) -> dict[str, Any]:
    # A user folder lives outside the run directory: key the stage on its CSVs so edits are noticed.
    # The procedural set is keyed on the painter's version, so a changed painter redraws it.
    if cfg.data.root is None:
        return {"procedural_version": FORMAT_VERSION}
    sums = {}
    for name in ("train.csv", "test.csv"):
        path = Path(cfg.data.root) / name
        sums[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    return sums


def _dataset(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    data = cfg.data
    if data.root is None:
        p = data.procedural
        root = make_dataset(
            ctx.dir / PROCEDURAL_DIR, ProceduralSpec(p.scale, p.size, p.seed, p.test_fraction)
        )
        recorded = str(root.relative_to(ctx.run.root))
    else:
        root = Path(data.root).expanduser().resolve()
        recorded = str(root)
    folder = read_folder(
        root,
        on_bad_image=data.on_bad_image,
        max_image_pixels=data.max_image_pixels,
        decode_workers=data.decode_workers,
    )
    summary = {
        "root": recorded,
        "counts": folder.counts(),
        "train_images": len(folder.image_ids),
        "test_images": len(folder.test_ids),
        "skipped": list(folder.skipped),
    }
    atomic.write_json(ctx.dir / "summary.json", summary)
    contact_sheet(root, ctx.dir / "contact_sheet.png")
    return summary


def _split(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    root = dataset_root(cfg, ctx.inputs["dataset"], ctx.run.root)
    skipped = {s.split(":", 1)[0] for s in ctx.inputs["dataset"]["skipped"]}
    folder = read_folder(root, check_images=False, progress=False)  # images were checked by the dataset stage
    keep = [i for i, image_id in enumerate(folder.image_ids) if image_id not in skipped]
    ids = tuple(folder.image_ids[i] for i in keep)
    labels = folder.labels[keep]
    assignment = stratified_split(ids, labels, cfg.data.split, cfg.data.split_seed)
    write_split(ctx.dir / "split.csv", ids, labels, assignment)
    counts = split_counts(read_split(ctx.dir / "split.csv"))
    atomic.write_json(ctx.dir / "summary.json", counts)
    return {"split_csv": "split/split.csv", "counts": counts}


DATASET = Stage(
    name="dataset",
    summary=lambda o: f"{o['train_images']} labelled and {o['test_images']} unlabelled test images",
    fn=_dataset,
    config_keys=("data.root", "data.procedural", "data.on_bad_image", "data.max_image_pixels"),
    fingerprint_inputs=_input_fingerprint,
)
SPLIT = Stage(
    name="split",
    fn=_split,
    config_keys=("data.split", "data.split_seed"),
    inputs=("dataset",),
    summary=lambda o: ", ".join(f"{k} {sum(v.values())}" for k, v in o["counts"].items()),
)
