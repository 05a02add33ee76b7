"""Checks of a text-to-image model by their effect on a classifier.

Two questions: does the autoencoder keep what tells the classes apart (``roundtrip``, scored with
``per_class_accuracy``), and do samples show what their prompt asks (``generate``, scored with
``class_shares`` by an independent judge classifier).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from leafgen.classifier.engine import eval_transform, predict_probs
from leafgen.diffusion.components import initial_noise


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float images (N, 3, H, W) resized to ``size`` = (height, width), antialiased like PIL's resize."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x.float()
    return F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)


def to_unit_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1] (a copy: caches are memory-mapped read-only)."""
    return torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).float() / 255


def classifier_probs(
    model: nn.Module, images: torch.Tensor, size: tuple[int, int], batch: int = 128
) -> np.ndarray:
    """Class probabilities of float images in [0, 1], (N, 3, H, W), resized to the classifier's ``size``."""
    device = next(model.parameters()).device
    x = eval_transform()(resize_images(images, size))
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=batch)
    return predict_probs(model, loader, device)


@torch.no_grad()
def classifier_features(
    model: nn.Module, images: torch.Tensor, size: tuple[int, int], batch: int = 128
) -> torch.Tensor:
    """The classifier's penultimate features (the input of its last linear layer), (N, D)."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].cpu()))
    try:
        classifier_probs(model, images, size, batch)
    finally:
        handle.remove()
    return torch.cat(captured)


def prompt_slug(prompt: str) -> str:
    """A file-name-safe form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_") or "empty"


@torch.no_grad()
def roundtrip(vae: nn.Module, pixels: np.ndarray, size: tuple[int, int], batch: int = 64) -> torch.Tensor:
    """Encode and decode uint8 images (N, H, W, 3) at the autoencoder's ``size``; floats in [0, 1]."""
    vae.eval()
    out = []
    for i in tqdm(range(0, len(pixels), batch), desc="autoencoder round-trips", unit="batch", leave=False):
        x = resize_images(to_unit_float(pixels[i : i + batch]), size)
        z = vae.encode(x * 2 - 1).latent_dist.mode()
        out.append(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def per_class_accuracy(probs: np.ndarray, labels: Sequence[int], classes: Sequence[str]) -> dict[str, float]:
    """Share of each class's images whose arg-max is that class (recall), for classes present."""
    pred, labels = probs.argmax(1), np.asarray(labels)
    return {c: float((pred[labels == k] == k).mean()) for k, c in enumerate(classes) if (labels == k).any()}


def class_shares(probs: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Share of images the classifier puts in each class."""
    counts = np.bincount(probs.argmax(1), minlength=len(classes))
    return {c: float(n / len(probs)) for c, n in zip(classes, counts)}


@torch.no_grad()
def generate(
    pipe: Any,
    prompt: str,
    n: int,
    seed: int,
    batch: int = 32,
    steps: int = 20,
    guidance: float = 3.0,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``n`` samples of ``prompt`` as floats in [0, 1], (n, 3, H, W); sample i uses seed ``seed + i``."""
    height, width = size or (pipe.unet.config.sample_size * pipe.vae_scale_factor,) * 2
    out = []
    for i in range(0, n, batch):
        k = min(batch, n - i)
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(k)]
        images = pipe(
            [prompt] * k,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            latents=initial_noise(pipe, gens, height, width),
            height=height,
            width=width,
            output_type="pt",
        ).images
        out.append(images.cpu().float())
    return torch.cat(out)
