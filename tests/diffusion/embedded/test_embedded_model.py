"""The committed embedded base model: plain diffusers loads it at its own resolution, its recipe files
match the code, the tokenizer is CLIP's, and it stays within the size budget."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from leafgen.config import load_config
from leafgen.config.loader import from_dict, read_yaml
from leafgen.diffusion.components import EMBEDDED_DIR, resolve_model_path
from leafgen.diffusion.embedded.base_model import RECIPE_FILE
from leafgen.diffusion.embedded.recipe import TinyModelRecipe
from leafgen.diffusion.embedded.tokenizer import clip_tokenizer

# The committed weights came from four runs, each continuing the one before (the model card says how).
RUN_FILES = (
    "leafgen_recipe_first_run.yaml",
    "leafgen_recipe_second_run.yaml",
    "leafgen_recipe_third_run.yaml",
    RECIPE_FILE,
)
# What a continuation may change: where it starts from, how long and how fast the denoiser trains, and
# what the class-free prompts are trained on.
CONTINUATION_FIELDS = (
    "vae_init",
    "unet_init",
    "unet_steps",
    "unet_learning_rate",
    "generic_prompt_share_by_class",
)


def test_committed_model_loads_with_plain_diffusers_and_draws_at_64x96():
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_DIR)
    assert {m.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder)} == {torch.float32}
    out = pipe(
        "leaf with rust",
        num_inference_steps=2,
        height=64,
        width=96,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 64, 96, 3) and np.isfinite(out).all()


def test_committed_recipes_are_the_code_defaults_plus_the_recorded_continuations():
    runs = [from_dict(TinyModelRecipe, read_yaml(EMBEDDED_DIR / name)) for name in RUN_FILES]
    assert runs[0] == TinyModelRecipe()  # the defaults made the first run
    for earlier, later in zip(runs, runs[1:]):
        assert later.training.unet_init  # a continuation starts from the run before
        kept = {name: getattr(earlier.training, name) for name in CONTINUATION_FIELDS}
        assert replace(later, training=replace(later.training, **kept)) == earlier


def test_committed_tokenizer_is_clips_vocabulary_at_the_recipe_length():
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_DIR)
    reference = clip_tokenizer(TinyModelRecipe().architecture.max_length)
    for prompt in ("leaf with scab", "a photo of a leaf", "<disease-leaf> leaf", "pirate"):
        assert pipe.tokenizer(prompt).input_ids == reference(prompt).input_ids


def test_committed_model_fits_the_size_budget_and_the_demo_points_at_it():
    size = sum(p.stat().st_size for p in EMBEDDED_DIR.rglob("*") if p.is_file())
    assert size <= 30 * 2**20
    assert not list(EMBEDDED_DIR.rglob("*.bin")) and list(EMBEDDED_DIR.rglob("*.safetensors"))
    assert resolve_model_path(load_config("configs/demo.yaml").base_model.name_or_path) == str(EMBEDDED_DIR)


def test_committed_autoencoder_posterior_is_its_mode():
    # DreamBooth and img2img sample the posterior; the denoiser learned the means, so samples must be them.
    vae = StableDiffusionPipeline.from_pretrained(EMBEDDED_DIR).vae
    x = torch.rand(4, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
    assert posterior.std.max() < 1e-6 < posterior.mean.std()
