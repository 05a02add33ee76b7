"""Tiny random-weight text-to-image components, built in code (diffusers' own tests do the same)."""

from __future__ import annotations

import pytest

from leafgen.diffusion.components import build_pipeline
from leafgen.diffusion.recipe import TinyArchitecture, TinyModelRecipe, TinyTraining


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
