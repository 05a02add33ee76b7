"""Typed configuration for every pipeline stage: one dataclass per section of ``PipelineConfig`` (the
text-to-image sections live in :mod:`leafgen.config.generative`).

Each field carries a docstring (``leafgen config explain`` prints them). Checks that involve one section
live in its ``__post_init__`` and raise :class:`~leafgen.config.fields.FieldError` naming the field; the
loader adds the section prefix so users see the full dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from leafgen.config.evaluation import EvalConfig
from leafgen.config.fields import FieldError, positive, validation_metrics
from leafgen.config.generative import BaseModelConfig, DreamBoothConfig, GateConfig, GenerateConfig
from leafgen.labels import CLASSES


@dataclass
class ProceduralConfig:
    scale: float = 1.0
    """Size of the embedded dataset relative to Kaggle's 1821 training images (class proportions kept)."""
    size: int = 192
    """Width in pixels of each procedural image; height is 2/3 of it, Kaggle's 2048x1365 aspect."""
    seed: int = 0
    """Seed of the procedural dataset; every image is a pure function of (seed, image index)."""
    test_fraction: float = 1.0
    """Unlabelled test.csv images per training image (Kaggle ships as many test images as training ones)."""

    def __post_init__(self) -> None:
        positive("scale", self.scale)
        positive("test_fraction", self.test_fraction, allow_zero=True)
        if not 32 <= self.size <= 4096:
            raise FieldError("size", f"must be between 32 and 4096 pixels, got {self.size}")


@dataclass
class DataConfig:
    root: str | None = None
    """Kaggle-format folder (train.csv, test.csv, images/<image_id>.jpg). None: the embedded procedural
    dataset, generated into the run directory from ``data.procedural``."""
    procedural: ProceduralConfig = field(default_factory=ProceduralConfig)
    """Settings of the embedded procedural dataset; ignored when ``data.root`` is set."""
    target_class: str = "multiple_diseases"
    """The minority class that DreamBooth learns and synthetic images add to."""
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """Train / val / test fractions of train.csv; the test part is held out for the final comparison."""
    split_seed: int = 0
    """Seed of the stratified split; the same seed and data always give the same split."""
    on_bad_image: Literal["fail", "skip"] = "fail"
    """Unreadable, truncated or oversized images: 'fail' lists them all and stops, 'skip' drops and
    counts them."""
    max_image_pixels: int = 60_000_000
    """Decompression-bomb guard: images with more pixels than this are treated as bad images."""
    decode_workers: int = 4
    """Threads used to decode images while validating a folder."""

    def __post_init__(self) -> None:
        if self.target_class not in CLASSES:
            raise FieldError(
                "target_class", f"must be one of {', '.join(CLASSES)}, got {self.target_class!r}"
            )
        if any(f <= 0 for f in self.split) or abs(sum(self.split) - 1.0) > 1e-6:
            raise FieldError("split", f"needs three positive fractions summing to 1, got {list(self.split)}")
        positive("max_image_pixels", self.max_image_pixels)
        positive("decode_workers", self.decode_workers)


@dataclass
class ClassifierConfig:
    arch: str = "resnet18"
    """torchvision architecture name (resnet18, resnet50, efficientnet_b0, ...) with a linear head."""
    weights: str = "none"
    """'imagenet' (torchvision's weights, cached locally), 'embedded' (the ResNet18 backbone pretrained on
    procedural leaves that ships with leafgen), 'none' (random init) or a path to a weights file."""
    image_size: int = 128
    """Side of the square crop the classifier trains and predicts on."""
    epochs: int = 10
    """Passes over the training split."""
    batch_size: int = 64
    """Images per optimiser step, summed over all workers."""
    learning_rate: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 1e-4
    """Decoupled weight decay."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """Optimiser: AdamW, or SGD with Nesterov momentum 0.9."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule after a linear warm-up over the first epoch."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    seed: int = 0
    """Seed of initialisation, sampling and augmentation."""
    num_workers: int = 1
    """Ray Train workers (DDP processes)."""
    balanced_sampling: bool = False
    """Sample each class equally often within an epoch."""
    class_weighted_loss: bool = False
    """Weight the cross-entropy by inverse class frequency."""
    checkpoint_metric: str = "val/mean_auc"
    """Validation metric (maximised) that picks the best checkpoint, e.g. val/target_recall."""
    keep_checkpoints_after_export: bool = False
    """Keep Ray Train's checkpoints (weights with optimiser state: ~130 MB each for a ResNet18) once the
    best model is exported and measured. False: they are deleted then, here and in the run's bucket; an
    unfinished training keeps them and resumes from them. Not part of the stage key: changing it redoes
    nothing."""
    max_failures: int = 2
    """Worker failures Ray Train recovers from (restarting from the last checkpoint) before giving up."""
    flip_tta: bool = False
    """Average predictions with the mirrored image at test and predict time."""

    def __post_init__(self) -> None:
        for name in ("image_size", "epochs", "batch_size", "learning_rate", "num_workers"):
            positive(name, getattr(self, name))
        positive("weight_decay", self.weight_decay, allow_zero=True)
        metrics = validation_metrics()
        if self.checkpoint_metric not in metrics:
            raise FieldError(
                "checkpoint_metric", f"must be one of {', '.join(metrics)}, got {self.checkpoint_metric!r}"
            )
        positive("max_failures", self.max_failures, allow_zero=True)
        if not 0 <= self.label_smoothing < 1:
            raise FieldError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")


@dataclass
class MixConfig:
    synthetic_ratio: float = 1.0
    """Accepted synthetic target-class images used per real training image of that class."""

    def __post_init__(self) -> None:
        positive("synthetic_ratio", self.synthetic_ratio, allow_zero=True)


@dataclass
class TuneConfig:
    space: dict[str, Any] = field(default_factory=dict)
    """Search space: dotted config key -> {choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]} or
    {randint: [lo, hi]} (hi excluded); grid search takes choices only."""
    num_samples: int = 4
    """Trials to run (for grid search: repeats of the whole grid)."""
    search_alg: Literal["random", "grid", "optuna"] = "random"
    """Search algorithm: random sampling, the full grid of choices, or Optuna's TPE through Ray Tune."""
    scheduler: Literal["fifo", "asha"] = "fifo"
    """Trial scheduler; 'asha' stops weak trials early, measured in classifier epochs."""
    grace_period: int = 1
    """ASHA: classifier epochs every trial runs before it may be stopped."""
    metric: str = "val/target_recall"
    """Objective every trial reports (target-class accuracy on the validation split by default); the
    held-out test split is never used for selection."""
    tie_breaker: str | None = "val/mean_auc"
    """Second objective, same direction as ``mode``, that orders trials with equal ``metric``."""
    mode: Literal["max", "min"] = "max"
    """Whether the objective is maximised or minimised."""
    max_concurrent_trials: int | None = None
    """Trials running at once; None: as many as the cluster's GPUs allow (one on a CPU-only cluster)."""
    seed: int = 0
    """Seed of the search algorithm's sampling."""
    name: str = "search"
    """Name of the Tune experiment under ``storage_path``; the same name resumes it."""
    storage_path: str | None = None
    """Where Tune writes results and TensorBoard logs (local path or shared-storage URI); None:
    <run_dir>/tune."""
    arm: str | None = None
    """The arm whose recipe each trial trains and scores on validation; its recipe fields are searchable
    (eval.arms.<arm>.<field>). None: the first arm that trains on synthetic images."""

    def __post_init__(self) -> None:
        positive("num_samples", self.num_samples)
        positive("grace_period", self.grace_period)
        positive("max_concurrent_trials", self.max_concurrent_trials)
        if not self.name or "/" in self.name:
            raise FieldError("name", f"must be a non-empty folder name, got {self.name!r}")
        for name in ("metric", "tie_breaker"):
            value = getattr(self, name)
            if value is not None and not value.startswith("val/"):
                raise FieldError(
                    name,
                    f"must be a validation metric (val/...), got {value!r}: trials never see the test split",
                )


@dataclass
class RayConfig:
    address: str | None = None
    """Cluster to join ('auto', 'ray://host:port'); None: RAY_ADDRESS if set, else a local instance."""
    num_cpus: int | None = None
    """CPUs of a local instance; None: all of this machine's."""
    num_gpus: int | None = None
    """GPUs of a local instance; None: all visible."""
    dashboard_host: str = "127.0.0.1"
    """Interface the local dashboard binds; loopback unless you mean to expose it."""
    temp_dir: str | None = None
    """Ray's session directory; keep it short (Unix socket paths are limited to 107 bytes)."""
    job_cpus: int | None = None
    """CPUs one training run or generation pool may take; None: all of the cluster's. ``leafgen tune``
    sets it per trial, so concurrent trials share the cluster instead of queueing behind each other."""
    job_gpus: int | None = None
    """GPUs one training run or generation pool may take; None: all of the cluster's."""

    def __post_init__(self) -> None:
        positive("num_cpus", self.num_cpus)
        positive("num_gpus", self.num_gpus, allow_zero=True)
        positive("job_cpus", self.job_cpus)
        positive("job_gpus", self.job_gpus, allow_zero=True)


@dataclass
class PipelineConfig:
    run_dir: str = "runs/demo"
    """Holds every stage's outputs, config.yaml and provenance.json: a path (on a cluster, one every node
    mounts) or an object-store URI such as ``s3://bucket/runs/demo``, mirrored on each node
    (:mod:`leafgen.run_storage`)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset, split and image policy."""
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    """Baseline and retrained classifier."""
    base_model: BaseModelConfig = field(default_factory=BaseModelConfig)
    """Text-to-image base model."""
    dreambooth: DreamBoothConfig = field(default_factory=DreamBoothConfig)
    """DreamBooth fine-tune on the target class."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """Synthetic image generation."""
    gate: GateConfig = field(default_factory=GateConfig)
    """Quality gate for synthetic images."""
    mix: MixConfig = field(default_factory=MixConfig)
    """Mixing real and synthetic training images."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Final comparison on the held-out test split."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """Ray Tune search."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray runtime."""

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise FieldError("run_dir", "must not be empty")
        if self.dreambooth.identifier_token not in self.dreambooth.instance_prompt:
            raise FieldError(
                "dreambooth.instance_prompt",
                f"must contain the identifier token {self.dreambooth.identifier_token!r}",
            )
        if self.tune.arm is not None and self.tune.arm not in [arm.name for arm in self.eval.arms or ()]:
            raise FieldError(
                "tune.arm",
                f"{self.tune.arm!r} is not an arm; the arms are: "
                + ", ".join(arm.name for arm in self.eval.arms or ()),
            )
        synthetic = [arm.name for arm in self.eval.arms or () if arm.synthetic]
        if synthetic and self.generate.num_images == 0:
            raise FieldError(
                f"eval.arms[{synthetic[0]}].train",
                "trains on synthetic images, but generate.num_images is 0: generate some, or train: real",
            )
        clustered = self.dreambooth.clusters != 1
        if clustered and self.generate.mode == "img2img" and self.generate.cluster_allocation == "equal":
            raise FieldError(
                "generate.cluster_allocation",
                "img2img rows take their source image's cluster, so they follow the clusters' sizes: use "
                "size, or generate.mode txt2img",
            )
