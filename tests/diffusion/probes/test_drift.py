"""The language-drift probe: same prompts and seeds before and after, judged shares and distances."""

from __future__ import annotations

import json

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from leafgen.classifier.model import build_classifier
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.probes.drift import DRIFT_PROMPTS, DriftSettings, probe_drift, probe_prompts
from leafgen.labels import CLASSES

from ..conftest import IDENTIFIER
from ..generation.test_gate import TARGET

SETTINGS = DriftSettings(samples=3, steps=2, batch=3)


def test_prompt_set_starts_with_the_instance_prompt_and_adds_configured_ones():
    prompts = probe_prompts(f"{IDENTIFIER} leaf", ("leaf", "apple tree"))
    assert prompts[0] == f"{IDENTIFIER} leaf" and prompts[1:11] == list(DRIFT_PROMPTS)
    assert prompts[-1] == "apple tree" and prompts.count("leaf") == 1


def test_an_unchanged_model_shows_no_drift_and_a_changed_one_does(tiny_model_dir, lora_adapter, tmp_path):
    cpu = torch.device("cpu")
    base = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    base.set_progress_bar_config(disable=True)
    tuned = load_generation_pipeline(EngineSettings(str(tiny_model_dir), adapter=str(lora_adapter)), cpu)
    prompts = [f"{IDENTIFIER} leaf", "cat"]
    torch.manual_seed(0)
    judge = build_classifier("resnet18", "none", len(CLASSES)).eval()  # random weights: features still differ
    same = probe_drift(base, base, judge, (32, 48), prompts, TARGET, (16, 24), tmp_path / "same", SETTINGS)
    for row in same["prompts"]:
        assert row["feature_distance"] < 1e-5
        assert row["target_share_before"] == row["target_share_after"]
    changed = probe_drift(
        base, tuned, judge, (32, 48), prompts, TARGET, (16, 24), tmp_path / "lora", SETTINGS
    )
    distances = [row["feature_distance"] for row in changed["prompts"]]
    assert all(d > 1e-3 for d in distances), distances
    saved = json.loads((tmp_path / "lora" / "drift.json").read_text())
    assert [row["prompt"] for row in saved["prompts"]] == prompts
    # Before row above after row: 2 rows of 3 samples per prompt.
    assert Image.open(tmp_path / "lora" / "drift_cat.png").size == (3 * 24 + 4, 2 * 16 + 3)
    assert Image.open(tmp_path / "lora" / "drift_grid.png").size == (3 * 24 + 4, 4 * 16 + 5)
