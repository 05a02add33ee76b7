"""The classifier on Ray Train: DDP workers run the library loop, the driver keeps checkpoints.

Only wiring lives here: the cached image arrays are handed to workers by path (memory-mapped, so workers
on one node share them), ``ScalingConfig`` picks GPUs when the cluster has them, ``CheckpointConfig``
keeps the best checkpoints by a validation metric and ``FailureConfig`` restarts killed workers from the
last one. Rerunning with the same storage path and run name resumes an interrupted run (Ray Train V2).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchConfig, TorchTrainer, get_device, prepare_model
from torch.utils.tensorboard import SummaryWriter

from leafgen.classifier.training import SplitArrays, fit
from leafgen.config import PipelineConfig, from_dict
from leafgen.distributed.runtime import ensure_ray, quiet_train_report_log
from leafgen.worker import WorkerContext

HISTORY_FILE = "history.jsonl"


def read_history(storage: Path) -> list[dict[str, Any]]:
    """Rank 0's metrics per epoch, the latest report of each epoch (a resumed run repeats none, but a
    worker killed after reporting may report an epoch again)."""
    path = storage / HISTORY_FILE
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["epoch"]] = row
    return [rows[e] for e in sorted(rows)]


class EpochMetrics(UserCallback):
    """On the driver: appends rank 0's metrics to ``history.jsonl``, logs its scalars to TensorBoard
    and prints one line per epoch. (Ray's own ``Result`` keeps metrics of retained checkpoints only.)"""

    def __init__(self, storage: Path, epochs: int, target_class: str):
        self.storage, self.epochs, self.target_class = storage, epochs, target_class
        self.log_dir = storage / "tensorboard"
        self.writer: SummaryWriter | None = None

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None
    ) -> None:
        if not metrics:
            return
        self.writer = self.writer or SummaryWriter(str(self.log_dir))
        rank0 = metrics[0]
        with open(self.storage / HISTORY_FILE, "a") as fh:  # one short line per epoch: append is safe
            fh.write(json.dumps(rank0, default=float) + "\n")
        for key, value in rank0.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "start_epoch"):
                self.writer.add_scalar(key, value, rank0["epoch"])
        self.writer.flush()
        nan = float("nan")
        print(
            f"[classifier] epoch {rank0['epoch']}/{self.epochs}  loss {rank0['train/loss']:.3f}  "
            f"val acc {rank0.get('val/accuracy', nan):.3f}  "
            f"val {self.target_class} recall {rank0.get('val/target_recall', nan):.3f}  "
            f"val mean AUC {rank0.get('val/mean_auc', nan):.3f}",
            flush=True,
        )


def _worker_loop(config: dict[str, Any]) -> None:
    quiet_train_report_log()
    cfg = from_dict(PipelineConfig, config["cfg"])
    ctx = ray.train.get_context()
    device = get_device()
    arrays = {
        name: SplitArrays(np.load(config[f"{name}_images"], mmap_mode="r"), np.load(config[f"{name}_labels"]))
        for name in ("train", "val")
    }
    if device.type == "cpu":
        # Workers share the node's cores; oversubscribed intra-op threads slow every worker down.
        torch.set_num_threads(max(1, config["cpus_per_worker"]))

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        ckpt = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    latest = ray.train.get_checkpoint()
    with latest.as_directory() if latest else contextlib.nullcontext() as resume_dir:
        fit(
            cfg.classifier,
            arrays["train"],
            arrays["val"],
            report,
            target_class=cfg.data.target_class,
            worker=WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), device, prepare_model),
            resume_from=Path(resume_dir) if resume_dir else None,
            amp_dtype=torch.bfloat16 if device.type == "cuda" else None,
        )


def train_on_ray(
    cfg: PipelineConfig, arrays: dict[str, Path], storage: Path, name: str = "classifier"
) -> ray.train.Result:
    """Train with ``cfg.classifier.num_workers`` DDP workers on the .npy arrays named in ``arrays``."""
    resources = ensure_ray(cfg.ray)
    storage.mkdir(parents=True, exist_ok=True)
    use_gpu = resources.get("GPU", 0) >= 1
    workers = cfg.classifier.num_workers
    cpus_per_worker = 1 if use_gpu else max(1, int(resources.get("CPU", 1)) // workers)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "cfg": asdict(cfg),
            "cpus_per_worker": cpus_per_worker,
            **{k: str(Path(v).resolve()) for k, v in arrays.items()},
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker=None if use_gpu else {"CPU": cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage.resolve()),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.classifier.keep_checkpoints,
                checkpoint_score_attribute=cfg.classifier.checkpoint_metric,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=cfg.classifier.max_failures),
            callbacks=[EpochMetrics(storage, cfg.classifier.epochs, cfg.data.target_class)],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    return trainer.fit()
