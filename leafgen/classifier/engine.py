"""The classifier's training and evaluation steps, as plain PyTorch (no Ray).

Images come from the decode-once cache as uint8 arrays; augmentation runs per sample on those pixels.
The same functions serve a single process and each DDP worker (``distributed/`` wraps them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DataLoader, Dataset

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
    """(image, label) pairs from an (N, H, W, 3) uint8 array, e.g. a memory-mapped cache entry; with
    ``weights``, (image, label, loss weight) triples."""

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int],
        transform: T.Compose,
        weights: np.ndarray | None = None,
    ):
        self.images, self.labels, self.transform = images, np.asarray(labels, dtype=np.int64), transform
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple:
        pixels = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)  # copy: the cache is read-only
        item = (self.transform(pixels), int(self.labels[i]))
        return item if self.weights is None else (*item, float(self.weights[i]))


def class_weights(labels: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency ('balanced') weights per class, for a class-weighted loss."""
    present = np.unique(labels)
    weights = np.ones(len(CLASSES), dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
    return torch.from_numpy(weights)


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with optional class weights and per-sample weights.

    The loss is sum(class weight x sample weight x CE) / sum(class weight) over the batch: with every
    sample weight 1 it is exactly ``nn.CrossEntropyLoss``'s mean, and a sample weight w scales that
    sample's gradient by w and leaves every other sample's alone (the denominator does not see it).
    """

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        per = F.cross_entropy(
            logits, target, weight=self.weight, label_smoothing=self.label_smoothing, reduction="none"
        )
        denominator = self.weight[target].sum() if self.weight is not None else per.new_tensor(len(per))
        if sample_weight is not None:
            per = per * sample_weight.to(per.dtype)
        return per.sum() / denominator


def build_loss(cfg: ClassifierConfig, train_labels: Sequence[int]) -> WeightedCrossEntropy:
    """The training loss; with a class-weighted loss, the weights are the inverse class frequencies of the
    set it trains on (``train_labels``)."""
    weight = class_weights(train_labels) if cfg.class_weighted_loss else None
    return WeightedCrossEntropy(weight, cfg.label_smoothing)


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
    for x, y, *weight in loader:
        x = x.to(
            device,
            non_blocking=True,
            memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        )
        y = y.to(device, non_blocking=True)
        sample_weight = weight[0].to(device, non_blocking=True) if weight else None
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(x), y, sample_weight)
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
    for x, *_ in loader:
        x = x.to(device)
        probs = model(x).float().softmax(1)
        if flip_tta:
            probs = (probs + model(x.flip(3)).float().softmax(1)) / 2
        out.append(probs.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(CLASSES)), dtype=np.float32)
