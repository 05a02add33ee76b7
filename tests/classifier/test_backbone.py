"""The embedded backbone: pretraining writes a headless float16 ResNet18 that resumes after a kill, and the
committed one loads into every ResNet18 classifier leafgen builds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from leafgen.classifier import model as model_module
from leafgen.classifier.backbone import CARD_FILE, BackboneRecipe, pretrain_backbone
from leafgen.classifier.engine import eval_transform
from leafgen.classifier.model import EMBEDDED_BACKBONE, build_classifier
from leafgen.config.loader import from_dict
from leafgen.data.cache import cached_images
from leafgen.data.images import image_path
from leafgen.data.plant_pathology import parse_train_csv
from leafgen.errors import ConfigError, LeafgenError
from leafgen.labels import CLASSES

TINY = {
    "data_scale": 0.03,
    "data_seed": 7,
    "classifier": {"image_size": 32, "epochs": 2, "batch_size": 16, "learning_rate": 0.002},
}


def test_pretraining_writes_a_headless_float16_backbone_that_classifiers_load(tmp_path):
    weights = pretrain_backbone(from_dict(BackboneRecipe, TINY), tmp_path / "bb", tmp_path / "work")

    state = load_file(weights)
    assert not [k for k in state if k.startswith("fc.")]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    card = json.loads((tmp_path / "bb" / CARD_FILE).read_text())
    assert card["classes_seen"] == ["healthy", "rust", "scab"]
    assert card["input_size"] == [32, 48]
    history = json.loads((tmp_path / "work" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    # The card describes the weights it ships with: the kept checkpoint's epoch and metrics.
    kept = json.loads((tmp_path / "work" / "best" / "classifier.json").read_text())
    assert card["best_epoch"] == kept["epoch"] + 1
    assert card["val"]["accuracy"] == kept["metrics"]["val/accuracy"]
    assert "recall/multiple_diseases" not in card["val"]  # a class never shown has no measurement
    kept_state = load_file(tmp_path / "work" / "best" / "model.safetensors")
    assert torch.equal(state["conv1.weight"], kept_state["conv1.weight"].half())

    model = build_classifier("resnet18", str(weights), num_classes=len(CLASSES))
    assert torch.equal(model.conv1.weight, state["conv1.weight"].float())
    assert model.fc.out_features == 4


def test_a_killed_pretraining_resumes_from_its_last_epoch(tmp_path):
    overrides = ["data_scale=0.03", "data_seed=7", "classifier.image_size=32", "classifier.batch_size=16"]
    command = [sys.executable, "-m", "leafgen.cli", "backbone", "--out", str(tmp_path / "bb")]
    command += [*overrides, "classifier.epochs=4"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "bb.work" / "last" / "train_state.pt"
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((tmp_path / "bb.work" / "history.json").read_text())
    assert 1 <= len(done) < 4, "the kill came too late to show a resume"

    pretrain_backbone(
        from_dict(BackboneRecipe, TINY | {"classifier": TINY["classifier"] | {"epochs": 4}}), tmp_path / "bb"
    )
    history = json.loads((tmp_path / "bb.work" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["start_epoch"] > 1  # continued from a checkpoint, not from scratch
    assert (tmp_path / "bb" / "model.safetensors").is_file()


def test_the_recipe_refuses_what_would_not_be_the_embedded_backbone():
    with pytest.raises(ConfigError, match="classifier: the embedded backbone is a ResNet18"):
        from_dict(BackboneRecipe, {"classifier": {"arch": "resnet50"}})
    with pytest.raises(ConfigError, match="left_out: unknown classes"):
        from_dict(BackboneRecipe, {"left_out": ["mildew"]})


def test_the_committed_backbone_loads_and_only_fits_resnet18():
    card = json.loads((EMBEDDED_BACKBONE.parent / CARD_FILE).read_text())
    assert card["classes_seen"] == ["healthy", "rust", "scab"] and card["val"]["accuracy"] >= 0.99
    state = load_file(EMBEDDED_BACKBONE)
    model = build_classifier("resnet18", "embedded", num_classes=4)
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"].float())
    with pytest.raises(LeafgenError, match="is a resnet18 backbone"):
        build_classifier("resnet50", "embedded")


def test_a_missing_embedded_backbone_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(model_module, "EMBEDDED_BACKBONE", tmp_path / "absent.safetensors")
    with pytest.raises(LeafgenError, match="leafgen backbone --out"):
        build_classifier("resnet18", "embedded")


@torch.no_grad()
def _features(weights: str, images: np.ndarray) -> np.ndarray:
    model = build_classifier("resnet18", weights).eval()
    model.fc = torch.nn.Identity()
    pixels = torch.stack([eval_transform()(torch.from_numpy(np.array(im)).permute(2, 0, 1)) for im in images])
    return model(pixels).numpy()


def test_the_committed_backbone_tells_the_classes_it_saw_apart_on_unseen_leaves(tiny_dataset, tmp_path):
    # A linear probe on frozen features: the pretrained backbone must beat the same network at random
    # init on leaves it never saw (another seed), or the demo gains nothing from it.
    rows, _ = parse_train_csv(tiny_dataset / "train.csv")
    seen = [(i, k) for i, k, _ in rows if CLASSES[k] != "multiple_diseases"]
    paths = [image_path(tiny_dataset / "images", i) for i, _ in seen]
    images = cached_images(paths, (64, 96), tmp_path / "cache", progress=False)
    y = np.array([k for _, k in seen])
    torch.manual_seed(0)
    scores = {}
    for weights in ("embedded", "none"):
        probe = LogisticRegression(max_iter=2000)
        scores[weights] = cross_val_score(probe, _features(weights, images), y, cv=3).mean()
    assert scores["embedded"] >= 0.85, scores
    assert scores["embedded"] > scores["none"] + 0.1, scores
