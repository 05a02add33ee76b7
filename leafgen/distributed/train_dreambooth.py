"""DreamBooth and textual inversion on Ray Train: DDP workers run the library loop; the driver logs,
keeps checkpoints, exports.

Wiring only: ``ScalingConfig`` over ``dreambooth.num_workers`` (a GPU each when the cluster has them),
``CheckpointConfig`` keeping the latest ``keep_checkpoints``, ``FailureConfig`` restarting a killed worker
group from the last checkpoint, and a driver callback that appends rank 0's losses to ``history.jsonl`` and
logs them and the validation grids to TensorBoard. Rerunning with the same storage path resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import ray.train
from PIL import Image
from ray.train import (
    CheckpointConfig,
)
from torch.utils.tensorboard import SummaryWriter

from leafgen.config import PipelineConfig
from leafgen.diffusion.finetune.train import fit_dreambooth
from leafgen.distributed.torch_trainer import (
    RankZeroLog,
    build_trainer,
    fit_trainer,
    read_rank_zero_history,
    reporter,
    worker_session,
)
from leafgen.run_storage import RunStorage


class StepMetrics(RankZeroLog):
    """Logs losses and learning rate per reported step, and validation grids as images."""

    def __init__(self, storage: Path, steps: int, run: RunStorage):
        super().__init__(storage)
        self.steps, self.run = steps, run

    def log(self, row: dict[str, Any], writer: SummaryWriter) -> None:
        step = int(row["step"])
        for key in ("loss", "loss/instance", "loss/prior", "lr"):
            writer.add_scalar(f"dreambooth/{key}", row[key], step)
        # Rank 0 wrote (and, on object storage, pushed) the grid on its own node.
        grid_file = self.run.localize(row["validation_grid"]) if "validation_grid" in row else None
        if grid_file is not None and grid_file.is_file():
            grid = np.asarray(Image.open(grid_file).convert("RGB"))
            writer.add_image("dreambooth/validation", grid, step, dataformats="HWC")
        print(
            f"[dreambooth] step {step}/{self.steps}  loss {row['loss']:.4f}  instance "
            f"{row['loss/instance']:.4f}  prior {row['loss/prior']:.4f}",
            flush=True,
        )


def read_history(storage: Path) -> list[dict[str, Any]]:
    """Rank 0's reports per step."""
    return read_rank_zero_history(storage, "step")


def _worker_loop(config: dict[str, Any]) -> None:
    with worker_session(config) as (cfg, worker, storage, resume_from):
        fit_dreambooth(
            cfg.dreambooth,
            str(storage.localize(config["base_model"])),
            [storage.localize(p) for p in config["instance_images"]],
            [storage.localize(p) for p in config["class_images"]],
            tuple(config["size"]),
            reporter(storage),
            storage.localize(config["validation_dir"]),
            worker,
            revision=cfg.base_model.revision,
            resume_from=resume_from,
            instance_clusters=config["instance_clusters"],
        )


def train_dreambooth_on_ray(
    cfg: PipelineConfig,
    base_model: str,
    instance_images: list[Path],
    class_images: list[Path],
    storage: Path,
    validation_dir: Path,
    name: str = "dreambooth",
    run: RunStorage | None = None,
    instance_clusters: list[int] | None = None,
) -> ray.train.Result:
    """Fine-tune with ``cfg.dreambooth.num_workers`` DDP workers; returns Ray's result (latest checkpoint).
    ``run``: the run's storage when the caller has it open (a stage's ``ctx.run.storage``);
    ``instance_clusters``: each instance image's cluster when ``cfg.dreambooth.clusters`` (resolved) > 1."""
    db, b = cfg.dreambooth, cfg.base_model
    run = run or RunStorage.open(cfg.run_dir)
    trainer = build_trainer(
        _worker_loop,
        cfg,
        {
            "base_model": base_model,
            "instance_images": [str(p) for p in instance_images],
            "class_images": [str(p) for p in class_images],
            "size": [b.resolution, b.width or b.resolution],
            "validation_dir": str(validation_dir.resolve()),
            "instance_clusters": instance_clusters,
        },
        db.num_workers,
        storage,
        name,
        CheckpointConfig(num_to_keep=db.keep_checkpoints),
        db.max_failures,
        [StepMetrics(storage, db.train_steps, run)],
        run,
    )
    result = fit_trainer(trainer)
    run.pull(validation_dir)
    return result
