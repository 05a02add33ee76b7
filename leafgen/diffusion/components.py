"""Text-to-image components: built from a tiny recipe, or loaded from a hub id or a diffusers folder.

Every later stage loads its base model through ``load_pipeline``, so SD v1.5 and the embedded tiny model
take the same path: ``StableDiffusionPipeline.from_pretrained`` on a hub id or local folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from leafgen.diffusion.embedded.recipe import TinyArchitecture
from leafgen.diffusion.embedded.tokenizer import clip_tokenizer
from leafgen.errors import LeafgenError

# The committed tiny model; ``base_model.name_or_path: embedded`` means this folder.
EMBEDDED_NAME = "embedded"
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-leaf-t2i"

# SD v1.5's noise schedule, so DreamBooth and samplers behave as they would on the real model.
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}


def build_vae(arch: TinyArchitecture) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=arch.vae_layers_per_block,
        latent_channels=arch.latent_channels,
        norm_num_groups=min(32, arch.vae_channels[0]),
        sample_size=arch.height,
    )


def build_unet(arch: TinyArchitecture) -> UNet2DConditionModel:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.unet_cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(arch.unet_cross_attention))
    latent_factor = 2 ** (len(arch.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=arch.height // latent_factor,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        cross_attention_dim=arch.text_width,
        # diffusers' UNet2DConditionModel reads ``attention_head_dim`` as the number of heads (a legacy name).
        attention_head_dim=arch.attention_heads,
        norm_num_groups=min(32, arch.unet_channels[0]),
    )


def build_text_encoder(arch: TinyArchitecture, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_width,
        intermediate_size=4 * arch.text_width,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.max_length,
        # CLIPTextConfig defaults to ids of a toy vocabulary; the pooled output looks for the real EOS.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_pipeline(arch: TinyArchitecture, seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised StableDiffusionPipeline of the given shapes (deterministic in ``seed``)."""
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(arch.max_length)
    return StableDiffusionPipeline(
        vae=build_vae(arch),
        text_encoder=build_text_encoder(arch, tokenizer),
        tokenizer=tokenizer,
        unet=build_unet(arch),
        scheduler=DPMSolverMultistepScheduler(**NOISE_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def training_scheduler(pipe: StableDiffusionPipeline) -> DDPMScheduler:
    """The DDPM scheduler that adds training noise, from the pipeline's own schedule."""
    return DDPMScheduler.from_config(pipe.scheduler.config, clip_sample=False)


def resolve_model_path(name_or_path: str) -> str:
    """``embedded`` -> the committed folder; an existing folder -> itself; anything else is a hub id."""
    if name_or_path == EMBEDDED_NAME:
        if not (EMBEDDED_DIR / "model_index.json").is_file():
            raise LeafgenError(
                f"the embedded base model is missing from {EMBEDDED_DIR}; reinstall leafgen from a full "
                "clone, or rebuild it with: leafgen base-model --out " + str(EMBEDDED_DIR)
            )
        return str(EMBEDDED_DIR)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise LeafgenError(
                f"{path} is not a diffusers pipeline folder (no model_index.json); point "
                "base_model.name_or_path at a folder written by save_pretrained, or at a hub id"
            )
        return str(path)
    return name_or_path


def absolute_if_local(name_or_path: str) -> str:
    """An existing local folder as an absolute path (Ray workers run in other working directories); hub
    ids and ``embedded`` unchanged."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if name_or_path != EMBEDDED_NAME and path.exists() else name_or_path


def load_pipeline(
    name_or_path: str,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> StableDiffusionPipeline:
    """Load a Stable Diffusion pipeline from the embedded model, a local folder or the Hugging Face hub."""
    source = resolve_model_path(name_or_path)
    try:
        return StableDiffusionPipeline.from_pretrained(
            source,
            revision=revision,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
        how = (
            "HF_HUB_OFFLINE is set, so only the local Hugging Face cache is searched: download it on a "
            "connected machine (huggingface-cli download " + source + ") or point base_model.name_or_path "
            "at a local folder"
            if offline
            else "check the hub id and your network, or point base_model.name_or_path at a local folder"
        )
        raise LeafgenError(
            f"cannot load base model {source!r}: {how}. ({type(exc).__name__}: {exc})"
        ) from None


def load_tokenizer(name_or_path: str, revision: str | None = None) -> CLIPTokenizer:
    """The base model's tokenizer alone (cheap: checks of identifier tokens run before any stage works)."""
    source = resolve_model_path(name_or_path)
    try:
        return CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision)
    except (OSError, ValueError) as exc:
        raise LeafgenError(
            f"cannot load the tokenizer of base model {source!r} (base_model.name_or_path); "
            f"{type(exc).__name__}: {exc}"
        ) from None


def initial_noise(
    pipe: StableDiffusionPipeline, generators: Sequence[torch.Generator], height: int, width: int
) -> torch.Tensor:
    """Each row's starting latents, drawn in float32 on the CPU from the row's generator, then cast.

    Left to diffusers, the noise is drawn in the pipeline's dtype, and torch's normal sampler gives a
    float16 stream that is not the float32 one rounded (seen with torch 2.11 on an H200: every image of a
    float16 pipeline differed from its float32 image). Drawn here, a row gives the same picture in every
    precision and on every device. For float32 pipelines this is exactly what diffusers draws.
    """
    f = pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, height // f, width // f)
    noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    return noise.to(pipe.device, pipe.unet.dtype)
