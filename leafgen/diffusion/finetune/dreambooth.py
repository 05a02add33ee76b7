"""DreamBooth and textual inversion on a Stable Diffusion pipeline, following diffusers'
train_dreambooth(_lora).py and textual_inversion.py semantics.

- Models: the base pipeline's components; identifier tokens (new, one per cluster, with their own trained
  embeddings, or an existing rare one); under ``method: dreambooth`` the UNet fully fine-tuned or given
  peft LoRA adapters and the text encoder frozen, fully trained, or LoRA-adapted (``train_text_encoder``);
  under ``method: textual_inversion`` only the new tokens' embedding rows. The autoencoder is always
  frozen.
- Loss: noise-prediction MSE on instance images (optionally min-SNR-gamma weighted) plus
  ``prior_loss_weight`` times the plain MSE on class images, which keeps the class prompt's meaning
  (prior preservation against language drift). Offset noise shifts each sample's per-channel noise mean.

The loop lives in :mod:`leafgen.diffusion.finetune.loop`; saving and validation in
:mod:`leafgen.diffusion.finetune.output`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from peft import LoraConfig

from leafgen.config import DreamBoothConfig
from leafgen.diffusion.components import load_pipeline, training_scheduler
from leafgen.diffusion.finetune.identifier import add_identifiers, cluster_tokens, train_only_rows
from leafgen.errors import LeafgenError
from leafgen.precision import native_bf16

TEXT_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class DreamBoothModels:
    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    noise_scheduler: DDPMScheduler
    tokens: list[str]
    """The identifier tokens, one per cluster (cluster i's is ``tokens[i]``)."""
    token_ids: list[int]
    """Their ids."""
    new_token: bool
    """Whether the tokens were added (their embedding rows train and are saved)."""

    @property
    def token_id(self) -> int:
        """The first (with one cluster, the only) identifier's id."""
        return self.token_ids[0]


def autocast_dtype(cfg: DreamBoothConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32; ``auto`` picks bf16 only where it is native."""
    if cfg.mixed_precision == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]


def prepare_models(cfg: DreamBoothConfig, base_model: str, revision: str | None = None) -> DreamBoothModels:
    """Load the base model and make exactly the parameters ``cfg`` trains trainable. ``cfg.clusters`` is
    the number of clusters found (the stage resolves ``auto`` before training)."""
    if not isinstance(cfg.clusters, int):
        raise LeafgenError("dreambooth.clusters=auto is resolved to a number before the models are built")
    pipe = load_pipeline(base_model, revision)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    tokens = cluster_tokens(cfg.identifier_token, cfg.clusters)
    token_ids = add_identifiers(tokenizer, text_encoder, tokens, cfg.initializer_token, cfg.new_token)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.requires_grad_(cfg.trains_unet and cfg.lora_rank == 0)
    alpha = cfg.lora_alpha or cfg.lora_rank
    if cfg.trains_unet and cfg.lora_rank:
        unet.add_adapter(
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=alpha,
                init_lora_weights="gaussian",
                target_modules=list(cfg.lora_target_modules),
            )
        )
    if cfg.train_text_encoder and cfg.lora_rank:
        _check_text_encoder_lora()
        text_encoder.add_adapter(
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=alpha,
                init_lora_weights="gaussian",
                target_modules=list(TEXT_LORA_MODULES),
            )
        )
    elif cfg.train_text_encoder:
        text_encoder.requires_grad_(True)
    embedding = text_encoder.get_input_embeddings()
    if cfg.new_token:
        # Only the new rows learn; the rest of the table keeps CLIP's meaning of every other word.
        train_only_rows(embedding, token_ids)
    else:
        embedding.weight.requires_grad_(False)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    return DreamBoothModels(
        tokenizer, text_encoder, unet, vae, training_scheduler(pipe), tokens, token_ids, cfg.new_token
    )


def _check_text_encoder_lora() -> None:
    """transformers sets its own minimum peft version for text-encoder adapters (training them, and
    ``load_lora_weights`` reading them back); refuse early, saying so, rather than fail mid-setup."""
    from importlib.metadata import version

    from packaging.version import Version
    from transformers.integrations.peft import MIN_PEFT_VERSION

    if Version(version("peft")) < Version(MIN_PEFT_VERSION):
        raise LeafgenError(
            f"dreambooth.train_text_encoder with lora_rank > 0 needs peft>={MIN_PEFT_VERSION} (transformers' "
            f"minimum for text-encoder adapters); this environment has peft {version('peft')}. Train the "
            "UNet LoRA alone (train_text_encoder=false) or fine-tune fully (lora_rank=0)"
        )


def parameter_groups(models: DreamBoothModels, cfg: DreamBoothConfig) -> list[dict[str, Any]]:
    """UNet (or LoRA) and text-encoder weights at ``learning_rate``; the identifier embeddings at
    ``embedding_learning_rate`` (textual inversion: ``textual_inversion_learning_rate``, and nothing else)
    with no weight decay, so Adam leaves the masked rows exactly alone."""
    embedding = models.text_encoder.get_input_embeddings().weight
    main = [p for p in models.unet.parameters() if p.requires_grad]
    main += [p for p in models.text_encoder.parameters() if p.requires_grad and p is not embedding]
    groups = [{"params": main, "lr": cfg.learning_rate, "weight_decay": 1e-2}] if main else []
    if models.new_token:
        lr = cfg.embedding_learning_rate if cfg.trains_unet else cfg.textual_inversion_learning_rate
        groups.append({"params": [embedding], "lr": lr, "weight_decay": 0.0})
    return groups


def build_optimizer(groups: list[dict[str, Any]], cfg: DreamBoothConfig) -> torch.optim.Optimizer:
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise LeafgenError(
                "dreambooth.use_8bit_adam needs bitsandbytes (pip install bitsandbytes, CUDA only)"
            ) from None
        return bnb.optim.AdamW8bit(groups)
    return torch.optim.AdamW(groups, fused=True if cfg.fused_adam else None)


def tokenize(tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Prompt ids padded to the tokenizer's length, exactly as the pipeline pads them at inference."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def make_noise(latents: torch.Tensor, generator: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise; with ``offset``, plus ``offset`` times one Gaussian value per sample and channel
    (offset noise: lets the model change an image's overall brightness and colour)."""
    noise = torch.randn(latents.shape, generator=generator)
    if offset:
        noise = noise + offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    return noise.to(latents.device, latents.dtype)


def dreambooth_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    noise_scheduler: DDPMScheduler,
    prior_loss_weight: float,
    snr_gamma: float | None,
    with_prior: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, instance, prior) losses; with prior preservation the batch is [instance, class] halves."""
    prior = torch.zeros((), device=pred.device)
    if with_prior:
        pred, pred_prior = pred.chunk(2)
        target, target_prior = target.chunk(2)
        timesteps = timesteps.chunk(2)[0]
        prior = F.mse_loss(pred_prior.float(), target_prior.float())
    if snr_gamma is None:
        instance = F.mse_loss(pred.float(), target.float())
    else:
        snr = compute_snr(noise_scheduler, timesteps)
        weight = torch.clamp(snr, max=snr_gamma) / snr
        if noise_scheduler.config.prediction_type == "v_prediction":
            weight = weight * snr / (snr + 1)  # v targets carry SNR + 1 times epsilon's scale
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        instance = (per_sample * weight).mean()
    return instance + prior_loss_weight * prior, instance, prior


def prediction_target(
    noise_scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise LeafgenError(f"unsupported prediction_type {kind!r} in the base model's scheduler")
