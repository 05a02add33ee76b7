"""The language-drift probe: same prompts and seeds before and after; judged shares with intervals for
leaf prompts, feature distance for every prompt; labelled before/after grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from leafgen.classifier.model import build_classifier
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.probes.drift import (
    DRIFT_PROMPTS,
    DriftSettings,
    format_drift,
    is_leaf_prompt,
    paired_change,
    probe_drift,
    probe_prompts,
    wilson,
)
from leafgen.labels import CLASSES

from ..conftest import IDENTIFIER
from ..generation.test_gate import TARGET

SETTINGS = DriftSettings(samples=4, other_samples=2, steps=2, batch=4)


def test_prompt_set_starts_with_the_instance_and_class_prompts_and_adds_configured_ones():
    prompts = probe_prompts(f"{IDENTIFIER} leaf", "apple leaf", ("leaf", "apple tree"))
    assert prompts[:2] == [f"{IDENTIFIER} leaf", "apple leaf"] and prompts[2:12] == list(DRIFT_PROMPTS)
    assert prompts[-1] == "apple tree" and prompts.count("leaf") == 1
    assert is_leaf_prompt("a photo of a leaf") and is_leaf_prompt("Leaf") and not is_leaf_prompt("leaflet")
    assert not is_leaf_prompt("cat") and is_leaf_prompt("cat", measured=("cat",))


def test_wilson_and_paired_intervals():
    low, high = wilson(16, 32)
    assert low < 0.5 < high and high - low == pytest.approx(0.33, abs=0.01)  # 95% at n=32
    assert wilson(0, 32)[0] == 0 and wilson(0, 32)[1] > 0.05  # never a zero-width interval
    same = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=float)
    assert paired_change(same, same) == [0.0, 0.0]
    low, high = paired_change(np.zeros(40), np.r_[np.ones(20), np.zeros(20)])
    assert 0.3 < low < 0.5 < high < 0.7


def test_an_unchanged_model_shows_no_drift_and_a_changed_one_does(tiny_model_dir, lora_adapter, tmp_path):
    cpu = torch.device("cpu")
    base = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    base.set_progress_bar_config(disable=True)
    tuned = load_generation_pipeline(EngineSettings(str(tiny_model_dir), adapter=str(lora_adapter)), cpu)
    prompts = [f"{IDENTIFIER} leaf", "cat"]
    measured = (f"{IDENTIFIER} leaf",)
    torch.manual_seed(0)
    judge = build_classifier("resnet18", "none", len(CLASSES)).eval()  # random weights: features still differ
    args = (judge, (32, 48), prompts, TARGET, (16, 24))
    same = probe_drift(base, base, *args, tmp_path / "same", SETTINGS, measured)
    for row in same["prompts"]:
        assert row["feature_distance"] < 1e-5
    instance, cat = same["prompts"]
    assert instance["target_share_before"] == instance["target_share_after"] and instance["change"] == 0
    assert instance["samples"] == 4 and len(instance["before_ci95"]) == 2
    assert cat["kind"] == "other" and cat["samples"] == 2 and "target_share_before" not in cat

    changed = probe_drift(base, tuned, *args, tmp_path / "lora", SETTINGS, measured)
    distances = [row["feature_distance"] for row in changed["prompts"]]
    assert all(d > 1e-3 for d in distances), distances
    saved = json.loads((tmp_path / "lora" / "drift.json").read_text())
    assert [row["prompt"] for row in saved["prompts"]] == prompts
    text = format_drift(saved)
    assert "not a leaf: not judged" in text and "[" in text.splitlines()[1]
    # One labelled row per prompt, before and after side by side, scaled up beside the label.
    one = Image.open(tmp_path / "lora" / "drift_cat.png")
    grid = Image.open(tmp_path / "lora" / "drift_grid.png")
    assert one.width > 2 * 2 * 24 * 3 and grid.width >= one.width and grid.height > 2 * one.height - 40
