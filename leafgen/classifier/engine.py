"""The classifier's training and evaluation steps, as plain PyTorch (no Ray).

Images come from the decode-once cache as uint8 arrays; augmentation runs per sample on those pixels.
The same functions serve a single process and each DDP worker (``distributed/`` wraps them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2 as T
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from leafgen.config import ClassifierConfig
from leafgen.labels import CLASSES

# Statistics of ImageNet, which torchvision's pretrained weights expect; harmless for random init.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def train_transform(size: tuple[int, int]) -> T.Compose:
    # No hue jitter: the colour of a lesion (orange rust, olive scab) is what tells the classes apart.
    return T.Compose(
        [
            T.RandomResizedCrop(
                size, scale=(0.6, 1.0), ratio=(size[1] / size[0] * 0.85, size[1] / size[0] * 1.15)
            ),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomRotation(15),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.15),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(MEAN, STD),
        ]
    )


def eval_transform() -> T.Compose:
    return T.Compose([T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])


class ArrayDataset(Dataset):
    """(image, label) pairs from an (N, H, W, 3) uint8 array, e.g. a memory-mapped cache entry."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], transform: T.Compose):
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)  # copy: the cache is read-only
        return self.transform(pixels), int(self.labels[i])


def class_weights(labels: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency ('balanced') weights per class, for a class-weighted loss."""
    present = np.unique(labels)
    weights = np.ones(len(CLASSES), dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
    return torch.from_numpy(weights)


def balanced_sampler(labels: Sequence[int], seed: int) -> WeightedRandomSampler:
    """Draws each class equally often (with replacement), one epoch = as many draws as images."""
    labels = np.asarray(labels)
    per_sample = 1.0 / np.bincount(labels, minlength=len(CLASSES))[labels]
    return WeightedRandomSampler(
        per_sample.tolist(),
        num_samples=len(labels),
        replacement=True,
        generator=torch.Generator().manual_seed(seed),
    )


def build_loss(cfg: ClassifierConfig, train_labels: Sequence[int]) -> nn.Module:
    weight = class_weights(train_labels) if cfg.class_weighted_loss else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def build_optimizer(model: nn.Module, cfg: ClassifierConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.learning_rate,
            momentum=0.9,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: ClassifierConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first epoch, then cosine decay to zero or a constant rate."""
    warmup, total = steps_per_epoch, max(steps_per_epoch * cfg.epochs, steps_per_epoch + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    opt: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, int]:
    """One pass over ``loader``; returns (mean loss, images seen)."""
    model.train()
    loss_fn = loss_fn.to(device)
    channels_last = device.type == "cuda"
    total, seen = 0.0, 0
    for x, y in loader:
        x = x.to(
            device,
            non_blocking=True,
            memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        )
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        scheduler.step()
        total += loss.item() * len(y)
        seen += len(y)
    return total / max(seen, 1), seen


@torch.no_grad()
def predict_probs(
    model: nn.Module, loader: DataLoader, device: torch.device, flip_tta: bool = False
) -> np.ndarray:
    """(N, C) softmax probabilities in loader order; ``flip_tta`` averages with the mirrored image."""
    model.eval()
    out = []
    for x, _ in loader:
        x = x.to(device)
        probs = model(x).float().softmax(1)
        if flip_tta:
            probs = (probs + model(x.flip(3)).float().softmax(1)) / 2
        out.append(probs.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(CLASSES)), dtype=np.float32)
