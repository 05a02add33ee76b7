"""A finished training's outputs: its best epoch exported as ``model/``, its validation and held-out test
probabilities, and ``metrics.json`` (best epoch, validation history, test metrics).

The driver does this after the fit (:mod:`leafgen.classifier.runs` keeps each run's best epoch in
``best/``), so every run of a stage, trained in one worker group or resumed after a kill, ends the same.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from leafgen import atomic
from leafgen.classifier.engine import ArrayDataset, eval_transform, predict_probs
from leafgen.classifier.metrics import classification_metrics
from leafgen.classifier.runs import BEST_DIR, RunSpec, best_copy
from leafgen.classifier.training import META_FILE, MODEL_FILE, export_weights, load_classifier
from leafgen.errors import StageError

MODEL_DIR = "model"
TEST_PROBS = "test_probs.npy"
VAL_PROBS = "val_probs.npy"
METRICS_FILE = "metrics.json"
LOG_DIR = "ray"
"""Each run's epoch history (``history.jsonl``) and TensorBoard logs, beside Ray's checkpoints."""


def predict_split(model_dir: Path, images: np.ndarray, flip_tta: bool) -> np.ndarray:
    """(N, C) class probabilities of a trained classifier on cached images."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_classifier(model_dir, device)
    labels = np.zeros(len(images), dtype=np.int64)
    loader = DataLoader(ArrayDataset(images, labels, eval_transform()), batch_size=64)
    return predict_probs(model, loader, device, flip_tta)


def save_probs(out: Path, model_dir: Path, arrays: dict[str, Path], flip_tta: bool) -> dict[str, Path]:
    """Val and test probabilities of ``model_dir`` into ``out`` (kept when already there)."""
    written = {}
    for split, name in (("val", VAL_PROBS), ("test", TEST_PROBS)):
        written[split] = out / name
        if written[split].is_file():
            continue
        probs = predict_split(model_dir, np.load(arrays[f"{split}_images"], mmap_mode="r"), flip_tta)
        with atomic.atomic_path(written[split]) as tmp:
            np.save(tmp, probs)
    return written


def export_model(out: Path) -> Path:
    """``out/model``: the run's best epoch (``out/best``) with float16 weights (BatchNorm statistics stay
    float32; every prediction of the run, test probabilities included, comes from these), put into place
    whole or not at all."""
    model_dir = out / MODEL_DIR
    if (model_dir / MODEL_FILE).is_file():
        return model_dir
    best = best_copy(out / BEST_DIR)
    if best is None:
        raise StageError(f"{out}: the training finished without a best epoch in {out / BEST_DIR}; rerun it")
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR}.", dir=out))
    try:
        shutil.copy2(best / META_FILE, staging / META_FILE)
        export_weights(best / MODEL_FILE, staging / MODEL_FILE)
        shutil.rmtree(model_dir, ignore_errors=True)
        staging.rename(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def export_run(
    spec: RunSpec,
    arrays: dict[str, Path],
    flip_tta: bool,
    read_history: Callable[[Path], list[dict[str, Any]]],
) -> dict[str, Any]:
    """Export a finished run (model, probabilities, ``metrics.json``, test scalars in TensorBoard) and
    return its metrics; a run exported before an interruption is read back, never exported again."""
    out = Path(spec.out)
    if (out / METRICS_FILE).is_file():
        return json.loads((out / METRICS_FILE).read_text())
    model_dir = export_model(out)
    _, meta = load_classifier(model_dir)
    probs = np.load(save_probs(out, model_dir, arrays, flip_tta)["test"])
    test = classification_metrics(np.load(arrays["test_labels"]), probs, spec.target_class)
    best_epoch = meta["epoch"] + 1
    metrics = {
        "best_epoch": best_epoch,
        "best_val": meta["metrics"],
        "test": test,
        "history": read_history(out / LOG_DIR),
    }
    with SummaryWriter(str(out / LOG_DIR / "tensorboard")) as writer:
        for key, value in test.items():
            if key != "confusion_matrix":
                writer.add_scalar(f"test/{key}", value, best_epoch)
    atomic.write_json(out / METRICS_FILE, metrics)  # last: the export is complete
    return metrics
