"""DreamBooth's and textual inversion's effect on the committed base model, measured as issues 21 and 23
ask, in one process on the demo's data.

The leaves are the demo's (configs/demo.yaml ``data``: its procedural seed and split); the fine-tunes learn
from its train split's multiple_diseases leaves with the demo's ``dreambooth`` section. Three judges
measure them, each trained on the train split with the demo's judge recipe (``eval.judge``: class-balanced
sampling, 8 epochs, the epoch of best validation accuracy) and seeds 1000-1002: one judge is not enough,
its seed alone moves a fine-tune's measured change by up to 17 points (benchmarks/finetune_judges.py,
docs/finetune_methods.md), so each share here is the panel's mean. 64 samples per prompt and model, fixed
seeds. Asserted is the effect, not a pinned figure: ``<disease-leaf> leaf`` samples land in the class at
least 10 points more often after DreamBooth LoRA and after textual inversion than from the base model,
and DreamBooth's prior keeps ``leaf`` samples out of the class more than no prior does.

On procedural leaves of another seed, five judges read textual inversion's change as +9.7 points on
their mean, just short of the bar, and the prior's direction held under three of them (figures in
docs/finetune_methods.md). One identifier per cluster does not reach issue 23's bar (the same page); its
wiring is tested in test_clusters, textual inversion's in test_textual_inversion.
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

from leafgen.classifier.stage import judge_config
from leafgen.classifier.training import SplitArrays, fit, load_classifier
from leafgen.config import DreamBoothConfig, load_config
from leafgen.data.cache import ensure_cached
from leafgen.data.images import image_path
from leafgen.data.procedural import ProceduralSpec, make_dataset
from leafgen.data.split import stratified_split
from leafgen.diffusion.components import EMBEDDED_NAME
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.finetune.train import export_checkpoint, fit_dreambooth
from leafgen.diffusion.probes.evaluate import classifier_probs, generate
from leafgen.labels import CLASSES

BASE = os.environ.get("LEAFGEN_EFFECT_BASE", EMBEDDED_NAME)  # another folder measures another model
SAMPLES = int(os.environ.get("LEAFGEN_EFFECT_SAMPLES", "64"))
SIZE = (64, 96)
TARGET = CLASSES.index("multiple_diseases")
DEMO = load_config("configs/demo.yaml")
JUDGE_SEEDS = (1000, 1001, 1002)
# The demo's fine-tune, with validation grids and intermediate checkpoints left out: only the result counts.
DB = replace(
    DEMO.dreambooth,
    validation_steps=1000,
    checkpointing_steps=1000,
    validation_prompts=("<disease-leaf> leaf",),
    num_validation_images=1,
)
PROMPTS = (DB.instance_prompt, DB.class_prompt)


def keep_best(folder: Path, metric: str | None = None):
    """A ``report`` callable that keeps a copy of the checkpoint with the highest ``metric`` so far in
    ``folder`` (None: the latest; the trainers hand over temporary folders)."""
    best = -float("inf")

    def report(metrics, checkpoint=None):
        nonlocal best
        if checkpoint is not None and (metric is None or metrics[metric] > best):
            best = metrics[metric] if metric else best
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(checkpoint, folder)

    return report


@pytest.fixture(scope="module")
def leaves(tmp_path_factory):
    """The demo's leaves at the model's size: images, labels, files and each one's split."""
    demo = DEMO.data.procedural
    spec = ProceduralSpec(scale=demo.scale, size=demo.size, seed=demo.seed, test_fraction=0.0)
    root = make_dataset(tmp_path_factory.mktemp("leaves"), spec, workers=2, progress=False)
    labels = np.array([CLASSES.index(c) for c in spec.labels("train")])
    ids = [f"Train_{i}" for i in range(len(labels))]
    part = stratified_split(ids, labels, tuple(DEMO.data.split), DEMO.data.split_seed)
    paths = [image_path(root / "images", i) for i in ids]
    images = np.load(ensure_cached(paths, SIZE, root / "cache"))
    return images, labels, paths, np.array([part[i] for i in ids])


@pytest.fixture(scope="module")
def judges(leaves, tmp_path_factory):
    images, labels, _, split = leaves
    train, val = split == "train", split == "val"
    fitted, held_out = SplitArrays(images[train], labels[train]), SplitArrays(images[val], labels[val])
    panel = []
    for seed in JUDGE_SEEDS:
        cfg = replace(judge_config(DEMO).classifier, seed=seed)
        keep = tmp_path_factory.mktemp(f"judge{seed}") / "best"
        fit(cfg, fitted, held_out, keep_best(keep, cfg.checkpoint_metric))
        panel.append(load_classifier(keep)[0])
    return panel


def target_shares(pipe, judges) -> dict[str, float]:
    """Per prompt, the panel's mean share of ``SAMPLES`` samples judged the target class."""
    shares = {}
    for prompt in PROMPTS:
        images = generate(pipe, prompt, SAMPLES, 0, 32, 20, 3.0, SIZE)
        calls = [classifier_probs(judge, images, SIZE).argmax(1) == TARGET for judge in judges]
        shares[prompt] = float(np.mean(calls))
    return shares


def fine_tune(cfg: DreamBoothConfig, leaves, classes: list[Path], out: Path) -> str:
    _, labels, paths, split = leaves
    instance = [p for p, label, part in zip(paths, labels, split) if label == TARGET and part == "train"]
    kept, classes = out / "checkpoint", classes if cfg.with_prior else []
    fit_dreambooth(cfg, BASE, instance, classes, SIZE, keep_best(kept), out / "grids")
    return str(export_checkpoint(cfg, BASE, kept, out / "model"))


@pytest.fixture(scope="module")
def base(judges):
    """The base model, and the panel's shares of its instance and class prompts (what every fine-tune is
    measured against)."""
    pipe = load_generation_pipeline(EngineSettings(BASE), torch.device("cpu"))
    return pipe, target_shares(pipe, judges)


def tuned_shares(cfg: DreamBoothConfig, leaves, judges, classes: list[Path], out: Path) -> dict[str, float]:
    adapter = fine_tune(cfg, leaves, classes, out)
    return target_shares(
        load_generation_pipeline(EngineSettings(BASE, adapter=adapter), torch.device("cpu")), judges
    )


@pytest.mark.slow
def test_dreambooth_teaches_the_class_and_prior_preservation_holds_the_class_prompt(
    leaves, judges, base, tmp_path
):
    class_images = generate(base[0], DB.class_prompt, DB.num_class_images, 10_000, 32, 20, 3.0, SIZE)
    classes = [tmp_path / "class" / f"{i}.png" for i in range(len(class_images))]
    classes[0].parent.mkdir()
    for image, path in zip(class_images, classes):
        save_image(image, path)

    shares = {"base": base[1]}
    for name, weight in (("prior", DB.prior_loss_weight), ("no prior", 0.0)):
        shares[name] = tuned_shares(
            replace(DB, prior_loss_weight=weight), leaves, judges, classes, tmp_path / name
        )
    print(shares)  # the figures, for docs and for whoever reads a failure

    assert DB.prior_loss_weight > 0
    assert shares["prior"][DB.instance_prompt] - shares["base"][DB.instance_prompt] >= 0.10
    assert shares["prior"][DB.class_prompt] < shares["no prior"][DB.class_prompt]


@pytest.mark.slow
def test_textual_inversion_teaches_the_class(leaves, judges, base, tmp_path):
    cfg = replace(DB, method="textual_inversion")  # its own learning rate and steps; no prior applies
    after = tuned_shares(cfg, leaves, judges, [], tmp_path)
    print({"base": base[1], "textual inversion": after})
    assert after[DB.instance_prompt] - base[1][DB.instance_prompt] >= 0.10  # issue 23's bar
