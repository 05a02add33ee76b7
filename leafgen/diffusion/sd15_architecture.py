"""Stable Diffusion v1.5's exact architecture with random weights: a stand-in for the hub model.

The component configs are those of ``stable-diffusion-v1-5`` (unet/, vae/, text_encoder/ and
scheduler/ ``config.json``); the tokenizer is CLIP's real vocabulary rebuilt offline
(:mod:`leafgen.diffusion.embedded.tokenizer`), so token ids match SD's. Random weights cost exactly
what trained ones do, so a folder written here measures real SD v1.5 speed and memory without a
download, on a machine that has no network. ``benchmarks/sd15_random_weights.py`` writes one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from leafgen.diffusion.embedded.tokenizer import clip_tokenizer

UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# SD v1.5's text encoder config keeps CLIP's original special-token ids (0, 2, 1); with eos_token_id 2
# transformers pools at the highest id, CLIP's <|endoftext|>, exactly as the hub model does.
TEXT_ENCODER: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}
# The hub's sampler; leafgen swaps in its own on this schedule (``generate.scheduler``).
SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}
# Parameter counts of the hub model's components (the test checks the configs against them).
PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def sd15_configs() -> dict[str, dict[str, Any]]:
    """Fresh copies of the component configs, to change for a scaled-down variant."""
    return copy.deepcopy({"unet": UNET, "vae": VAE, "text_encoder": TEXT_ENCODER})


def build_components(
    configs: dict[str, dict[str, Any]], device: str | torch.device = "cpu"
) -> dict[str, torch.nn.Module]:
    """The three networks, initialised on ``device`` (a GPU initialises SD's 1.07 billion weights in
    seconds, a CPU in about a minute; ``meta`` only counts them)."""
    with torch.device(device):
        return {
            "unet": UNet2DConditionModel(**configs["unet"]),
            "vae": AutoencoderKL(**configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        }


def parameter_counts(modules: dict[str, torch.nn.Module]) -> dict[str, int]:
    return {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}


def write_random_pipeline(
    folder: str | Path,
    configs: dict[str, dict[str, Any]] | None = None,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Path:
    """Write a diffusers pipeline folder of ``configs`` (SD v1.5's by default) with random weights stored
    in ``dtype`` as safetensors; loads with ``StableDiffusionPipeline.from_pretrained``."""
    configs = configs or sd15_configs()
    torch.manual_seed(seed)
    parts = build_components(configs, device)
    tokenizer = clip_tokenizer(configs["text_encoder"]["max_position_embeddings"])
    pipe = StableDiffusionPipeline(
        vae=parts["vae"].to(dtype),
        text_encoder=parts["text_encoder"].to(dtype),
        tokenizer=tokenizer,
        unet=parts["unet"].to(dtype),
        scheduler=PNDMScheduler.from_config(SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
