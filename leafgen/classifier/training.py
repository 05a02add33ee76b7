"""The classifier's training loop, independent of Ray: epochs, per-epoch validation, checkpoints, resume.

The loop reports through a ``report(metrics, checkpoint_dir)`` callable, as the design's seam says: the
Ray layer passes one that calls ``ray.train.report``; tests and single-process runs pass a plain function.
Every rank calls ``report`` once per epoch (Ray Train requires it); rank 0 validates and writes the
checkpoint, whose metrics are the ones Ray records.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from leafgen import atomic
from leafgen.classifier.engine import (
    ArrayDataset,
    build_loss,
    build_optimizer,
    build_scheduler,
    eval_transform,
    predict_probs,
    train_epoch,
    train_transform,
)
from leafgen.classifier.metrics import classification_metrics
from leafgen.classifier.model import build_classifier
from leafgen.classifier.sampling import EpochSampler, SyntheticRows, SyntheticUse
from leafgen.config import ClassifierConfig
from leafgen.labels import CLASSES
from leafgen.worker import ReportFn, WorkerContext

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
META_FILE = "classifier.json"


@dataclass
class SplitArrays:
    """Cached images (N, H, W, 3) uint8 and their class indices; for a train set holding synthetic
    images, which rows those are and what each was made from."""

    images: np.ndarray
    labels: np.ndarray
    rows: SyntheticRows | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(
    directory: Path, model: nn.Module, opt, sched, epoch: int, cfg: ClassifierConfig, metrics: dict
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()},
        directory / MODEL_FILE,
    )
    torch.save(
        {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch},
        directory / STATE_FILE,
    )
    meta = {
        "arch": cfg.arch,
        "classes": list(CLASSES),
        "image_size": cfg.image_size,
        "epoch": epoch,
        "config": asdict(cfg),
        "metrics": metrics,
    }
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str))


# BatchNorm's running statistics stay float32: variances near BatchNorm's eps (1e-5) fall in float16's
# subnormal range, and they are a few thousand numbers.
_FLOAT32_KEYS = ("running_mean", "running_var")


def export_weights(src: Path, dst: Path) -> None:
    """A checkpoint's weights as the exported model stores them: float16 (half the bytes; ten exported
    ResNet18s are 220 MB instead of 450 MB), but BatchNorm's running statistics in float32. Loading casts
    them back to float32, so every prediction of the exported model, test probabilities included, comes
    from exactly these weights; they differ from the float32 ones by float16's rounding (relative 5e-4)."""
    state = load_file(src)
    half = {
        k: v.half() if v.is_floating_point() and not k.endswith(_FLOAT32_KEYS) else v
        for k, v in state.items()
    }
    with atomic.atomic_path(dst) as tmp:
        save_file(half, tmp)


def load_classifier(directory: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained classifier and its metadata from a checkpoint or exported model folder."""
    meta = json.loads((Path(directory) / META_FILE).read_text())
    model = build_classifier(meta["arch"], "none", len(meta["classes"]))
    model.load_state_dict(load_file(Path(directory) / MODEL_FILE))
    return model.to(device).eval(), meta


def input_size(cfg: ClassifierConfig) -> tuple[int, int]:
    """(height, width) the classifier sees: ``image_size`` tall, Kaggle's 3:2 aspect."""
    return cfg.image_size, round(cfg.image_size * 3 / 2)


def fit(
    cfg: ClassifierConfig,
    train: SplitArrays,
    val: SplitArrays,
    report: ReportFn,
    target_class: str = "multiple_diseases",
    worker: WorkerContext | None = None,
    resume_from: Path | None = None,
    amp_dtype: torch.dtype | None = None,
    synthetic: SyntheticUse | None = None,
) -> None:
    """Train for ``cfg.epochs``, reporting metrics and a checkpoint every epoch; resume from a checkpoint.
    ``synthetic``: how the train set's synthetic rows (``train.rows``) are drawn and weighted."""
    worker = worker or WorkerContext()
    seed_everything(cfg.seed + worker.rank)
    model = build_classifier(cfg.arch, cfg.weights, len(CLASSES))
    start = 0
    state = None
    if resume_from is not None:
        model.load_state_dict(load_file(resume_from / MODEL_FILE))
        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=True)
        start = state["epoch"] + 1
    model = model.to(worker.device)
    if worker.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = worker.prepare_model(model)

    sampler = EpochSampler(
        train.labels, cfg.seed, cfg.balanced_sampling, worker.rank, worker.world_size, train.rows, synthetic
    )
    per_rank_batch = max(1, cfg.batch_size // worker.world_size)
    weights = None
    if train.rows is not None and synthetic is not None and synthetic.loss_weight != 1.0:
        weights = np.where(train.rows.synthetic, synthetic.loss_weight, 1.0)
    loader = DataLoader(
        ArrayDataset(train.images, train.labels, train_transform(input_size(cfg)), weights),
        batch_size=per_rank_batch,
        sampler=sampler,
        pin_memory=worker.device.type == "cuda",
    )
    val_loader = DataLoader(
        ArrayDataset(val.images, val.labels, eval_transform()), batch_size=per_rank_batch * 2
    )
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, len(loader))
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    loss_fn = build_loss(cfg, train.labels)

    for epoch in range(start, cfg.epochs):
        # Augmentation draws restart from (seed, epoch, rank): a resumed run repeats the epochs it would
        # have run without the interruption, and no run depends on what its process trained before.
        seed_everything(epoch_seed(cfg.seed, epoch, worker.rank))
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        loss, seen = train_epoch(model, loader, loss_fn, opt, sched, worker.device, amp_dtype)
        seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "start_epoch": start + 1,  # > 1 after a resume: the run continued from a checkpoint
            "train/loss": loss,
            "train/images": seen * worker.world_size,
            "train/seconds": seconds,
        }
        with tempfile.TemporaryDirectory(prefix="leafgen-ckpt-") as tmp:
            checkpoint = None
            if worker.rank == 0:
                probs = predict_probs(_unwrap(model), val_loader, worker.device)
                metrics.update(
                    {
                        f"val/{k}": v
                        for k, v in classification_metrics(val.labels, probs, target_class).items()
                    }
                )
                checkpoint = Path(tmp)
                save_checkpoint(checkpoint, model, opt, sched, epoch, cfg, metrics)
            report(metrics, checkpoint)
