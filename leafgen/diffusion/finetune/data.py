"""DreamBooth training examples: instance and class images at the model's resolution, and their latents.

Images of any size (Kaggle's are 2048x1365) are resized to cover ``height x width`` and cropped, at the
centre or at random (``dreambooth.crop``). The autoencoder is frozen in DreamBooth, so with centre crops
each image's latent distribution is computed once and only sampled per step (``LatentCache``); random
crops must be encoded every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision.transforms.v2 as T
from PIL import Image

from leafgen.data.images import open_rgb
from leafgen.errors import LeafgenError


def cover(img: Image.Image, height: int, width: int) -> Image.Image:
    """Resize keeping the aspect ratio so the image covers ``height x width`` exactly on one side."""
    scale = max(height / img.height, width / img.width)
    size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def image_transform(height: int, width: int, crop: str) -> T.Compose:
    """PIL image -> float tensor in [-1, 1] of ``height x width`` (the autoencoder's input range)."""
    cropper = T.CenterCrop((height, width)) if crop == "center" else T.RandomCrop((height, width))
    return T.Compose(
        [
            T.Lambda(lambda img: cover(img, height, width)),
            cropper,
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize([0.5], [0.5]),
        ]
    )


class ImageSet:
    """A list of images and the transform that turns each into a model input."""

    def __init__(self, paths: Sequence[Path], height: int, width: int, crop: str):
        if not paths:
            raise LeafgenError("DreamBooth got no images for one of its sets (instance or class images)")
        self.paths = list(paths)
        self.transform = image_transform(height, width, crop)
        self.random = crop == "random"
        # Decoded once: DreamBooth sets are small (tens to hundreds of images).
        self.images = [open_rgb(p, "a DreamBooth training image") for p in self.paths]

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.transform(self.images[i]) for i in indices])


class LatentCache:
    """Posterior mean and std of every image of a centre-cropped set; ``sample`` draws latents from them
    exactly as encoding each step would, without running the encoder again."""

    def __init__(self, vae: torch.nn.Module, images: ImageSet, device: torch.device, batch: int = 16):
        means, stds = [], []
        with torch.no_grad():
            for i in range(0, len(images), batch):
                x = images.pixels(range(i, min(i + batch, len(images)))).to(device, vae.dtype)
                dist = vae.encode(x).latent_dist
                means.append(dist.mean.float())
                stds.append(dist.std.float())
        self.mean, self.std = torch.cat(means), torch.cat(stds)

    def sample(self, indices: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        idx = torch.as_tensor(list(indices))
        eps = torch.randn(self.mean[idx].shape, generator=generator).to(self.mean.device)
        return self.mean[idx] + self.std[idx] * eps
