"""A whole fine-tune (DreamBooth or textual inversion) on one rank, independent of Ray, and the export of
its final checkpoint.

``fit_dreambooth`` trains to the method's step count, reporting losses every few steps and, every
``checkpointing_steps``, a checkpoint (rank 0 writes it; every rank reports, as Ray Train requires). Every
``validation_steps`` rank 0 draws the validation grid (fixed prompts and seeds; a prompt naming the
identifier once per cluster token) into ``validation_dir``.
``export_checkpoint`` rebuilds the models on the driver from the base model plus the checkpoint's trained
tensors and writes the DreamBooth output, so no worker has to write outside its checkpoints.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from leafgen.config import DreamBoothConfig
from leafgen.diffusion.finetune.data import ImageSet
from leafgen.diffusion.finetune.dreambooth import prepare_models
from leafgen.diffusion.finetune.identifier import expand_prompts
from leafgen.diffusion.finetune.loop import WEIGHTS_FILE, DreamBoothTrainer, apply_trainable_state
from leafgen.diffusion.finetune.output import save_dreambooth, validation_grid
from leafgen.report.grids import save_grid
from leafgen.worker import ReportFn, WorkerContext

LOG_EVERY = 10


def grid_path(validation_dir: Path, step: int) -> Path:
    return validation_dir / f"step_{step:06d}.png"


def fit_dreambooth(
    cfg: DreamBoothConfig,
    base_model: str,
    instance_images: Sequence[Path],
    class_images: Sequence[Path],
    size: tuple[int, int],
    report: ReportFn,
    validation_dir: Path,
    worker: WorkerContext | None = None,
    revision: str | None = None,
    resume_from: Path | None = None,
    instance_clusters: Sequence[int] | None = None,
) -> None:
    """``cfg.clusters`` is the number of clusters (resolved), ``instance_clusters`` each image's cluster."""
    worker = worker or WorkerContext()
    torch.manual_seed(cfg.seed)  # LoRA initialisation: the same on every rank
    models = prepare_models(cfg, base_model, revision)
    height, width = size
    instance = ImageSet(instance_images, height, width, cfg.crop)
    classes = ImageSet(class_images, height, width, cfg.crop) if cfg.with_prior else None
    trainer = DreamBoothTrainer(
        cfg,
        models,
        instance,
        classes,
        worker.device,
        worker.rank,
        worker.prepare_model,
        instance_clusters,
    )
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
    start = trainer.step
    if worker.rank == 0 and start == 0:
        _validate(trainer, cfg, size, validation_dir, 0)  # the "before" row of the grids

    def on_step(metrics: dict[str, Any]) -> None:
        step = int(metrics["step"])
        last = step == cfg.train_steps
        checkpoint = step % cfg.checkpointing_steps == 0 or last
        validate = step % cfg.validation_steps == 0 or last
        if not (checkpoint or validate or step % LOG_EVERY == 0):
            return
        metrics = {**metrics, "start_step": start + 1}  # > 1 after a resume: continued from a checkpoint
        if validate and worker.rank == 0:
            metrics["validation_grid"] = str(_validate(trainer, cfg, size, validation_dir, step))
        with tempfile.TemporaryDirectory(prefix="leafgen-db-ckpt-") as tmp:
            folder = Path(tmp) if checkpoint and worker.rank == 0 else None
            if folder is not None:
                trainer.save_checkpoint(folder)
            report(metrics, folder)

    trainer.train(cfg.train_steps, on_step)


def _validate(
    trainer: DreamBoothTrainer, cfg: DreamBoothConfig, size: tuple[int, int], folder: Path, step: int
) -> Path:
    prompts = expand_prompts(cfg.validation_prompts, cfg.identifier_token, trainer.models.tokens)
    grid = validation_grid(trainer.models, tuple(prompts), cfg.num_validation_images, size, step)
    return save_grid(grid, grid_path(folder, step))


def export_checkpoint(
    cfg: DreamBoothConfig,
    base_model: str,
    checkpoint: Path,
    out: Path,
    revision: str | None = None,
    extras: Sequence[Path] = (),
) -> Path:
    """The output folder of a training checkpoint (LoRA + embeddings, a pipeline, or embeddings alone),
    with copies of ``extras``."""
    models = prepare_models(cfg, base_model, revision)
    apply_trainable_state(models, load_file(str(checkpoint / WEIGHTS_FILE)))
    return save_dreambooth(models, cfg, base_model, out, extras)
