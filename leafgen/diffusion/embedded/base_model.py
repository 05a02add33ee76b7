"""Training the embedded tiny text-to-image model from scratch on procedural leaves.

Resumable phases under a work folder: paint a procedural training set (its own seed, never the demo's
images; the minority class is left out), train the autoencoder on random crops, train the UNet and the
CLIP text encoder jointly on cached latents, then sharpen the decoder with the encoder frozen and pin
the posterior to its mode. The result is a standard diffusers ``StableDiffusionPipeline`` folder,
written atomically, with its recipe.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel, compute_snr
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from leafgen.config.loader import dump_yaml, fingerprint, to_dict
from leafgen.data.cache import ensure_cached
from leafgen.data.images import image_path
from leafgen.data.procedural import ProceduralSpec, make_dataset
from leafgen.diffusion.components import EMBEDDED_DIR, EMBEDDED_NAME, build_pipeline, training_scheduler
from leafgen.diffusion.embedded.autoencoder import (
    Log,
    encode_latents,
    log_every,
    pin_posterior,
    train_autoencoder,
)
from leafgen.diffusion.embedded.recipe import TinyModelRecipe
from leafgen.errors import ConfigError
from leafgen.labels import CLASSES
from leafgen.precision import autocast_bf16

RECIPE_FILE = "leafgen_recipe.yaml"
HISTORY_FILE = "history.jsonl"
PHASE_FILE = "leafgen_phase_key.txt"


def training_images(recipe: TinyModelRecipe, work: Path) -> tuple[np.ndarray, list[str]]:
    """(N, H, W, 3) uint8 training images at the model's size and their class names (no minority class)."""
    t = recipe.training
    spec = ProceduralSpec(scale=t.data_scale, seed=t.data_seed, test_fraction=0.0)
    root = make_dataset(work / "procedural", spec, workers=recipe.num_workers)
    keep = [(i, label) for i, label in enumerate(spec.labels("train")) if label in t.class_prompts]
    paths = [image_path(root / "images", f"Train_{i}") for i, _ in keep]
    labels = [label for _, label in keep]
    arch = recipe.architecture
    images = np.load(ensure_cached(paths, (arch.height, arch.width), work / "cache"), mmap_mode="r")
    return images, labels


def prompt_table(recipe: TinyModelRecipe) -> list[str]:
    """Every prompt the model trains on; index 0 is the empty prompt."""
    t = recipe.training
    return ["", *t.generic_prompts, *[p for c in CLASSES for p in t.class_prompts.get(c, ())]]


def sample_prompts(labels: list[str], recipe: TinyModelRecipe, rng: np.random.Generator) -> list[int]:
    """Index into ``prompt_table`` for each label: empty, class-free or the label's own prompt."""
    t = recipe.training
    table = prompt_table(recipe)
    out = []
    for label in labels:
        u = rng.random()
        if u < t.empty_prompt_share:
            out.append(0)
        elif u < t.empty_prompt_share + t.generic_share(label):
            out.append(table.index(rng.choice(t.generic_prompts)))
        else:
            out.append(table.index(rng.choice(t.class_prompts[label])))
    return out


def train_denoiser(
    pipe: Any,
    latents: torch.Tensor,
    labels: list[str],
    recipe: TinyModelRecipe,
    device: torch.device,
    log: Log,
) -> None:
    """Joint UNet + text-encoder training with SD's noise schedule, min-SNR weighting and EMA."""
    t = recipe.training
    gen = torch.Generator().manual_seed(t.seed + 1)
    rng = np.random.default_rng(t.seed + 1)
    unet, text_encoder = pipe.unet.train().to(device), pipe.text_encoder.train().to(device)
    noise_scheduler = training_scheduler(pipe)
    ids = pipe.tokenizer(
        prompt_table(recipe),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    labels2 = labels + labels  # latents hold each image and its mirror image
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=t.unet_learning_rate, weight_decay=1e-2)
    sched = get_cosine_schedule_with_warmup(opt, t.warmup_steps, t.unet_steps)
    emas = [EMAModel(m.parameters(), decay=t.ema_decay, use_ema_warmup=True) for m in (unet, text_encoder)]
    scale = pipe.vae.config.scaling_factor
    bar = tqdm(range(t.unet_steps), desc="denoiser", unit="step")
    for step in bar:
        idx = torch.randint(0, len(latents), (t.unet_batch_size,), generator=gen)
        z0 = latents[idx].to(device) * scale
        prompts = torch.as_tensor(
            sample_prompts([labels2[i] for i in idx.tolist()], recipe, rng), device=device
        )
        noise = torch.randn(z0.shape, generator=gen).to(device)
        steps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(z0),), generator=gen).to(
            device
        )
        zt = noise_scheduler.add_noise(z0, noise, steps)
        with autocast_bf16(device, t.bf16):
            pred = unet(zt, steps, text_encoder(ids[prompts])[0]).sample.float()
        # Min-SNR-gamma weighting (Hang et al. 2023) keeps the many easy low-noise steps from dominating.
        snr = compute_snr(noise_scheduler, steps)
        weight = torch.clamp(snr, max=t.snr_gamma) / snr
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        for ema, module in zip(emas, (unet, text_encoder)):
            ema.step(module.parameters())
        if step % log_every(t.unet_steps) == 0 or step == t.unet_steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log({"phase": "denoiser", "step": step + 1, "loss": loss.item()})
    for ema, module in zip(emas, (unet, text_encoder)):
        ema.copy_to(module.parameters())
    unet.eval(), text_encoder.eval()


def train_base_model(recipe: TinyModelRecipe, out: str | Path, work: str | Path | None = None) -> Path:
    """Train the tiny model of ``recipe`` and save it as a diffusers folder at ``out``; returns ``out``.

    ``work`` (default ``<out>.work``) keeps the painted images, the cache, the trained autoencoder and the
    trained denoiser, so an interrupted run resumes after its last finished phase.
    """
    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    history = work / HISTORY_FILE

    def log(row: dict[str, Any]) -> None:
        with history.open("a") as f:
            f.write(json.dumps(row) + "\n")

    images, labels = training_images(recipe, work)
    pipe = build_pipeline(recipe.architecture, seed=recipe.training.seed)
    vae_dir = work / "vae"
    if recipe.training.vae_init:
        _warm_start(pipe, recipe.training.vae_init, ("vae",), "vae_init")
    elif _phase_done(vae_dir, recipe, "autoencoder"):
        pipe.vae = type(pipe.vae).from_pretrained(vae_dir)
    else:
        train_autoencoder(pipe.vae, images, recipe, device, log)
        _save_atomically(pipe.vae, vae_dir, extra={PHASE_FILE: phase_key(recipe, "autoencoder")})
    latents = encode_latents(pipe.vae, images, device)
    # SD rescales latents to unit variance; the factor is measured on this model's own latents.
    pipe.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    denoiser_dir = work / "denoiser"
    if _phase_done(denoiser_dir / "unet", recipe, "denoiser"):
        pipe.unet = type(pipe.unet).from_pretrained(denoiser_dir / "unet")
        pipe.text_encoder = type(pipe.text_encoder).from_pretrained(denoiser_dir / "text_encoder")
    else:
        if recipe.training.unet_init:
            _warm_start(pipe, recipe.training.unet_init, ("unet", "text_encoder"), "unet_init")
        train_denoiser(pipe, latents, labels, recipe, device, log)
        key = {PHASE_FILE: phase_key(recipe, "denoiser")}
        _save_atomically(pipe.text_encoder, denoiser_dir / "text_encoder")
        _save_atomically(pipe.unet, denoiser_dir / "unet", extra=key)  # last: its key marks the phase done
    if recipe.training.decoder_steps:
        train_autoencoder(pipe.vae, images, recipe, device, log, decoder_only=True)
    pin_posterior(pipe.vae)
    pipe.to("cpu")
    card = {RECIPE_FILE: dump_yaml(recipe), "README.md": model_card(recipe)}
    _save_atomically(pipe, out, extra=card, finish=store_half_precision)
    return out


def _warm_start(pipe: Any, folder: str, names: tuple[str, ...], key: str) -> None:
    """Load an earlier run's components, refusing shapes that differ from this recipe's."""
    root = EMBEDDED_DIR if folder == EMBEDDED_NAME else Path(folder)
    for name in names:
        path = root / name
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"training.{key}: {path} is not a saved {name}; give a base model folder (or 'embedded')"
                + (" or a work folder's denoiser/" if name != "vae" else "")
            )
        loaded = type(getattr(pipe, name)).from_pretrained(path).float()
        if _shapes(loaded) != _shapes(getattr(pipe, name)):
            raise ConfigError(
                f"training.{key}: {path} has another architecture than this recipe's; "
                "start from a model trained with the same architecture section"
            )
        setattr(pipe, name, loaded)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# Recipe fields that only phases after the autoencoder read: changing them must not retrain it.
_AFTER_AUTOENCODER = {
    "architecture": ("unet_", "attention_", "text_", "max_length"),
    "training": ("unet_", "snr_", "ema_", "empty_", "generic_", "class_", "decoder_"),
}


def phase_key(recipe: TinyModelRecipe, phase: str) -> str:
    """Hash of the recipe fields a phase's result depends on, so a resumed run reuses only what matches."""
    data = to_dict(recipe)
    later = _AFTER_AUTOENCODER if phase == "autoencoder" else {"training": ("decoder_",)}
    for section, prefixes in later.items():
        data[section] = {k: v for k, v in data[section].items() if not k.startswith(prefixes)}
    data.pop("num_workers")
    return fingerprint(data)


def _phase_done(directory: Path, recipe: TinyModelRecipe, phase: str) -> bool:
    marker = directory / PHASE_FILE
    return marker.is_file() and marker.read_text() == phase_key(recipe, phase)


def store_half_precision(folder: Path) -> None:
    """Rewrite a pipeline folder's UNet and autoencoder weights in float16, halving their bytes.

    diffusers loads them as float32 unless asked otherwise, so inference and fine-tuning are unchanged
    apart from rounding. The text encoder stays float32: transformers loads weights in their stored dtype.
    """
    for component in ("unet", "vae"):
        for path in (folder / component).glob("*.safetensors"):
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()}
            save_file(tensors, path, metadata={"format": "pt"})


def _save_atomically(
    model: Any,
    target: Path,
    extra: dict[str, str] | None = None,
    finish: Callable[[Path], None] | None = None,
) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for name, text in (extra or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    if finish is not None:
        finish(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def model_card(recipe: TinyModelRecipe) -> str:
    arch = recipe.architecture
    return (
        "# tiny-leaf-t2i\n\n"
        "A tiny Stable-Diffusion-shaped text-to-image model trained from scratch by `leafgen base-model` on "
        "procedural apple leaves (healthy, rust, scab; never multiple_diseases). It stands in for SD v1.5 "
        f"offline. Images are {arch.height}x{arch.width}; the tokenizer is CLIP's real vocabulary, padded to "
        f"{arch.max_length} tokens. Load it with `StableDiffusionPipeline.from_pretrained(<folder>)`; "
        "the UNet and autoencoder weights are stored in float16 and load as float32.\n\n"
        f"Recipe (architecture, data seed, training seed): `{RECIPE_FILE}`.\n"
    )


def read_history(work: str | Path) -> list[dict[str, Any]]:
    path = Path(work) / HISTORY_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def loss_drop(history: list[dict[str, Any]], phase: str, window: int = 4) -> tuple[float, float]:
    """Mean logged loss of a phase's first and last ``window`` entries (for summaries and tests)."""
    losses = [row["loss"] for row in history if row["phase"] == phase]
    if not losses:
        return math.nan, math.nan
    return float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
