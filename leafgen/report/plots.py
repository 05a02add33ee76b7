"""The report's figures: matplotlib figures (returned, so a notebook shows them inline; :func:`save`
writes one atomically) and torchvision image grids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve

from leafgen import atomic
from leafgen.data.images import DEFAULT_MAX_PIXELS
from leafgen.labels import CLASSES

ARM_COLOURS = {
    "baseline": "tab:blue",
    "balanced": "tab:orange",
    "augmented": "tab:green",
    "augmented_balanced": "tab:red",
}
_OTHER_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def arm_colour(arm: str, arms: Sequence[str]) -> str:
    """The default arms keep their colours in every figure; other arms take the remaining ones in order."""
    if arm in ARM_COLOURS:
        return ARM_COLOURS[arm]
    extra = [a for a in arms if a not in ARM_COLOURS]
    return _OTHER_COLOURS[extra.index(arm) % len(_OTHER_COLOURS)]


def _pyplot():
    # No forced backend: headless processes get Agg by themselves, and a notebook keeps its inline one.
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)
    return path


def recall_bars(comparison: dict):
    """Per-class recall and accuracy of each arm: mean over seeds, seed spread as error bars."""
    plt = _pyplot()
    names = [*(f"recall/{c}" for c in CLASSES), "accuracy"]
    arms = comparison["arms"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        stats = [comparison["test"][arm][n] for n in names]
        ax.bar(
            np.arange(len(names)) + (i - (len(arms) - 1) / 2) * width,
            [s["mean"] for s in stats],
            width,
            yerr=[s["std"] or 0 for s in stats],
            label=arm,
            color=arm_colour(arm, arms),
            capsize=3,
        )
    ax.set_xticks(np.arange(len(names)), [n.split("/")[-1] for n in names])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test recall / accuracy")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def tradeoff_scatter(comparison: dict):
    """Target-class recall against the mean recall of the other classes: one small point per arm and
    seed, one large point per arm (the means). Up is finding the class, right is not paying for it."""
    from leafgen.evaluation.comparison import other_recall

    plt = _pyplot()
    target, arms = comparison["target_class"], comparison["arms"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for arm in arms:
        colour = arm_colour(arm, arms)
        ys = comparison["test"][arm][f"recall/{target}"]["per_seed"]
        xs = other_recall(comparison, arm)
        ax.scatter(xs, ys, s=18, color=colour, alpha=0.55)
        ax.scatter([np.mean(xs)], [np.mean(ys)], s=110, color=colour, edgecolor="black", label=arm)
    ax.set_xlabel("mean test recall of the other classes")
    ax.set_ylabel(f"test recall of {target}")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def confusion_matrices(y: np.ndarray, probs: Mapping[str, Sequence[np.ndarray]]):
    """One confusion matrix per arm, counts summed over seeds (rows: true class)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(probs), figsize=(4.6 * len(probs), 4.4), squeeze=False)
    labels = list(range(len(CLASSES)))
    for ax, (arm, per_seed) in zip(axes[0], probs.items()):
        matrix = sum(confusion_matrix(y, p.argmax(1), labels=labels) for p in per_seed)
        ConfusionMatrixDisplay(matrix, display_labels=CLASSES).plot(ax=ax, colorbar=False, cmap="Greens")
        ax.set_title(f"{arm} ({len(per_seed)} seed(s) summed)")
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    return fig


def roc_curves(y: np.ndarray, probs: Mapping[str, Sequence[np.ndarray]]):
    """One-vs-rest ROC curve per class; one line per arm and seed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(4 * len(CLASSES), 3.8), squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[0], CLASSES)):
        positives = y == k
        for arm, per_seed in probs.items():
            for s, p in enumerate(per_seed):
                if 0 < positives.sum() < len(y):
                    fpr, tpr, _ = roc_curve(positives, p[:, k])
                    colour = arm_colour(arm, list(probs))
                    ax.plot(fpr, tpr, color=colour, alpha=0.8, lw=1, label=arm if s == 0 else None)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
        ax.set_title(name)
        ax.set_xlabel("false positive rate")
        if k == 0:
            ax.set_ylabel("true positive rate")
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def image_grid(
    paths: Sequence[Path],
    path: Path,
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    nrow: int = 8,
) -> Path | None:
    """A torchvision grid of ``paths`` resized to ``size`` = (height, width); None when there are none."""
    from torchvision.utils import save_image

    from leafgen.data.cache import decode_resized
    from leafgen.diffusion.probes.evaluate import to_unit_float

    if not paths:
        return None
    images = to_unit_float(np.stack([decode_resized(p, size, max_pixels) for p in paths]))
    with atomic.atomic_path(path) as tmp:
        save_image(images, tmp, format="png", nrow=nrow, padding=1)
    return path
