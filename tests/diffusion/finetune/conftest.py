"""Fine-tuning fixtures: instance and class images from the tiny procedural dataset, and a trainer on the
tiny random-weight pipeline."""

from __future__ import annotations

import csv

import pytest
import torch

from leafgen.diffusion.finetune.data import ImageSet
from leafgen.diffusion.finetune.dreambooth import prepare_models
from leafgen.diffusion.finetune.loop import DreamBoothTrainer


@pytest.fixture(scope="module")
def image_sets(tiny_dataset):
    """Four multiple_diseases (instance) and four healthy (class) images."""
    by_class: dict[str, list] = {}
    with open(tiny_dataset / "train.csv") as fh:
        for row in csv.DictReader(fh):
            label = next(c for c in ("healthy", "multiple_diseases", "rust", "scab") if row[c] == "1")
            by_class.setdefault(label, []).append(tiny_dataset / "images" / f"{row['image_id']}.jpg")
    return by_class["multiple_diseases"][:4], by_class["healthy"][:4]


def trainer(cfg, model_dir, image_sets, crop="center", instance_clusters=None):
    instance, classes = image_sets
    models = prepare_models(cfg, str(model_dir))
    return DreamBoothTrainer(
        cfg,
        models,
        ImageSet(instance, 16, 24, crop),
        ImageSet(classes, 16, 24, crop) if cfg.prior_loss_weight else None,
        torch.device("cpu"),
        instance_clusters=instance_clusters,
    )


def resumed_pair(cfg, model_dir, image_sets, folder, steps):
    """Two trainers: one trained ``steps`` steps and checkpointed to ``folder`` then stepped once more, one
    resumed from that checkpoint, whose next step must match. Returns (straight, resumed, expected loss)."""
    straight = trainer(cfg, model_dir, image_sets)
    straight.train(steps)
    straight.save_checkpoint(folder)
    expected = straight.optimizer_step()["loss"]
    resumed = trainer(cfg, model_dir, image_sets)
    resumed.load_checkpoint(folder)
    return straight, resumed, expected
