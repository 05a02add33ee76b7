"""Training the tiny model's autoencoder: random crops with a detail- and edge-weighted L1 loss, an
optional decoder-only sharpening pass, and the posterior pinned to its mode before the model is saved.

The autoencoder is trained and used deterministically (its posterior mode); ``encode_latents`` gives
the posterior means the denoiser learns from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from torchvision.transforms.functional import gaussian_blur
from tqdm.auto import tqdm

from leafgen.diffusion.embedded.recipe import TinyModelRecipe
from leafgen.diffusion.probes.evaluate import to_unit_float
from leafgen.precision import autocast_bf16

Log = Callable[[dict[str, Any]], None]
LOGVAR_FLOOR = -30.0
"""diffusers clamps the posterior log-variance to [-30, 20]; -30 is a std of 3e-7."""


def to_model_range(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the range SD's autoencoder works in."""
    return to_unit_float(pixels) * 2 - 1


def log_every(steps: int) -> int:
    return max(1, min(25, steps // 8))


def _autoencoder_batch(
    x: torch.Tensor, crop: int, permute_share: float, gen: torch.Generator
) -> torch.Tensor:
    """Random flips, RGB channel permutations and crops of a batch in [-1, 1].

    Permuting channels turns green leaves red or blue: lesions are a few per cent of the pixels, and an
    autoencoder that only ever sees green learns their colours last; one that must reproduce every hue
    keeps an orange rust spot orange.
    """
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    perms = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    keep = torch.rand(len(x), generator=gen) >= permute_share
    pick = torch.where(keep, 0, torch.randint(0, 6, (len(x),), generator=gen))
    x = torch.stack([xi[perms[k]] for xi, k in zip(x, pick.tolist())])
    if crop <= 0:
        return x
    top = torch.randint(0, x.shape[-2] - crop + 1, (len(x),), generator=gen)
    left = torch.randint(0, x.shape[-1] - crop + 1, (len(x),), generator=gen)
    return torch.stack([xi[:, t : t + crop, s : s + crop] for xi, t, s in zip(x, top, left)])


def autoencoder_loss(
    recon: torch.Tensor, target: torch.Tensor, edge_weight: float = 1.0, detail_weight: float = 0.0
) -> torch.Tensor:
    """L1 on pixels, plus L1 on pixel differences (edges), with pixels weighted by their detail.

    ``detail_weight`` up-weights pixels that differ from their blurred surroundings (lesions, veins,
    outlines) in units of the batch's mean detail: lesions are a few per cent of a leaf's pixels, and an
    unweighted loss learns the dominant greens first and turns orange rust spots yellow and scab away.
    """
    weight = 1.0
    if detail_weight:
        detail = (target - gaussian_blur(target, kernel_size=5, sigma=1.5)).abs().mean(dim=1, keepdim=True)
        weight = 1 + detail_weight * detail / detail.mean().clamp_min(1e-6)
    grads = [(recon.diff(dim=d), target.diff(dim=d)) for d in (-1, -2)]
    pixels = ((recon - target).abs() * weight).mean()
    return pixels + edge_weight * sum(F.l1_loss(a, b) for a, b in grads)


def train_autoencoder(
    vae: Any,
    images: np.ndarray,
    recipe: TinyModelRecipe,
    device: torch.device,
    log: Log,
    decoder_only: bool = False,
) -> None:
    """Train the autoencoder, or with ``decoder_only`` fine-tune its decoder with the encoder frozen.

    The decoder-only phase runs after the denoiser: the latents it was trained on stay exactly the same
    (SD's ft-MSE autoencoder was made the same way), while reconstructions get sharper.
    """
    t = recipe.training
    steps = t.decoder_steps if decoder_only else t.vae_steps
    phase = "decoder" if decoder_only else "autoencoder"
    gen = torch.Generator().manual_seed(t.seed + (2 if decoder_only else 0))
    params = (
        [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
        if decoder_only
        else list(vae.parameters())
    )
    lr = t.vae_learning_rate * (t.decoder_lr_factor if decoder_only else 1.0)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, t.warmup_steps, steps)
    vae.train().to(device)
    vae.encoder.requires_grad_(not decoder_only)
    vae.quant_conv.requires_grad_(not decoder_only)
    bar = tqdm(range(steps), desc=phase, unit="step")
    for step in bar:
        idx = torch.randint(0, len(images), (t.vae_batch_size,), generator=gen).sort().values.numpy()
        x = _autoencoder_batch(to_model_range(images[idx]), t.vae_crop, t.vae_permute_share, gen).to(device)
        with autocast_bf16(device, t.bf16):
            with torch.set_grad_enabled(not decoder_only):
                posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.mode()).sample.float()
        rec = autoencoder_loss(recon, x, t.vae_edge_weight, t.vae_detail_weight)
        loss = rec if decoder_only else rec + t.vae_kl_weight * posterior.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        if step % log_every(steps) == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{rec.item():.4f}")
            log({"phase": phase, "step": step + 1, "loss": rec.item()})
    vae.requires_grad_(True)
    vae.eval()


@torch.no_grad()
def pin_posterior(vae: torch.nn.Module) -> None:
    """Make the autoencoder's posterior a point: every log-variance becomes diffusers' floor (-30).

    The autoencoder trains on its posterior mode and the denoiser on posterior means, so the predicted
    variance only ever felt the tiny KL weight, which pulls it to the prior's std of 1, the size of the
    latents themselves. Code that samples the posterior, as diffusers' DreamBooth scripts and img2img
    pipelines do, would then train on and start from latents half made of noise.
    """
    channels = vae.config.latent_channels  # quant_conv's outputs: the means, then the log-variances
    vae.quant_conv.weight[channels:].zero_()
    vae.quant_conv.bias[channels:].fill_(LOGVAR_FLOOR)


@torch.no_grad()
def encode_latents(
    vae: torch.nn.Module, images: np.ndarray, device: torch.device, batch: int = 64
) -> torch.Tensor:
    """Posterior means of every image, then of every mirror image: (2N, C, h, w), unscaled; row i and row
    N + i belong to image i."""
    vae.eval().to(device)
    plain, mirrored = [], []
    for i in tqdm(range(0, len(images), batch), desc="encoding latents", unit="batch"):
        x = to_model_range(images[i : i + batch]).to(device)
        z = vae.encode(torch.cat([x, x.flip(-1)])).latent_dist.mean.float().cpu()
        plain.append(z[: len(x)])
        mirrored.append(z[len(x) :])
    return torch.cat(plain + mirrored)
