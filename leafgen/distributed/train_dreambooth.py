"""DreamBooth on Ray Train: DDP workers run the library loop; the driver logs, keeps checkpoints, exports.

Wiring only: ``ScalingConfig`` over ``dreambooth.num_workers`` (a GPU each when the cluster has them),
``CheckpointConfig`` keeping the latest ``keep_checkpoints``, ``FailureConfig`` restarting a killed worker
group from the last checkpoint, and a driver callback that appends rank 0's losses to ``history.jsonl`` and
logs them and the validation grids to TensorBoard. Rerunning with the same storage path resumes.
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
from PIL import Image
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

from leafgen.config import PipelineConfig, from_dict
from leafgen.diffusion.dreambooth_train import fit_dreambooth
from leafgen.distributed.runtime import ensure_ray, quiet_train_report_log
from leafgen.worker import WorkerContext

HISTORY_FILE = "history.jsonl"


class StepMetrics(UserCallback):
    """On the driver: rank 0's losses to ``history.jsonl`` and TensorBoard, validation grids as images."""

    def __init__(self, storage: Path, steps: int):
        self.storage, self.steps = storage, steps
        self.writer: SummaryWriter | None = None

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None
    ) -> None:
        if not metrics:
            return
        self.writer = self.writer or SummaryWriter(str(self.storage / "tensorboard"))
        row, step = metrics[0], int(metrics[0]["step"])
        with open(self.storage / HISTORY_FILE, "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
        for key in ("loss", "loss/instance", "loss/prior", "lr"):
            self.writer.add_scalar(f"dreambooth/{key}", row[key], step)
        if "validation_grid" in row and Path(row["validation_grid"]).is_file():
            grid = np.asarray(Image.open(row["validation_grid"]).convert("RGB"))
            self.writer.add_image("dreambooth/validation", grid, step, dataformats="HWC")
        self.writer.flush()
        print(
            f"[dreambooth] step {step}/{self.steps}  loss {row['loss']:.4f}  instance "
            f"{row['loss/instance']:.4f}  prior {row['loss/prior']:.4f}",
            flush=True,
        )


def read_history(storage: Path) -> list[dict[str, Any]]:
    """The latest report of each step (a worker killed after reporting may report a step again)."""
    path = storage / HISTORY_FILE
    rows = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def _worker_loop(config: dict[str, Any]) -> None:
    quiet_train_report_log()
    cfg = from_dict(PipelineConfig, config["cfg"])
    ctx = ray.train.get_context()
    device = get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, config["cpus_per_worker"]))

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        ckpt = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    latest = ray.train.get_checkpoint()
    with latest.as_directory() if latest else contextlib.nullcontext() as resume_dir:
        fit_dreambooth(
            cfg.dreambooth,
            config["base_model"],
            [Path(p) for p in config["instance_images"]],
            [Path(p) for p in config["class_images"]],
            tuple(config["size"]),
            report,
            Path(config["validation_dir"]),
            WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), device, prepare_model),
            revision=cfg.base_model.revision,
            resume_from=Path(resume_dir) if resume_dir else None,
        )


def train_dreambooth_on_ray(
    cfg: PipelineConfig,
    base_model: str,
    instance_images: list[Path],
    class_images: list[Path],
    storage: Path,
    validation_dir: Path,
    name: str = "dreambooth",
) -> ray.train.Result:
    """Fine-tune with ``cfg.dreambooth.num_workers`` DDP workers; returns Ray's result (latest checkpoint)."""
    db = cfg.dreambooth
    resources = ensure_ray(cfg.ray)
    storage.mkdir(parents=True, exist_ok=True)
    use_gpu = resources.get("GPU", 0) >= 1
    cpus_per_worker = 1 if use_gpu else max(1, int(resources.get("CPU", 1)) // db.num_workers)
    size = (cfg.base_model.resolution, cfg.base_model.width or cfg.base_model.resolution)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "cfg": asdict(cfg),
            "base_model": base_model,
            "instance_images": [str(p) for p in instance_images],
            "class_images": [str(p) for p in class_images],
            "size": list(size),
            "validation_dir": str(validation_dir.resolve()),
            "cpus_per_worker": cpus_per_worker,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=db.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=None if use_gpu else {"CPU": cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage.resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=db.keep_checkpoints),
            failure_config=FailureConfig(max_failures=db.max_failures),
            callbacks=[StepMetrics(storage, db.max_train_steps)],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    return trainer.fit()
