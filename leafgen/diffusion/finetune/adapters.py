"""A generation pipeline: the base model plus an optional DreamBooth output, the way a diffusers user
loads them.

DreamBooth outputs come in the formats DESIGN.md names: a full fine-tune is a pipeline folder
(``model_index.json``); a LoRA run is ``pytorch_lora_weights.safetensors`` (``load_lora_weights``) with,
when it trained new identifier tokens, ``learned_embeds.safetensors`` (``load_textual_inversion``); a
textual inversion is ``learned_embeds.safetensors`` alone. Either file alone is accepted; a folder with
neither is an error, never a silently plain base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)

from leafgen.diffusion.components import load_pipeline
from leafgen.diffusion.finetune.identifier import load_learned_embeds
from leafgen.diffusion.generation.speed import apply_levers
from leafgen.errors import LeafgenError

LORA_FILE = "pytorch_lora_weights.safetensors"
EMBEDS_FILE = "learned_embeds.safetensors"

SCHEDULERS = {
    "dpmsolver++": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "pndm": PNDMScheduler,
    "unipc": UniPCMultistepScheduler,
}


@dataclass(frozen=True)
class EngineSettings:
    """What every generation actor loads; plain fields, so it crosses into Ray as a dict."""

    base_model: str
    """Hub id, diffusers folder or ``embedded``."""
    revision: str | None = None
    """Hub revision of the base model."""
    adapter: str | None = None
    """DreamBooth output folder (pipeline folder, or LoRA weights and/or learned embeddings)."""
    scheduler: str = "dpmsolver++"
    """A key of ``SCHEDULERS``."""
    dtype: str = "auto"
    """auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16."""
    channels_last: bool | None = None
    """UNet and autoencoder in channels_last memory format; None: on with CUDA, off on CPU."""
    fuse_qkv: bool = False
    """Fuse each attention's query, key and value projections into one matmul."""
    compile: bool = False
    """torch.compile the UNet and the autoencoder's decoder (kernels cached on disk between runs)."""


def adapter_kind(path: str | Path) -> str:
    """``pipeline`` or ``lora`` (LoRA weights and/or learned embeddings); raises naming what is missing."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LeafgenError(f"generate.adapter {folder} is not a folder; point it at a DreamBooth output")
    if (folder / "model_index.json").is_file():
        return "pipeline"
    if (folder / LORA_FILE).is_file() or (folder / EMBEDS_FILE).is_file():
        return "lora"
    raise LeafgenError(
        f"generate.adapter {folder} holds neither a diffusers pipeline (model_index.json) nor "
        f"{LORA_FILE} / {EMBEDS_FILE}; point it at a DreamBooth output folder"
    )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_generation_pipeline(settings: EngineSettings, device: torch.device) -> StableDiffusionPipeline:
    """Base model (or full fine-tune) with any LoRA fused in and learned tokens added, on ``device``."""
    dtype = resolve_dtype(settings.dtype, device)
    kind = adapter_kind(settings.adapter) if settings.adapter else None
    source = settings.adapter if kind == "pipeline" else settings.base_model
    pipe = load_pipeline(source, None if kind == "pipeline" else settings.revision, dtype=dtype)
    if kind == "lora":
        folder = Path(settings.adapter).expanduser()  # type: ignore[arg-type]
        if (folder / EMBEDS_FILE).is_file():
            load_learned_embeds(pipe, folder / EMBEDS_FILE)
        if (folder / LORA_FILE).is_file():
            pipe.load_lora_weights(str(folder), weight_name=LORA_FILE)
            # Merged into the base weights, a LoRA costs nothing per step.
            pipe.fuse_lora()
            pipe.unload_lora_weights()
    if settings.scheduler not in SCHEDULERS:
        raise LeafgenError(f"unknown scheduler {settings.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    pipe.scheduler = SCHEDULERS[settings.scheduler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    apply_levers(pipe, settings, device)
    return pipe
