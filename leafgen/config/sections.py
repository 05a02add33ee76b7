"""Typed configuration for every pipeline stage: one dataclass per section of ``PipelineConfig``.

Each field carries a docstring (``leafgen config explain`` prints them). Checks that involve one section
live in its ``__post_init__`` and raise :class:`FieldError` naming the field; the loader adds the section
prefix so users see the full dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from leafgen.errors import ConfigError
from leafgen.labels import CLASSES


class FieldError(ConfigError):
    """A value that fails validation; ``field`` is relative to the dataclass that raised it."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        self.message = message
        super().__init__(f"{field_name}: {message}")


def _positive(name: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise FieldError(name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


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
        _positive("scale", self.scale)
        _positive("test_fraction", self.test_fraction, allow_zero=True)
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
        _positive("max_image_pixels", self.max_image_pixels)
        _positive("decode_workers", self.decode_workers)


@dataclass
class ClassifierConfig:
    arch: str = "resnet18"
    """torchvision architecture name (resnet18, resnet50, efficientnet_b0, ...) with a linear head."""
    weights: str = "none"
    """'imagenet' (torchvision's weights, cached locally), 'none' (random init) or a path to a weights
    file."""
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
    keep_checkpoints: int = 2
    """Checkpoints kept on storage (the best ones by ``checkpoint_metric``)."""
    max_failures: int = 2
    """Worker failures Ray Train recovers from (restarting from the last checkpoint) before giving up."""
    flip_tta: bool = False
    """Average predictions with the mirrored image at test and predict time."""

    def __post_init__(self) -> None:
        for name in ("image_size", "epochs", "batch_size", "learning_rate", "num_workers"):
            _positive(name, getattr(self, name))
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        metrics = ["val/accuracy", "val/mean_auc", "val/target_recall"]
        metrics += [f"val/{kind}/{c}" for kind in ("recall", "auc") for c in CLASSES]
        if self.checkpoint_metric not in metrics:
            raise FieldError(
                "checkpoint_metric", f"must be one of {', '.join(metrics)}, got {self.checkpoint_metric!r}"
            )
        _positive("keep_checkpoints", self.keep_checkpoints)
        _positive("max_failures", self.max_failures, allow_zero=True)
        if not 0 <= self.label_smoothing < 1:
            raise FieldError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")


@dataclass
class BaseModelConfig:
    name_or_path: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """Hub id or local diffusers folder of the text-to-image base model; ``embedded`` is the tiny model
    committed in the package (leafgen/assets/tiny-leaf-t2i)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when ``name_or_path`` is a hub id."""
    resolution: int = 512
    """Height in pixels the base model generates and is fine-tuned at."""
    width: int | None = None
    """Width in pixels; None means square (``resolution``). Kaggle's photos are 3:2 landscape."""

    def __post_init__(self) -> None:
        _positive("resolution", self.resolution)
        _positive("width", self.width)


@dataclass
class DreamBoothConfig:
    identifier_token: str = "<disease-leaf>"
    """Identifier of the target class in prompts; must tokenize to one token (see ``new_token``)."""
    new_token: bool = True
    """Add ``identifier_token`` to the tokenizer with its own trained embedding (saved as
    learned_embeds.safetensors); False uses an existing rare token of the vocabulary as is."""
    initializer_token: str = "leaf"
    """Existing token whose embedding a new identifier token starts from."""
    instance_prompt: str = "<disease-leaf> leaf"
    """Prompt paired with the target-class training images."""
    class_prompt: str = "leaf"
    """Prompt of the prior-preservation class images."""
    num_class_images: int = 200
    """Class images generated by the base model for prior preservation."""
    prior_loss_weight: float = 1.0
    """Weight of the prior-preservation loss; 0 disables prior preservation."""
    learning_rate: float = 5e-6
    """Peak learning rate of the UNet (or its LoRA) and a fully trained text encoder."""
    embedding_learning_rate: float = 5e-4
    """Learning rate of a new identifier token's embedding (textual inversion learns at ~1e-3)."""
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    """Learning-rate schedule (diffusers' get_scheduler)."""
    lr_warmup_steps: int = 0
    """Linear warm-up steps of the schedule."""
    max_train_steps: int = 400
    """Optimiser steps."""
    train_batch_size: int = 4
    """Instance images per step and worker (as many class images join them with prior preservation)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated per optimiser step."""
    train_text_encoder: bool = False
    """Fine-tune the whole text encoder too (or its LoRA when lora_rank > 0)."""
    lora_rank: int = 0
    """LoRA rank (peft); 0 means a full fine-tune of the UNet."""
    lora_alpha: float | None = None
    """LoRA alpha; None: equal to the rank (scale 1)."""
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """Modules given LoRA adapters (attention projections, as diffusers' DreamBooth LoRA script does)."""
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """Autocast precision; auto: bf16 where the device computes it natively, else fp16 on CUDA, else none."""
    gradient_checkpointing: bool = False
    """Recompute UNet activations in the backward pass: less memory, ~20-30% more time."""
    use_8bit_adam: bool = False
    """bitsandbytes' 8-bit AdamW (CUDA only; an error if bitsandbytes is missing)."""
    snr_gamma: float | None = None
    """Min-SNR-gamma loss weighting (5.0 is the paper's value); None: plain MSE."""
    noise_offset: float = 0.0
    """Offset noise: adds this times per-channel Gaussian noise to the noise mean (0.1 is common)."""
    crop: Literal["center", "random"] = "center"
    """How images of other sizes are cropped after resizing to cover the resolution."""
    seed: int = 0
    """Seed of initialisation, data order, noise and validation samples."""
    num_workers: int = 1
    """Ray Train workers (DDP processes)."""
    validation_steps: int = 100
    """Generate validation grids every this many steps."""
    validation_prompts: tuple[str, ...] = ("<disease-leaf> leaf", "leaf", "a photo of a leaf")
    """Prompts of the validation grids (instance, class and drift prompts)."""
    num_validation_images: int = 4
    """Images per validation prompt, with fixed seeds 0..n-1."""
    drift_prompts: tuple[str, ...] = ()
    """Prompts the language-drift probe adds to its built-in set (a photo of a leaf, leaf, cat, sea, ...)."""
    checkpointing_steps: int = 100
    """Report a checkpoint every this many steps."""
    keep_checkpoints: int = 2
    """Checkpoints Ray keeps (the latest ones)."""
    max_failures: int = 2
    """Worker-group restarts from the last checkpoint before the run fails."""

    def __post_init__(self) -> None:
        for name in (
            "learning_rate",
            "embedding_learning_rate",
            "max_train_steps",
            "train_batch_size",
            "gradient_accumulation_steps",
            "num_workers",
            "validation_steps",
            "checkpointing_steps",
            "keep_checkpoints",
            "num_validation_images",
            "snr_gamma",
            "lora_alpha",
        ):
            _positive(name, getattr(self, name))
        for name in ("num_class_images", "prior_loss_weight", "lora_rank", "lr_warmup_steps", "max_failures"):
            _positive(name, getattr(self, name), allow_zero=True)
        _positive("noise_offset", self.noise_offset, allow_zero=True)
        if self.prior_loss_weight > 0 and self.num_class_images == 0:
            raise FieldError(
                "num_class_images", "prior preservation (prior_loss_weight > 0) needs class images"
            )
        if not self.identifier_token.strip() or " " in self.identifier_token:
            raise FieldError("identifier_token", f"must be one word, got {self.identifier_token!r}")


@dataclass
class GenerateConfig:
    num_images: int = 200
    """Synthetic target-class images generated."""
    prompts: tuple[str, ...] = ("<disease-leaf> leaf",)
    """Prompt templates; each image's template is drawn from this list by its own seed."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance."""
    mode: Literal["txt2img", "img2img"] = "txt2img"
    """txt2img, or img2img (SDEdit) from real train-split images of the target class."""
    strength: float = 0.5
    """img2img noise strength in (0, 1]: the share of the denoising schedule re-run from the real image."""
    num_inference_steps: int = 25
    """Denoising steps."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale."""
    scheduler: Literal["dpmsolver++", "ddim", "euler", "euler_ancestral", "pndm", "unipc"] = "dpmsolver++"
    """Sampler, built from the base model's own noise schedule."""
    batch_size: int = 8
    """Prompts per pipeline call (one Ray Data batch)."""
    seed: int = 0
    """Base seed; each image's generator seed derives from it and the image's index only."""
    prompt_table: str | None = None
    """Parquet file of rows to render instead of the table built from this section: columns id and prompt,
    optionally negative_prompt, seed, steps, guidance, mode, strength and source_id (img2img: a train-split
    image of the target class); missing values come from this section."""
    adapter: str | None = None
    """DreamBooth output to generate with: a diffusers pipeline folder (full fine-tune) or a folder with
    ``pytorch_lora_weights.safetensors`` and/or ``learned_embeds.safetensors``; None: the base model."""
    num_actors: int | None = None
    """Generation actors (one pipeline each); None: one per GPU, or CPUs // cpu_threads without GPUs."""
    cpu_threads: int = 2
    """Torch threads (and Ray CPUs) per actor when generating on CPU."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights and activations dtype; auto: float16 on CUDA, float32 on CPU."""

    def __post_init__(self) -> None:
        for name in ("num_inference_steps", "batch_size", "cpu_threads", "num_actors"):
            _positive(name, getattr(self, name))
        _positive("num_images", self.num_images, allow_zero=True)
        _positive("guidance_scale", self.guidance_scale, allow_zero=True)
        if not 0 < self.strength <= 1:
            raise FieldError("strength", f"must be in (0, 1], got {self.strength}")
        if not self.prompts or not all(p.strip() for p in self.prompts):
            raise FieldError("prompts", "needs at least one non-empty prompt template")


@dataclass
class GateConfig:
    threshold: float = 0.5
    """Minimum baseline-classifier probability of the target class for a synthetic image to be kept."""
    near_duplicate_distance: int = 6
    """Perceptual-hash (64-bit pHash) Hamming distance at or below which a synthetic image counts as a
    copy of a real train, val or test image and is dropped (distinct demo images are 10 or more apart)."""

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise FieldError("threshold", f"must be in [0, 1], got {self.threshold}")
        if not 0 <= self.near_duplicate_distance <= 64:
            raise FieldError(
                "near_duplicate_distance", f"must be in [0, 64], got {self.near_duplicate_distance}"
            )


@dataclass
class MixConfig:
    synthetic_ratio: float = 1.0
    """Accepted synthetic target-class images used per real training image of that class."""

    def __post_init__(self) -> None:
        _positive("synthetic_ratio", self.synthetic_ratio, allow_zero=True)


@dataclass
class EvalConfig:
    seeds: tuple[int, ...] = (0, 1, 2)
    """Classifier seeds each arm is trained with."""
    balance: Literal["sampling", "loss"] = "sampling"
    """How the ``balanced`` arm balances the classes: class-balanced sampling or a class-weighted loss."""
    bootstrap_samples: int = 1000
    """Bootstrap resamples of the test images for confidence intervals."""
    drift_samples: int = 128
    """Samples per prompt and model of the pipeline's language-drift probe (sampler settings: generate's)."""
    judge_seed: int = 1000
    """Seed of the independent judge classifier that measures what generated images show; it must differ
    from classifier.seed, the gating classifier's."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise FieldError("seeds", "needs at least one seed")
        _positive("bootstrap_samples", self.bootstrap_samples)
        _positive("drift_samples", self.drift_samples)


@dataclass
class TuneConfig:
    space: dict[str, Any] = field(default_factory=dict)
    """Search space: dotted config key -> {choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}."""
    num_samples: int = 4
    """Trials to run (per grid point for grid search)."""
    search_alg: Literal["random", "grid", "optuna"] = "random"
    """Search algorithm."""
    scheduler: Literal["none", "asha"] = "none"
    """Trial scheduler; ASHA stops weak trials early over classifier epochs."""
    metric: str = "val/target_recall"
    """Objective reported by every trial; never computed on the held-out test split."""
    mode: Literal["max", "min"] = "max"
    """Whether the objective is maximised or minimised."""
    max_concurrent_trials: int | None = None
    """Trials running at once; None lets Ray fit them to the cluster."""
    storage_path: str | None = None
    """Where Tune writes results (local path or shared-storage URI); None: <run_dir>/tune."""

    def __post_init__(self) -> None:
        _positive("num_samples", self.num_samples)
        _positive("max_concurrent_trials", self.max_concurrent_trials)


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

    def __post_init__(self) -> None:
        _positive("num_cpus", self.num_cpus)
        _positive("num_gpus", self.num_gpus, allow_zero=True)


@dataclass
class PipelineConfig:
    run_dir: str = "runs/demo"
    """Directory (or shared-storage URI) that holds every stage's outputs, config.yaml and provenance.json."""
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
