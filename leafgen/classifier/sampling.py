"""Which train samples an epoch draws, on each DDP rank: shuffled, class-balanced, and with synthetic
images either appended (one more sample each) or swapped in for the real images they vary (DA-Fusion).

Every rank derives the same epoch order from (seed, epoch) and takes every world_size-th index, padded so
all ranks run the same number of steps (DDP needs that); this replaces DistributedSampler, which can draw
neither class-balanced epochs nor swaps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from leafgen.labels import CLASSES

NO_SOURCE = -1
"""``sources`` value of a real sample, and of a synthetic one made from no particular real image
(txt2img): such an image is a variant of every real image of its class."""


@dataclass(frozen=True)
class SyntheticUse:
    """How a training run uses the synthetic samples of its train set (from the arm's recipe)."""

    mode: str = "append"
    """'append' or 'swap' (see :class:`leafgen.config.ArmRecipe`)."""
    swap_probability: float = 0.5
    """Swap mode: the chance that a draw of a real image with variants becomes one of them."""
    loss_weight: float = 1.0
    """Loss weight of synthetic samples."""


@dataclass(frozen=True)
class SyntheticRows:
    """Which train samples are synthetic, and which real sample each one was made from."""

    synthetic: np.ndarray
    """(N,) bool."""
    sources: np.ndarray
    """(N,) int: a synthetic sample's real source index, or NO_SOURCE."""


class EpochSampler(Sampler[int]):
    """This rank's share of an epoch's indices (see the module docstring)."""

    def __init__(
        self,
        labels: np.ndarray,
        seed: int,
        balanced: bool,
        rank: int = 0,
        world_size: int = 1,
        rows: SyntheticRows | None = None,
        use: SyntheticUse | None = None,
    ):
        self.labels, self.seed, self.balanced = np.asarray(labels), seed, balanced
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.swap = rows is not None and use is not None and use.mode == "swap"
        # Swap mode draws from the real samples only; a synthetic one enters only in place of its source.
        self.pool = np.flatnonzero(~rows.synthetic) if self.swap else np.arange(len(self.labels))
        self.variants = _variants(self.labels, rows, self.pool) if self.swap else []
        self.swap_probability = use.swap_probability if self.swap else 0.0
        self.per_rank = -(-len(self.pool) // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def epoch_order(self) -> np.ndarray:
        """Every rank's draws of this epoch, in order (rank r takes positions r, r + world_size, ...)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n, total = len(self.pool), self.per_rank * self.world_size
        if self.balanced:
            labels = self.labels[self.pool]
            p = 1.0 / np.bincount(labels, minlength=len(CLASSES))[labels]
            order = self.pool[rng.choice(n, size=total, replace=True, p=p / p.sum())]
        else:
            order = self.pool[rng.permutation(n)]
            order = np.concatenate([order, order[: total - n]])
        if self.swap:
            order = self._swapped(order, rng)
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order()[self.rank :: self.world_size].tolist())

    def _swapped(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # One coin and one pick per draw, drawn for every position, so the sequence of random numbers and
        # hence every rank's order do not depend on which draws have variants.
        coins = rng.random(len(order)) < self.swap_probability
        picks = rng.random(len(order))
        out = order.copy()
        for k, (index, swap, pick) in enumerate(zip(order, coins, picks)):
            variants = self.variants[index] if swap else None
            if variants is not None and len(variants):
                out[k] = variants[int(pick * len(variants))]
        return out


def _variants(labels: np.ndarray, rows: SyntheticRows, pool: np.ndarray) -> dict[int, np.ndarray]:
    """Real index -> indices of its synthetic variants: those made from it, and the txt2img ones of its
    class (a variant of every real image)."""
    synthetic = np.flatnonzero(rows.synthetic)
    free = synthetic[rows.sources[synthetic] == NO_SOURCE]
    out = {}
    for index in pool:
        own = synthetic[rows.sources[synthetic] == index]
        anywhere = free[labels[free] == labels[index]]
        out[int(index)] = np.concatenate([own, anywhere])
    return out
