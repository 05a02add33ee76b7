"""The embedded classifier backbone: a ResNet18 pretrained on procedural leaves, committed in the package.

ImageNet weights are what a Kaggle user starts from, and they cannot be downloaded here; a ResNet18 from
random weights needs far more epochs than the demo's two CPU cores allow to learn "spots on the leaf"
rather than "brown blur in the background" (docs/pipeline_demo.md). So the project pretrains its own
backbone, as it trains its own base model: on a procedural set painted with the base model's seed (never
an image of the demo's splits) and, like ImageNet and SD v1.5, **without the minority class**. Only the
convolutional layers are kept; every classifier built from them gets a fresh head.

``leafgen backbone --out DIR`` writes ``model.safetensors`` (float16, the head left out) and
``backbone.json`` (recipe, validation metrics, time). A killed run resumes from its last epoch.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from leafgen import atomic
from leafgen.classifier.training import META_FILE, MODEL_FILE, STATE_FILE, SplitArrays, fit, input_size
from leafgen.config import ClassifierConfig
from leafgen.config.fields import FieldError
from leafgen.config.loader import to_dict
from leafgen.data.cache import cached_images
from leafgen.data.images import image_path
from leafgen.data.procedural import ProceduralSpec, make_dataset
from leafgen.labels import CLASSES

CARD_FILE = "backbone.json"
HEAD_PREFIX = "fc."  # torchvision ResNets' classification head


def _pretraining_classifier() -> ClassifierConfig:
    return ClassifierConfig(arch="resnet18", image_size=64, epochs=14, batch_size=64, learning_rate=2e-3)


@dataclass
class BackboneRecipe:
    data_seed: int = 20261125
    """Seed of the procedural pretraining set: the base model's, so the demo's images (seed 0) stay unseen."""
    data_scale: float = 2.0
    """Size of the pretraining set in multiples of Kaggle's per-class training counts."""
    left_out: tuple[str, ...] = ("multiple_diseases",)
    """Classes never shown in pretraining: the minority class stays as unknown as it is to ImageNet."""
    val_fraction: float = 0.1
    """Share of the pretraining images held out to pick the best epoch."""
    classifier: ClassifierConfig = field(default_factory=_pretraining_classifier)
    """Architecture, input size and optimisation of the pretraining run (``weights`` must be 'none')."""

    def __post_init__(self) -> None:
        unknown = [c for c in self.left_out if c not in CLASSES]
        if unknown:
            raise FieldError("left_out", f"unknown classes {unknown}; choose from {', '.join(CLASSES)}")
        if not 0 < self.val_fraction < 0.5:
            raise FieldError("val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")
        if self.classifier.arch != "resnet18" or self.classifier.weights != "none":
            raise FieldError(
                "classifier", "the embedded backbone is a ResNet18 pretrained from random weights"
            )


def pretraining_splits(recipe: BackboneRecipe, work: Path) -> tuple[SplitArrays, SplitArrays]:
    """Paint (or reuse) the pretraining set and split it, stratified, into train and val arrays."""
    spec = ProceduralSpec(scale=recipe.data_scale, seed=recipe.data_seed, test_fraction=0.0)
    root = make_dataset(work / "procedural", spec)
    kept = [(i, c) for i, c in enumerate(spec.labels("train")) if c not in recipe.left_out]
    paths = [image_path(root / "images", f"Train_{i}") for i, _ in kept]
    labels = np.array([CLASSES.index(c) for _, c in kept])
    images = cached_images(paths, input_size(recipe.classifier), work / "cache")
    rng = np.random.default_rng(recipe.data_seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        is_val[members[: round(len(members) * recipe.val_fraction)]] = True
    return (
        SplitArrays(images[~is_val], labels[~is_val]),
        SplitArrays(images[is_val], labels[is_val]),
    )


def pretrain_backbone(recipe: BackboneRecipe, out: str | Path, work: str | Path | None = None) -> Path:
    """Pretrain the backbone of ``recipe`` and write it to ``out``; returns the weights file.

    ``work`` (default ``<out>.work``) keeps the painted images, the cache, the last epoch's checkpoint
    (to resume from) and the best one by validation accuracy.
    """
    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    train, val = pretraining_splits(recipe, work)
    last, best = work / "last", work / "best"
    history = _read_history(work)
    started = time.perf_counter()

    def report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        assert checkpoint is not None  # a single process is rank 0
        # An epoch re-run after a kill replaces its row rather than adding a second one.
        history[:] = [row for row in history if row["epoch"] < metrics["epoch"]]
        history.append({k: v for k, v in metrics.items() if k != "val/confusion_matrix"})
        atomic.write_text(work / "history.json", json.dumps(history, indent=1))
        if metrics["val/accuracy"] >= max(row["val/accuracy"] for row in history):
            _replace_folder(checkpoint, best)
        _replace_folder(checkpoint, last)  # last: a kill before this re-runs the epoch
        print(
            f"epoch {metrics['epoch']}/{recipe.classifier.epochs}: loss {metrics['train/loss']:.3f}, "
            f"val accuracy {metrics['val/accuracy']:.3f} ({metrics['train/seconds']:.0f} s)",
            flush=True,
        )

    resume = last if (last / STATE_FILE).is_file() else None
    if resume is None or len(history) < recipe.classifier.epochs:
        fit(recipe.classifier, train, val, report, resume_from=resume)
    return export_backbone(best, out, recipe, time.perf_counter() - started)


def export_backbone(checkpoint: Path, out: Path, recipe: BackboneRecipe, seconds: float) -> Path:
    """Write the checkpoint's convolutional weights in float16 and the card describing them; the card's
    epoch and metrics are the checkpoint's own (``classifier.json``), so they describe these weights."""
    state = load_file(checkpoint / MODEL_FILE)
    backbone = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    backbone = {k: v.contiguous() for k, v in backbone.items() if not k.startswith(HEAD_PREFIX)}
    out.mkdir(parents=True, exist_ok=True)
    weights = out / MODEL_FILE
    with atomic.atomic_path(weights) as tmp:
        save_file(backbone, tmp, metadata={"format": "pt", "arch": recipe.classifier.arch})
    meta = json.loads((checkpoint / META_FILE).read_text())
    seen = [c for c in CLASSES if c not in recipe.left_out]
    # Metrics of a class never shown are zeros and NaNs, not measurements; the card leaves them out.
    val = {k.removeprefix("val/"): v for k, v in meta["metrics"].items() if k.startswith("val/")}
    val = {k: v for k, v in val.items() if k in ("accuracy", "mean_auc") or k.split("/")[-1] in seen}
    card = {
        "arch": recipe.classifier.arch,
        "input_size": list(input_size(recipe.classifier)),
        "classes_seen": seen,
        "best_epoch": meta["epoch"] + 1,
        "val": val,
        "train_images": meta["metrics"]["train/images"],
        "seconds_this_run": round(seconds, 1),
        "torch": torch.__version__,
        "recipe": to_dict(recipe),
    }
    atomic.write_text(out / CARD_FILE, json.dumps(card, indent=2, default=str))
    return weights


def _read_history(work: Path) -> list[dict[str, Any]]:
    path = work / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _replace_folder(src: Path, dst: Path) -> None:
    """Copy ``src`` over ``dst`` so that ``dst`` is never half-written: copy beside, then rename."""
    staging = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging)
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        dst.rename(old)
    staging.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
