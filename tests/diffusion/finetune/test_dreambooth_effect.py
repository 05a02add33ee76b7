"""The fine-tuning methods' effect on the committed base model, measured as the issues ask on a small fast
setting.

A judge fine-tunes the committed backbone on procedural leaves (every class); the base model's samples are
judged once. DreamBooth (LoRA plus the new token) learns the minority class from procedural images, once
with prior preservation and once without. 64 samples per prompt and model, fixed seeds. What is asserted
is the effect, not a pinned figure: ``<disease-leaf> leaf`` samples land in the class at least 10 points
more often after DreamBooth; prior preservation keeps ``leaf`` samples out of it more than no prior does.
Textual inversion and one identifier per cluster do not reach the effect bars of issue 23 on this setting
(docs/finetune_methods.md records what they measured); tests of their wiring live in test_textual_inversion
and test_clusters.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.utils import save_image

from leafgen.classifier.training import SplitArrays, fit, load_classifier
from leafgen.config import ClassifierConfig, DreamBoothConfig
from leafgen.data.cache import ensure_cached
from leafgen.data.images import image_path
from leafgen.data.procedural import ProceduralSpec, make_dataset
from leafgen.diffusion.components import EMBEDDED_NAME
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.finetune.train import export_checkpoint, fit_dreambooth
from leafgen.diffusion.probes.evaluate import classifier_probs, generate
from leafgen.labels import CLASSES

BASE = os.environ.get("LEAFGEN_EFFECT_BASE", EMBEDDED_NAME)  # another folder measures another model
SAMPLES = int(os.environ.get("LEAFGEN_EFFECT_SAMPLES", "64"))
SIZE = (64, 96)
TARGET = CLASSES.index("multiple_diseases")
DB = DreamBoothConfig(
    num_class_images=32,
    lora_rank=16,
    learning_rate=1e-3,
    embedding_learning_rate=5e-2,
    max_train_steps=200,
    train_batch_size=4,
    validation_steps=1000,
    checkpointing_steps=1000,
    validation_prompts=("<disease-leaf> leaf",),
    num_validation_images=1,
)


def keep_last(folder: Path):
    """A ``report`` callable that keeps a copy of the latest checkpoint in ``folder`` (the trainers hand
    over temporary folders)."""

    def report(metrics, checkpoint=None):
        if checkpoint is not None:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(checkpoint, folder)

    return report


@pytest.fixture(scope="module")
def leaves(tmp_path_factory):
    """Procedural leaves with their own seed: images at the model's size and each one's file and label."""
    spec = ProceduralSpec(scale=0.3, size=192, seed=11, test_fraction=0.0)
    root = make_dataset(tmp_path_factory.mktemp("leaves"), spec, workers=2, progress=False)
    labels = np.array([CLASSES.index(c) for c in spec.labels("train")])
    paths = [image_path(root / "images", f"Train_{i}") for i in range(len(labels))]
    images = np.load(ensure_cached(paths, SIZE, root / "cache"))
    return images, labels, paths


@pytest.fixture(scope="module")
def judge(leaves, tmp_path_factory):
    images, labels, _ = leaves
    cfg = ClassifierConfig(weights="embedded", image_size=64, epochs=3, balanced_sampling=True, seed=1000)
    keep = tmp_path_factory.mktemp("judge") / "last"
    val = np.arange(len(labels)) % 5 == 0
    fit(cfg, SplitArrays(images[~val], labels[~val]), SplitArrays(images[val], labels[val]), keep_last(keep))
    return load_classifier(keep)[0]


def target_share(pipe, judge, prompt: str) -> float:
    images = generate(pipe, prompt, SAMPLES, 0, 32, 20, 3.0, SIZE)
    return float((classifier_probs(judge, images, SIZE).argmax(1) == TARGET).mean())


def fine_tune(
    cfg: DreamBoothConfig,
    instance: list[Path],
    classes: list[Path],
    out: Path,
    clusters: list[int] | None = None,
) -> str:
    kept = out / "checkpoint"
    classes = classes if cfg.with_prior else []
    fit_dreambooth(
        cfg, BASE, instance, classes, SIZE, keep_last(kept), out / "grids", instance_clusters=clusters
    )
    return str(export_checkpoint(cfg, BASE, kept, out / "model"))


@pytest.fixture(scope="module")
def base(judge):
    """The base model, and its shares of the instance and class prompts (what every fine-tune is
    measured against)."""
    pipe = load_generation_pipeline(EngineSettings(BASE), torch.device("cpu"))
    return pipe, {p: target_share(pipe, judge, p) for p in (DB.instance_prompt, DB.class_prompt)}


def instance_images(leaves) -> list[Path]:
    _, labels, paths = leaves
    return [p for p, label in zip(paths, labels) if label == TARGET]


@pytest.mark.slow
def test_dreambooth_teaches_the_class_and_prior_preservation_holds_the_class_prompt(
    leaves, judge, base, tmp_path
):
    instance = instance_images(leaves)
    device = torch.device("cpu")
    base_pipe, base_shares = base
    class_images = generate(base_pipe, DB.class_prompt, DB.num_class_images, 10_000, 32, 20, 3.0, SIZE)
    classes = [tmp_path / "class" / f"{i}.png" for i in range(len(class_images))]
    classes[0].parent.mkdir()
    for image, path in zip(class_images, classes):
        save_image(image, path)

    shares = {"base": base_shares}
    for name, weight in (("prior", 1.0), ("no prior", 0.0)):
        adapter = fine_tune(replace(DB, prior_loss_weight=weight), instance, classes, tmp_path / name)
        tuned = load_generation_pipeline(EngineSettings(BASE, adapter=adapter), device)
        shares[name] = {p: target_share(tuned, judge, p) for p in (DB.instance_prompt, DB.class_prompt)}
    print(shares)  # the figures, for docs and for whoever reads a failure

    assert shares["prior"][DB.instance_prompt] - shares["base"][DB.instance_prompt] >= 0.10
    assert shares["prior"][DB.class_prompt] < shares["no prior"][DB.class_prompt]
