"""Tiny random-weight text-to-image components, built in code (diffusers' own tests do the same)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from leafgen.diffusion.components import build_pipeline
from leafgen.diffusion.embedded.recipe import TinyArchitecture, TinyModelRecipe, TinyTraining


def tiny_architecture() -> TinyArchitecture:
    return TinyArchitecture(
        height=16,
        width=24,
        vae_channels=(8, 16),
        latent_channels=4,
        unet_channels=(16, 32),
        unet_cross_attention=(False, True),
        attention_heads=2,
        text_width=32,
        text_layers=1,
        text_heads=2,
        max_length=16,
    )


def tiny_recipe(**training) -> TinyModelRecipe:
    settings = dict(
        data_scale=0.02,
        vae_steps=40,
        vae_batch_size=8,
        vae_crop=8,
        unet_steps=40,
        unet_batch_size=16,
        warmup_steps=2,
        vae_learning_rate=3e-3,
        unet_learning_rate=2e-3,
        ema_decay=0.9,
        decoder_steps=6,
    )
    settings.update(training)
    return TinyModelRecipe(architecture=tiny_architecture(), training=TinyTraining(**settings), num_workers=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised pipeline saved in the diffusers layout."""
    path = tmp_path_factory.mktemp("tiny-t2i") / "model"
    build_pipeline(tiny_architecture(), seed=0).save_pretrained(path, safe_serialization=True)
    return path


IDENTIFIER = "<disease-leaf>"


def write_lora_adapter(model_dir: Path, out: Path, rank: int = 4, seed: int = 0) -> Path:
    """A DreamBooth-style LoRA output for ``model_dir``: UNet LoRA weights (random, so they visibly act)
    and a learned embedding for a new identifier token, in the files diffusers loads."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would make the adapter a no-op
                param.normal_(0, 0.5)
    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=get_peft_model_state_dict(pipe.unet), safe_serialization=True
    )
    width = pipe.text_encoder.get_input_embeddings().embedding_dim
    save_file({IDENTIFIER: torch.randn(width)}, out / "learned_embeds.safetensors")
    return out


@pytest.fixture(scope="session")
def lora_adapter(tiny_model_dir, tmp_path_factory):
    return write_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture(scope="session")
def trained_tiny_model(tmp_path_factory):
    """A tiny pipeline trained by the real recipe code long enough that its autoencoder round-trips
    images recognisably (used where random weights would make a check meaningless)."""
    from leafgen.diffusion.embedded.base_model import train_base_model

    root = tmp_path_factory.mktemp("trained-t2i")
    recipe = tiny_recipe(vae_steps=200, unet_steps=400, vae_crop=0, vae_batch_size=16)
    return train_base_model(recipe, root / "model", root / "work")


def plain_diffusers_images(model_dir: Path, adapter: Path, rows: list[dict]) -> list:
    """What a diffusers user gets for these rows with the adapter: from_pretrained, load_textual_inversion,
    load_lora_weights, one generator per row; uint8-scaled floats (N, H, W, 3)."""
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.load_textual_inversion(str(adapter / "learned_embeds.safetensors"))
    pipe.load_lora_weights(str(adapter))
    images = pipe(
        [r["prompt"] for r in rows],
        num_inference_steps=rows[0]["steps"],
        guidance_scale=rows[0]["guidance"],
        height=rows[0]["height"],
        width=rows[0]["width"],
        generator=[torch.Generator().manual_seed(r["seed"]) for r in rows],
        output_type="np",
    ).images
    return list((images * 255).round())


def read_pixels(path: Path) -> np.ndarray:
    """An image file as int16 RGB, so differences of uint8 pixels do not wrap around."""
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
