"""The train sets an arm can train on, as the .npy arrays a training reads (val and test always real).

- ``real``: the train split (the classifier stage's cache);
- ``mix``: the ``mix`` stage's set, real + accepted synthetic target-class images, with each row's
  synthetic flag and the train index of the real image it was made from (for swap-mode arms);
- ``synthetic_only``: the same minus the real target-class images, so the class is seen only through
  synthetic ones (Ravuri & Vinyals' Classification Accuracy Score, against real test images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leafgen import atomic
from leafgen.classifier.sampling import NO_SOURCE
from leafgen.classifier.stage import CACHE_DIR, cache_split_arrays
from leafgen.classifier.training import input_size
from leafgen.config import PipelineConfig
from leafgen.data.cache import ensure_cached
from leafgen.data.mixing import MixRow, read_mix
from leafgen.labels import CLASSES
from leafgen.stages import StageContext


def train_set(cfg: PipelineConfig, ctx: StageContext, kind: str) -> dict[str, Path]:
    """The arrays of train set ``kind`` (real, mix or synthetic_only), the split's val and test beside."""
    arrays = cache_split_arrays(cfg, ctx)
    if kind == "real":
        return arrays
    rows = read_mix(ctx.run.root / ctx.inputs["mix"]["mix_csv"])
    if kind == "synthetic_only":
        target = CLASSES.index(cfg.data.target_class)
        replaced = sum(1 for r in rows if r.source == "real" and r.label == target)
        rows = [r for r in rows if r.source == "synthetic" or r.label != target]
        synthetic = sum(1 for r in rows if r.source == "synthetic")
        if synthetic < replaced:
            print(
                f"[{ctx.dir.name}] synthetic_only: {synthetic} synthetic {cfg.data.target_class} images "
                f"stand in for {replaced} real ones (the gate accepted too few for one each); training "
                "on those",
                flush=True,
            )
    return {**arrays, **_write_rows(cfg, ctx, kind, rows)}


def _write_rows(cfg: PipelineConfig, ctx: StageContext, kind: str, rows: list[MixRow]) -> dict[str, Path]:
    folder = ctx.dir / "arrays" / kind
    images = ensure_cached(
        [r.path for r in rows],
        input_size(cfg.classifier),
        ctx.run.root / CACHE_DIR,
        cfg.data.max_image_pixels,
        cfg.data.decode_workers,
    )
    index = {r.image_id: k for k, r in enumerate(rows) if r.source == "real"}
    columns = {
        "train_labels": np.asarray([r.label for r in rows], dtype=np.int64),
        "train_synthetic": np.asarray([r.source == "synthetic" for r in rows], dtype=bool),
        "train_sources": np.asarray([index.get(r.source_id, NO_SOURCE) for r in rows], dtype=np.int64),
    }
    paths = {"train_images": images}
    for name, values in columns.items():
        paths[name] = folder / f"{name}.npy"
        with atomic.atomic_path(paths[name]) as tmp:
            np.save(tmp, values)
    return paths
