"""The classifier on Ray Train: DDP workers run the library loop, the driver keeps checkpoints.

Only wiring lives here: the cached image arrays are handed to workers by path (memory-mapped, so workers on
one node share them; pushed to the run's bucket and pulled per node when ``run_dir`` is a URI),
``ScalingConfig`` picks GPUs when the cluster has them, ``CheckpointConfig`` keeps the best checkpoints by a
validation metric and ``FailureConfig`` restarts killed workers from the last one. Rerunning with the same
storage path and run name resumes an interrupted run (Ray Train V2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
from ray.train import CheckpointConfig, UserCallback
from torch.utils.tensorboard import SummaryWriter

from leafgen.classifier.training import SplitArrays, fit
from leafgen.config import PipelineConfig
from leafgen.distributed.torch_trainer import (
    RankZeroLog,
    build_trainer,
    fit_trainer,
    read_rank_zero_history,
    reporter,
    worker_session,
)
from leafgen.run_storage import RunStorage


def read_history(storage: Path) -> list[dict[str, Any]]:
    """Rank 0's metrics per epoch."""
    return read_rank_zero_history(storage, "epoch")


class EpochMetrics(RankZeroLog):
    """Logs each epoch's scalars to TensorBoard and prints one line per epoch."""

    def __init__(self, storage: Path, epochs: int, target_class: str):
        super().__init__(storage)
        self.epochs, self.target_class = epochs, target_class

    def log(self, row: dict[str, Any], writer: SummaryWriter) -> None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "start_epoch"):
                writer.add_scalar(key, value, row["epoch"])
        nan = float("nan")
        print(
            f"[classifier] epoch {row['epoch']}/{self.epochs}  loss {row['train/loss']:.3f}  "
            f"val acc {row.get('val/accuracy', nan):.3f}  "
            f"val {self.target_class} recall {row.get('val/target_recall', nan):.3f}  "
            f"val mean AUC {row.get('val/mean_auc', nan):.3f}",
            flush=True,
        )


def _worker_loop(config: dict[str, Any]) -> None:
    with worker_session(config) as (cfg, worker, storage, resume_from):
        arrays = {
            name: SplitArrays(
                np.load(storage.localize(config[f"{name}_images"]), mmap_mode="r"),
                np.load(storage.localize(config[f"{name}_labels"])),
            )
            for name in ("train", "val")
        }
        fit(
            cfg.classifier,
            arrays["train"],
            arrays["val"],
            reporter(storage),
            target_class=cfg.data.target_class,
            worker=worker,
            resume_from=resume_from,
            amp_dtype=torch.bfloat16 if worker.device.type == "cuda" else None,
        )


def train_on_ray(
    cfg: PipelineConfig,
    arrays: dict[str, Path],
    storage: Path,
    name: str = "classifier",
    callbacks: Sequence[UserCallback] = (),
    run: RunStorage | None = None,
) -> ray.train.Result:
    """Train with ``cfg.classifier.num_workers`` DDP workers on the .npy arrays named in ``arrays``;
    ``callbacks`` see every report too (a Tune trial passes ``TuneReportCallback``). ``run``: the run's
    storage when the caller has it open (a stage's ``ctx.run.storage``)."""
    c = cfg.classifier
    run = run or RunStorage.open(cfg.run_dir)
    for path in arrays.values():
        run.push(Path(path))  # workers on other nodes read the arrays from the run's storage
    trainer = build_trainer(
        _worker_loop,
        cfg,
        {k: str(Path(v).resolve()) for k, v in arrays.items()},
        c.num_workers,
        storage,
        name,
        CheckpointConfig(
            num_to_keep=c.keep_checkpoints,
            checkpoint_score_attribute=c.checkpoint_metric,
            checkpoint_score_order="max",
        ),
        c.max_failures,
        [EpochMetrics(storage, c.epochs, cfg.data.target_class), *callbacks],
        run,
    )
    return fit_trainer(trainer)
