"""What a fine-tune leaves behind, in the formats a diffusers user loads (DESIGN.md), and its validation
grids.

- LoRA run: ``pytorch_lora_weights.safetensors`` (UNet, and text-encoder LoRA when trained;
  ``load_lora_weights``) plus ``learned_embeds.safetensors`` for new tokens (``load_textual_inversion``).
- Full fine-tune: a pipeline folder (``StableDiffusionPipeline.from_pretrained``) whose tokenizer and
  text encoder already hold the tokens; ``learned_embeds.safetensors`` is written beside it as well.
- Textual inversion: ``learned_embeds.safetensors`` alone.
- All: ``README.md``, a model card with the method and the exact config.

The folder is assembled under a temporary name and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict
from PIL import Image

from leafgen.config import DreamBoothConfig, dump_yaml
from leafgen.diffusion.components import initial_noise
from leafgen.diffusion.finetune.adapters import LORA_FILE
from leafgen.diffusion.finetune.dreambooth import DreamBoothModels
from leafgen.diffusion.finetune.identifier import save_learned_embeds
from leafgen.report.grids import GridRow, labelled_grid


def inference_pipeline(models: DreamBoothModels) -> StableDiffusionPipeline:
    """A pipeline sharing the training components (their current weights), with the DPM-Solver++ sampler."""
    pipe = StableDiffusionPipeline(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=models.tokenizer,
        unet=models.unet,
        scheduler=DPMSolverMultistepScheduler.from_config(models.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def validation_images(
    models: DreamBoothModels,
    prompts: tuple[str, ...],
    per_prompt: int,
    size: tuple[int, int],
    steps: int = 20,
    guidance: float = 3.0,
) -> list[torch.Tensor]:
    """Per prompt, images with seeds 0..per_prompt-1 (the same every time, so a cell compares across
    training steps): floats (per_prompt, 3, H, W) in [0, 1]."""
    pipe = inference_pipeline(models)
    training = models.unet.training, models.text_encoder.training
    models.unet.eval(), models.text_encoder.eval()
    rows = []
    for prompt in prompts:
        gens = [torch.Generator().manual_seed(s) for s in range(per_prompt)]
        rows.append(
            pipe(
                [prompt] * per_prompt,
                height=size[0],
                width=size[1],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                latents=initial_noise(pipe, gens, *size),
                output_type="pt",
            ).images.cpu()
        )
    models.unet.train(training[0]), models.text_encoder.train(training[1])
    return rows


def validation_grid(
    models: DreamBoothModels,
    prompts: tuple[str, ...],
    per_prompt: int,
    size: tuple[int, int],
    step: int,
    **kw,
) -> Image.Image:
    """The validation grid of ``step``: one labelled row per prompt, seeds 0..per_prompt-1 in every row."""
    rows = validation_images(models, prompts, per_prompt, size, **kw)
    seeds = f"seeds 0-{per_prompt - 1}" if per_prompt > 1 else "seed 0"
    title = f"step {step}: {seeds} in every row, the same at every step"
    return labelled_grid([GridRow(p, [x]) for p, x in zip(prompts, rows)], title)


def output_kind(cfg: DreamBoothConfig) -> str:
    """``lora``, ``full`` or ``textual_inversion``: which method ran, and for DreamBooth which weights."""
    if not cfg.trains_unet:
        return "textual_inversion"
    return "lora" if cfg.lora_rank else "full"


KIND_TITLES = {
    "lora": "DreamBooth LoRA",
    "full": "DreamBooth full fine-tune",
    "textual_inversion": "Textual inversion",
}


def model_card(cfg: DreamBoothConfig, base_model: str, tokens: list[str]) -> str:
    kind = output_kind(cfg)
    if len(tokens) > 1:
        listed = ", ".join(f"`{t}`" for t in tokens)
        identifiers = f"one identifier per cluster of the class ({listed}; clusters.json)"
    else:
        identifiers = f"identifier `{tokens[0]}` ({'new token' if cfg.new_token else 'existing token'})"
    prior = (
        "prior preservation does not apply"
        if kind == "textual_inversion"
        else (f"class prompt `{cfg.class_prompt}`" + ("" if cfg.with_prior else ", no prior preservation"))
    )
    return (
        f"# {KIND_TITLES[kind]} of `{base_model}` (leafgen)\n\n"
        f"Method `{cfg.method}`: instance prompt `{cfg.instance_prompt}`, {identifiers}; {prior}; "
        f"{cfg.train_steps} steps.\n\n"
        "```yaml\n" + dump_yaml(cfg) + "```\n"
    )


def save_dreambooth(
    models: DreamBoothModels, cfg: DreamBoothConfig, base_model: str, out: Path, extras: Sequence[Path] = ()
) -> Path:
    """Write the output folder ``out`` (replacing an older one), with copies of ``extras`` (the cluster
    table), and return it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if not cfg.trains_unet:
            pass  # textual inversion: the learned embeddings are the whole output
        elif cfg.lora_rank:
            text_layers = None
            if cfg.train_text_encoder:
                text_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(models.text_encoder))
            StableDiffusionPipeline.save_lora_weights(
                tmp,
                unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(models.unet)),
                text_encoder_lora_layers=text_layers,
                weight_name=LORA_FILE,
                safe_serialization=True,
            )
        else:
            inference_pipeline(models).save_pretrained(tmp, safe_serialization=True)
        if models.new_token:
            save_learned_embeds(models.text_encoder, models.tokens, models.token_ids, tmp)
        for extra in extras:
            shutil.copy2(extra, tmp / extra.name)
        (tmp / "README.md").write_text(model_card(cfg, base_model, models.tokens))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
