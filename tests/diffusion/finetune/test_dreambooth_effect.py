"""DreamBooth's, textual inversion's and one-identifier-per-cluster's effect on the committed base model,
measured as issues 21 and 23 ask, in one process on the demo's data.

The leaves are the demo's (configs/demo.yaml ``data``: its procedural seed and split); the fine-tunes learn
from its train split's multiple_diseases leaves with the demo's ``dreambooth`` section. Three judges
measure them, each trained on the train split with the demo's judge recipe (``eval.judge``: class-balanced
sampling, 8 epochs, the epoch of best validation accuracy) and seeds 1000-1002: one judge is not enough,
its seed alone moves a fine-tune's measured change by up to 17 points (benchmarks/finetune_judges.py,
docs/finetune_methods.md), so each share here is the panel's mean. 64 samples per prompt and model, fixed
seeds. Asserted is the effect, not a pinned figure: ``<disease-leaf> leaf`` samples land in the class at
least 10 points more often after DreamBooth LoRA and after textual inversion than from the base model,
and DreamBooth's prior keeps ``leaf`` samples out of the class more than no prior does.

One identifier per cluster is measured on 32 leaves of the class painted in two kinds (leaf_painter's
``KINDS``: rust-dominant and scab-dominant), clustered as the pipeline clusters them: ``clusters: 2``,
k-means on the gating classifier's features (the demo's ``classifier`` section, trained here on the same
split). The judges, not that classifier, then say which cluster each token's samples resemble: the nearer
cluster centroid in each judge's features.

On procedural leaves of another seed, five judges read textual inversion's change as +9.7 points on
their mean, just short of the bar, and the prior's direction held under three of them (figures in
docs/finetune_methods.md). Wiring is tested in test_clusters and test_textual_inversion.
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
from leafgen.data.leaf_painter import paint_kinds
from leafgen.data.procedural import ProceduralSpec, make_dataset
from leafgen.data.split import stratified_split
from leafgen.diffusion.components import EMBEDDED_NAME
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.finetune.clusters import cluster_images, image_features, nearest_cluster
from leafgen.diffusion.finetune.identifier import identifier_prompts
from leafgen.diffusion.finetune.train import export_checkpoint, fit_dreambooth
from leafgen.diffusion.probes.evaluate import classifier_features, classifier_probs, generate
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
# One identifier per cluster: two-token textual inversion at 1200 steps, the candidate chosen on judges
# 1005-1007, none of which measures here (benchmarks/cluster_tokens.py; 400 and a shared LoRA scored lower).
CLUSTERED = replace(
    DB,
    method="textual_inversion",
    textual_inversion_steps=1200,
    clusters=2,
    validation_steps=10**6,
    checkpointing_steps=10**6,
)


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


@pytest.fixture(scope="module")
def gate(leaves, tmp_path_factory):
    """The demo's gating classifier (its ``classifier`` section, seed included), trained on the train split
    and kept at its best validation epoch: the features the pipeline clusters the class's images in."""
    images, labels, _, split = leaves
    train, val = split == "train", split == "val"
    keep = tmp_path_factory.mktemp("gate") / "best"
    cfg = DEMO.classifier
    fit(
        cfg,
        SplitArrays(images[train], labels[train]),
        SplitArrays(images[val], labels[val]),
        keep_best(keep, cfg.checkpoint_metric),
    )
    return load_classifier(keep)[0]


def draw(pipe, prompts=PROMPTS) -> dict[str, torch.Tensor]:
    """``SAMPLES`` samples of each prompt, seeds 0.. (the same seeds for every model)."""
    return {prompt: generate(pipe, prompt, SAMPLES, 0, 32, 20, 3.0, SIZE) for prompt in prompts}


def target_shares(samples: dict[str, torch.Tensor], judges) -> dict[str, float]:
    """Per prompt, the panel's mean share of its samples judged the target class."""
    shares = {}
    for prompt, images in samples.items():
        calls = [classifier_probs(judge, images, SIZE).argmax(1) == TARGET for judge in judges]
        shares[prompt] = float(np.mean(calls))
    return shares


def nearer_own_cluster(judges, paths, clusters, samples: list[torch.Tensor]) -> list[float]:
    """For each batch in ``samples`` (batch c drawn for cluster c), the panel's mean share of its images
    nearer cluster c's centroid than the other's in the judge's features."""
    shares = np.zeros((len(judges), len(samples)))
    for j, judge in enumerate(judges):
        features = image_features(paths, judge, SIZE)
        for c, images in enumerate(samples):
            nearest = nearest_cluster(features, clusters, classifier_features(judge, images, SIZE).numpy())
            shares[j, c] = (nearest == c).mean()
    return shares.mean(0).tolist()


def fine_tune(cfg: DreamBoothConfig, leaves, classes: list[Path], out: Path) -> str:
    _, labels, paths, split = leaves
    instance = [p for p, label, part in zip(paths, labels, split) if label == TARGET and part == "train"]
    kept, classes = out / "checkpoint", classes if cfg.with_prior else []
    fit_dreambooth(cfg, BASE, instance, classes, SIZE, keep_best(kept), out / "grids")
    return str(export_checkpoint(cfg, BASE, kept, out / "model"))


@pytest.fixture(scope="module")
def base(judges):
    """The base model, its samples of the instance and class prompts, and the panel's shares of them (what
    every fine-tune is measured against)."""
    pipe = load_generation_pipeline(EngineSettings(BASE), torch.device("cpu"))
    samples = draw(pipe)
    return pipe, target_shares(samples, judges), samples


def tuned_shares(
    cfg: DreamBoothConfig, leaves, judges, classes: list[Path], out: Path, prompts=PROMPTS
) -> dict[str, float]:
    adapter = fine_tune(cfg, leaves, classes, out)
    pipe = load_generation_pipeline(EngineSettings(BASE, adapter=adapter), torch.device("cpu"))
    return target_shares(draw(pipe, prompts), judges)


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
    after = tuned_shares(cfg, leaves, judges, [], tmp_path, prompts=(DB.instance_prompt,))
    print({"base": base[1], "textual inversion": after})
    assert after[DB.instance_prompt] - base[1][DB.instance_prompt] >= 0.10  # issue 23's bar


@pytest.mark.slow
def test_each_cluster_token_draws_images_nearer_its_own_cluster(judges, base, gate, tmp_path):
    paths, kinds = paint_kinds(tmp_path / "kinds")
    clustering = cluster_images(
        [p.stem for p in paths],
        image_features(paths, gate, SIZE),
        CLUSTERED.clusters,
        CLUSTERED.max_clusters,
        CLUSTERED.seed,
        CLUSTERED.identifier_token,
        "the demo's gating classifier",
    )
    clusters, kept = np.asarray(clustering.labels), tmp_path / "checkpoint"
    report, grids = keep_best(kept), tmp_path / "grids"
    fit_dreambooth(CLUSTERED, BASE, paths, [], SIZE, report, grids, instance_clusters=clustering.labels)
    adapter = export_checkpoint(CLUSTERED, BASE, kept, tmp_path / "model")
    pipe = load_generation_pipeline(EngineSettings(BASE, adapter=str(adapter)), torch.device("cpu"))
    prompts = identifier_prompts(DB.instance_prompt, DB.identifier_token, clustering.tokens)
    own = nearer_own_cluster(judges, paths, clusters, list(draw(pipe, prompts).values()))
    # The base model's <disease-leaf> samples, measured against each cluster: where the tokens start from.
    untaught = nearer_own_cluster(judges, paths, clusters, [base[2][DB.instance_prompt]] * 2)
    kinds_per_cluster = [np.bincount(kinds[clusters == c], minlength=2).tolist() for c in (0, 1)]
    print({"kinds per cluster": kinds_per_cluster, "own cluster": own, "base model": untaught})

    # Issue 23's bar: each token's samples nearer its own cluster than the other, on the panel's mean
    # (measured 0.99 and 0.58 under judges 1000-1002; 0.99 and 0.61 under 1000-1004), and each token nearer
    # its own cluster than the base model's samples are (0.79 and 0.21). The clustering decides how hard
    # that is: the demo's gate (seed 0) puts 9 scab-dominant leaves apart from 16 rust-dominant and 7
    # scab-dominant ones. With gates of seeds 1-3 (benchmarks/cluster_tokens.py --gate-seeds) every token
    # still beat the base model, but the first half held only narrowly twice (0.55, 0.57) and failed once,
    # for a cluster of 16 rust-dominant and 2 scab-dominant leaves (0.36; docs/finetune_methods.md).
    assert min(clustering.sizes) >= 2
    assert min(own) > 0.5
    assert all(after > before for after, before in zip(own, untaught))
