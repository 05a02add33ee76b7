from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from leafgen.config import load_config
from leafgen.diffusion import components
from leafgen.diffusion.components import load_pipeline, resolve_model_path
from leafgen.errors import LeafgenError

from .conftest import tiny_architecture


def test_tiny_pipeline_saves_and_loads_with_plain_diffusers(tiny_model_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    assert pipe.tokenizer.model_max_length == 16
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id == 49407
    images = pipe(
        ["leaf", "leaf with rust"], num_inference_steps=2, height=16, width=24, output_type="np"
    ).images
    assert images.shape == (2, 16, 24, 3) and np.isfinite(images).all()
    weights = sorted(p.name for p in tiny_model_dir.rglob("*.safetensors"))
    assert weights and not list(tiny_model_dir.rglob("*.bin"))


def test_demo_config_names_the_embedded_model_and_a_missing_one_says_how_to_build_it(monkeypatch, tmp_path):
    cfg = load_config("configs/demo.yaml")
    assert cfg.base_model.name_or_path == "embedded"
    assert (cfg.base_model.resolution, cfg.base_model.width) == (64, 96)
    monkeypatch.setattr(components, "EMBEDDED_DIR", tmp_path / "absent")
    with pytest.raises(LeafgenError, match="leafgen base-model --out"):
        load_pipeline("embedded")


def test_embedded_name_resolves_to_a_pipeline_folder(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(components, "EMBEDDED_DIR", tiny_model_dir)
    assert resolve_model_path("embedded") == str(tiny_model_dir)
    assert load_pipeline("embedded").tokenizer.model_max_length == tiny_architecture().max_length


def test_load_pipeline_reads_a_local_folder(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir))
    assert pipe.unet.config.in_channels == tiny_architecture().latent_channels


def test_a_folder_that_is_not_a_pipeline_is_a_clear_error(tmp_path):
    with pytest.raises(LeafgenError, match="not a diffusers pipeline folder"):
        load_pipeline(str(tmp_path))


def test_a_missing_hub_model_offline_says_how_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(LeafgenError, match="HF_HUB_OFFLINE is set") as info:
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert "base_model.name_or_path" in str(info.value)


def test_weights_are_safetensors_with_real_tensors(tiny_model_dir):
    state = load_file(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert state and all(t.dtype == torch.float32 for t in state.values())
    assert (
        json.loads((tiny_model_dir / "model_index.json").read_text())["_class_name"]
        == "StableDiffusionPipeline"
    )


def test_local_model_folders_become_absolute_for_ray_workers(tmp_path, monkeypatch):
    from leafgen.diffusion.components import absolute_if_local

    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert absolute_if_local("model") == str(tmp_path / "model")
    assert (
        absolute_if_local("stable-diffusion-v1-5/stable-diffusion-v1-5")
        == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    )
    assert absolute_if_local("embedded") == "embedded"
