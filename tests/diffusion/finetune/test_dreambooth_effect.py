"""The fine-tuning methods' effect on the committed base model, measured as the issues ask on a small fast
setting.

A judge fine-tunes the committed backbone on procedural leaves (every class); the base model's samples are
judged once for every test. DreamBooth (LoRA plus the new token) learns the minority class from procedural
images, once with prior preservation and once without; textual inversion learns only the token; and
DreamBooth with one identifier per cluster learns two kinds of minority leaves painted apart. 64 samples
per prompt and model, fixed seeds. What is asserted is the effect, not a pinned figure:
``<disease-leaf> leaf`` samples land in the class at least 10 points more often after DreamBooth and after
textual inversion; prior preservation keeps ``leaf`` samples out of it more than no prior does; and each
cluster's prompt draws leaves nearer its own cluster than the other (feature-space nearest centroid).
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


# Textual inversion at the defaults of its own keys (docs/finetune_methods.md measured them).
TI = replace(
    DB,
    method="textual_inversion",
    textual_inversion_learning_rate=DreamBoothConfig.textual_inversion_learning_rate,
    textual_inversion_steps=DreamBoothConfig.textual_inversion_steps,
    num_class_images=0,
    prior_loss_weight=0.0,
)


@pytest.mark.slow
def test_textual_inversion_teaches_the_class(leaves, judge, base, tmp_path):
    adapter = fine_tune(TI, instance_images(leaves), [], tmp_path / "ti")
    assert sorted(p.name for p in Path(adapter).iterdir()) == ["README.md", "learned_embeds.safetensors"]
    tuned = load_generation_pipeline(EngineSettings(BASE, adapter=adapter), torch.device("cpu"))
    share, before = target_share(tuned, judge, TI.instance_prompt), base[1][TI.instance_prompt]
    print({"base": before, "textual inversion": share})
    assert share - before >= 0.10


# Two kinds of minority leaves, painted by the real painter with the class's mark sizes: mostly rust spots
# with one scab blotch, and mostly scab blotches with one rust spot.
KINDS = {
    "rust-dominant": ((6, 10), (1, 1), (0.85, 1.0), 1.25),
    "scab-dominant": ((1, 1), (5, 8), (0.85, 1.0), 1.25),
}
PER_KIND = 16
OWN_CLUSTER_BAR = 0.6  # measured: see the test's docstring


@pytest.fixture(scope="module")
def two_kinds(tmp_path_factory):
    """``PER_KIND`` leaves of each kind at the procedural set's size: (paths, kind of each)."""
    from leafgen.data.leaf_painter import render

    folder = tmp_path_factory.mktemp("two-kinds")
    paths, kinds = [], []
    for k, marks in enumerate(KINDS.values()):
        for i in range(PER_KIND):
            paths.append(folder / f"kind{k}_{i}.png")
            render("multiple_diseases", np.random.default_rng([77, k, i]), 192, marks).save(paths[-1])
            kinds.append(k)
    return paths, np.asarray(kinds)


@pytest.mark.slow
def test_each_clusters_identifier_draws_its_own_cluster(two_kinds, judge, tmp_path):
    """k-means on the judge's features (a classifier fine-tuned on the four classes, as the pipeline's gating
    classifier is) recovers the two kinds, and after one DreamBooth (LoRA, two tokens, no prior) the
    samples of each cluster's prompt lie nearer that cluster's centroid than the other's in the same
    feature space, in at least OWN_CLUSTER_BAR of 64 samples each.

    The committed backbone, which never saw the class, does not separate these kinds (purity 0.66: its
    features split off five heavily blotched leaves instead; docs/finetune_methods.md)."""
    import torch.nn.functional as F

    from leafgen.diffusion.finetune.clusters import cluster_images, image_features
    from leafgen.diffusion.probes.evaluate import classifier_features

    paths, kinds = two_kinds
    features = image_features(paths, judge, SIZE)
    clustering = cluster_images([p.stem for p in paths], features, 2, 2, 0, DB.identifier_token, "judge")
    labels = np.asarray(clustering.labels)
    purity = max((labels == kinds).mean(), (labels != kinds).mean())
    centroids = torch.stack([torch.from_numpy(features[labels == c].mean(0)) for c in (0, 1)])
    centroids = F.normalize(centroids, dim=1)

    cfg = replace(DB, clusters=2, num_class_images=0, prior_loss_weight=0.0)
    adapter = fine_tune(cfg, paths, [], tmp_path / "clusters", clustering.labels)
    tuned = load_generation_pipeline(EngineSettings(BASE, adapter=adapter), torch.device("cpu"))
    own = []
    for c, token in enumerate(clustering.tokens):
        prompt = DB.instance_prompt.replace(DB.identifier_token, token)
        images = generate(tuned, prompt, SAMPLES, 0, 32, 20, 3.0, SIZE)
        drawn = F.normalize(classifier_features(judge, images, SIZE).float(), dim=1)
        own.append(float(((drawn @ centroids.T).argmax(1) == c).float().mean()))
    print({"purity": purity, "sizes": clustering.sizes, "own-cluster share": own})
    assert purity >= 0.9
    assert min(own) >= OWN_CLUSTER_BAR
