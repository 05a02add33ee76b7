"""Typed configuration of the comparison (the ``eval`` section): the arms as recipes, the references they
are measured against, and the independent judge. Same conventions as :mod:`leafgen.config.sections`.

An arm is a named recipe (DESIGN.md, "Arms are recipes"): which train set (the real split, the real split
plus accepted synthetic images, or synthetic images in place of the real target-class ones), which
rebalancing, and how synthetic images are drawn and weighted. A new way of using synthetic data is a new
recipe field, not a new stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from leafgen.config.fields import FieldError, positive, validation_metrics

Balance = Literal["none", "sampling", "loss"]
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class ArmRecipe:
    name: str = ""
    """Unique name of the arm; also its folder under arms/ or retrain/ (letters, digits, _ and -)."""
    train: Literal["real", "mix", "synthetic_only"] = "real"
    """Train set: 'real' (the train split), 'mix' (the train split plus accepted synthetic target-class
    images, mix.synthetic_ratio per real one) or 'synthetic_only' (the real target-class train images
    replaced by the mix's synthetic ones; every other class real: the Classification Accuracy Score)."""
    balance: Balance = "none"
    """Rebalancing: 'none', 'sampling' (each class drawn equally often) or 'loss' (inverse-frequency
    class weights in the cross-entropy)."""
    synthetic_mode: Literal["append", "swap"] = "append"
    """'append': every synthetic image is one more sample of the epoch. 'swap' (DA-Fusion): the epoch
    draws real images only, and each draw of a real target-class image is replaced, with probability
    swap_probability, by one of its synthetic variants (an img2img image is a variant of its source; a
    txt2img image is a variant of every real one). Only for train: mix."""
    swap_probability: float = 0.5
    """Swap mode: probability that a draw of a real target-class image is replaced by a variant (DA-Fusion
    uses 0.5)."""
    synthetic_loss_weight: float = 1.0
    """Loss weight of synthetic samples (real samples weigh 1): scales their gradient and nothing else."""

    def __post_init__(self) -> None:
        if not ARM_NAME.match(self.name):
            raise FieldError("name", f"must be letters, digits, _ or - (a folder name), got {self.name!r}")
        if not 0 <= self.swap_probability <= 1:
            raise FieldError("swap_probability", f"must be in [0, 1], got {self.swap_probability}")
        positive("synthetic_loss_weight", self.synthetic_loss_weight, allow_zero=True)
        if self.train == "real":
            for key, default in (("synthetic_mode", "append"), ("synthetic_loss_weight", 1.0)):
                if getattr(self, key) != default:
                    raise FieldError(key, "only applies to arms that train on synthetic images (train: mix)")
        if self.train == "synthetic_only" and self.synthetic_mode == "swap":
            raise FieldError(
                "synthetic_mode",
                "swap replaces real target-class images, which a synthetic_only arm has none of: use append",
            )

    @property
    def synthetic(self) -> bool:
        """Whether the arm trains on synthetic images (and so needs the generate, gate and mix stages)."""
        return self.train != "real"


def default_arms(balance: Balance = "sampling") -> tuple[ArmRecipe, ...]:
    """The four arms every run compares: the plain recipe, the cheap fix (rebalancing), synthetic images
    appended, and synthetic images together with class-balanced sampling (Fill-Up, Diff-Mix)."""
    return (
        ArmRecipe("baseline"),
        ArmRecipe("balanced", balance=balance),
        ArmRecipe("augmented", train="mix"),
        ArmRecipe("augmented_balanced", train="mix", balance="sampling"),
    )


@dataclass
class JudgeConfig:
    """The independent judge: the classifier that measures what generated images show (DreamBooth's
    effect, the drift probe, the generated set). Never the gating classifier; trained from the train
    split only, with its own recipe fixed here rather than picked per run."""

    seed: int = 1000
    """Seed of the judge's training; it must differ from classifier.seed (the gating classifier's)."""
    balance: Balance = "sampling"
    """Rebalancing of the judge's training: a judge must find the minority class to count it."""
    epochs: int = 8
    """Epochs of the judge's training (the arms train classifier.epochs)."""
    learning_rate: float | None = None
    """Peak learning rate; None: classifier.learning_rate."""
    label_smoothing: float | None = None
    """Cross-entropy label smoothing; None: classifier.label_smoothing."""
    checkpoint_metric: str | None = None
    """Validation metric that picks the judge's best epoch; None: classifier.checkpoint_metric."""
    num_workers: int | None = None
    """Ray Train workers of the judge's training; None: classifier.num_workers. Part of the recipe: DDP
    splits each batch across workers (batch-norm statistics per worker, augmentation per rank), so the
    same recipe and seed train another model on another worker count."""
    min_accuracy: float = 0.93
    """The judge is reported as weak, at the top of every section it measures for, below this test
    accuracy."""
    min_target_recall: float = 0.80
    """... or below this test recall of the target class."""
    max_confusion: float = 0.10
    """... or when it puts more than this share of any other class's test images in the target class
    (for multiple_diseases: rust leaves called multiple_diseases)."""

    def __post_init__(self) -> None:
        positive("epochs", self.epochs)
        positive("learning_rate", self.learning_rate)
        positive("num_workers", self.num_workers)
        metrics = validation_metrics()
        if self.checkpoint_metric is not None and self.checkpoint_metric not in metrics:
            raise FieldError(
                "checkpoint_metric", f"must be one of {', '.join(metrics)}, got {self.checkpoint_metric!r}"
            )
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise FieldError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        for name in ("min_accuracy", "min_target_recall", "max_confusion"):
            if not 0 <= getattr(self, name) <= 1:
                raise FieldError(name, f"must be in [0, 1], got {getattr(self, name)}")


@dataclass
class EvalConfig:
    seeds: tuple[int, ...] = (0, 1, 2)
    """Classifier seeds each arm is trained with."""
    balance: Balance = "sampling"
    """Rebalancing of the default ``balanced`` arm when ``eval.arms`` is not given."""
    arms: tuple[ArmRecipe, ...] | None = None
    """The arms compared, in order: a list of recipes (name, train, balance, synthetic_mode,
    swap_probability, synthetic_loss_weight). None: baseline, balanced (eval.balance), augmented and
    augmented_balanced. A dotted override or Tune key may name an arm:
    eval.arms.augmented.swap_probability."""
    references: tuple[str, ...] = ("baseline", "balanced")
    """Arms every other arm is compared against (paired differences with bootstrap intervals)."""
    bootstrap_samples: int = 1000
    """Bootstrap resamples of the test images for confidence intervals."""
    drift_samples: int = 64
    """Samples per model of the drift probe's leaf prompts (the instance and class prompts first): their
    judged shares get 95% intervals from these."""
    drift_other_samples: int = 8
    """Samples per model of the probe's other prompts (cat, sea, ...): only their feature distance is
    measured, since a leaf classifier has no right answer for them."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The independent judge's recipe and the bars below which it is reported as weak."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise FieldError("seeds", "needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise FieldError("seeds", f"repeats a seed: {list(self.seeds)}")
        positive("bootstrap_samples", self.bootstrap_samples)
        positive("drift_samples", self.drift_samples)
        positive("drift_other_samples", self.drift_other_samples)
        if self.arms is None:
            self.arms = default_arms(self.balance)
        if not self.arms:
            raise FieldError("arms", "needs at least one arm")
        names = [arm.name for arm in self.arms]
        for name in names:
            if names.count(name) > 1:
                raise FieldError(f"arms[{name}]", f"two arms are named {name!r}; each arm needs its own name")
        for ref in self.references:
            if ref not in names:
                raise FieldError("references", f"{ref!r} is not an arm; the arms are: {', '.join(names)}")

    def arm(self, name: str) -> ArmRecipe:
        return next(a for a in self.arms or () if a.name == name)
