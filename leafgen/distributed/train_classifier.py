"""Classifier trainings on Ray Train: DDP workers run the library's group of runs, the driver logs them.

Only wiring lives here. A stage's trainings (:class:`~leafgen.classifier.runs.RunSpec`, one per arm and
seed) go to one ``TorchTrainer`` fit, so the worker group starts once per stage. The cached image arrays
are handed to workers by path (memory-mapped, so workers on one node share them; pushed to the run's
bucket and pulled per node when ``run_dir`` is a URI). ``ScalingConfig`` picks GPUs when the cluster has
them; Ray keeps the latest checkpoint, from which ``FailureConfig`` restarts killed workers (they skip the
finished runs and resume the interrupted one); each run's best epoch is kept by rank 0 beside the run.
Rerunning an interrupted fit (same storage path and runs) resumes it (Ray Train V2).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from ray.train import CheckpointConfig, UserCallback
from torch.utils.tensorboard import SummaryWriter

from leafgen.classifier.export import LOG_DIR
from leafgen.classifier.runs import BEST_DIR, RunSpec, marker_history, train_runs
from leafgen.config import PipelineConfig, fingerprint
from leafgen.distributed.torch_trainer import (
    RankZeroLog,
    build_trainer,
    fit_trainer,
    prune_checkpoints,
    read_rank_zero_history,
    reporter,
    worker_session,
)
from leafgen.run_storage import RunStorage


def read_history(storage: Path) -> list[dict[str, Any]]:
    """Rank 0's metrics per epoch of the run whose log folder is ``storage`` (``<out>/ray``): the
    driver's log, with any epoch it missed (killed between the worker's report and its own write) taken
    from the finished run's done marker."""
    rows = {row["epoch"]: row for row in marker_history(storage.parent)}
    rows.update({row["epoch"]: row for row in read_rank_zero_history(storage, "epoch")})
    return [rows[k] for k in sorted(rows)]


class EpochMetrics(RankZeroLog):
    """Routes each epoch's report to its run's history and TensorBoard logs; prints one line per epoch."""

    def __init__(self, specs: Sequence[RunSpec]):
        super().__init__(Path(specs[0].out) / LOG_DIR)
        self.specs = {s.run_id: s for s in specs}

    def log_dir(self, row: dict[str, Any]) -> Path:
        return Path(self.specs[row["run"]].out) / LOG_DIR

    def log(self, row: dict[str, Any], writer: SummaryWriter) -> None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "start_epoch"):
                writer.add_scalar(key, value, row["epoch"])
        spec = self.specs[row["run"]]
        nan = float("nan")
        name = f" {spec.run_id}" if len(self.specs) > 1 else ""
        epochs = spec.classifier["epochs"]
        print(
            f"[classifier{name}] epoch {row['epoch']}/{epochs}  loss {row['train/loss']:.3f}  "
            f"val acc {row.get('val/accuracy', nan):.3f}  "
            f"val {spec.target_class} recall {row.get('val/target_recall', nan):.3f}  "
            f"val mean AUC {row.get('val/mean_auc', nan):.3f}",
            flush=True,
        )


def _worker_loop(config: dict[str, Any]) -> None:
    with worker_session(config) as (cfg, worker, storage, resume_from):
        train_runs(
            [RunSpec(**spec) for spec in config["specs"]],
            reporter(storage),
            worker=worker,
            resume_from=resume_from,
            amp_dtype=torch.bfloat16 if worker.device.type == "cuda" else None,
            localize=storage.localize,
            persist=storage.push,
        )


def train_runs_on_ray(
    cfg: PipelineConfig,
    specs: Sequence[RunSpec],
    storage: Path,
    callbacks: Sequence[UserCallback] = (),
    run: RunStorage | None = None,
) -> None:
    """Train every unfinished run of ``specs`` in one fit with ``cfg.classifier.num_workers`` DDP workers
    (``cfg.ray`` and ``classifier.max_failures`` apply to the whole group); ``callbacks`` see every report
    (a Tune trial passes ``TuneReportCallback``). ``storage``: where Ray keeps the group's checkpoints.
    ``run``: the run's storage when the caller has it open (a stage's ``ctx.run.storage``)."""
    pending = [s for s in specs if not s.done()]
    if not pending:
        return
    run = run or RunStorage.open(cfg.run_dir)
    for spec in pending:
        for path in spec.arrays.values():
            run.push(Path(path))  # workers on other nodes read the arrays from the run's storage
    # The fit's name follows its runs: the same runs resume an interrupted fit, other runs start anew.
    name = "fit-" + fingerprint([s.run_id for s in pending])
    trainer = build_trainer(
        _worker_loop,
        cfg,
        {"specs": [asdict(s) for s in pending]},
        cfg.classifier.num_workers,
        storage,
        name,
        CheckpointConfig(num_to_keep=1),
        cfg.classifier.max_failures,
        [EpochMetrics(pending), *callbacks],
        run,
    )
    fit_trainer(trainer)
    for spec in pending:
        run.pull(Path(spec.out))  # what workers on other nodes wrote: the best epochs, the done markers


def prune_training(storage: Path, outs: Sequence[Path], run: RunStorage) -> None:
    """Once runs are exported: delete the fit's Ray checkpoints at ``storage`` and each run's best-epoch
    copies (``out/best``), here and where the run lives; the exported models stay. Optimiser state and
    float32 copies are most of a run directory's bytes (``classifier.keep_checkpoints_after_export``
    keeps them)."""
    prune_checkpoints(storage, run)
    for out in outs:
        shutil.rmtree(Path(out) / BEST_DIR, ignore_errors=True)
        run.delete(Path(out) / BEST_DIR)
