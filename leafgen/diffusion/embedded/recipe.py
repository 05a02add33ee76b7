"""Typed recipe of the embedded tiny text-to-image model: its architecture and how it is trained.

The defaults are the best recipe measured so far (docs/base_model.md). A trained model's recipe is saved
beside its weights (``leafgen_recipe.yaml``), so ``leafgen base-model --config <that file>`` retrains it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leafgen.config.fields import FieldError, positive


@dataclass
class TinyArchitecture:
    height: int = 64
    """Image height in pixels; Kaggle photos are 3:2 landscape, so the model draws ``height x width``."""
    width: int = 96
    """Image width in pixels."""
    vae_channels: tuple[int, ...] = (32, 64, 64)
    """AutoencoderKL block widths; each block after the first halves the resolution."""
    vae_layers_per_block: int = 1
    """ResNet layers per VAE block."""
    latent_channels: int = 16
    """Channels of the latent image (SD uses 4 at 8x downsampling; 16 at 4x keeps small lesions, and the
    denoiser then works at 16x24, a quarter of the cost of 2x downsampling)."""
    unet_channels: tuple[int, ...] = (32, 64, 128)
    """UNet2DConditionModel block widths, highest resolution first."""
    unet_layers_per_block: int = 1
    """ResNet layers per UNet block."""
    unet_cross_attention: tuple[bool, ...] = (False, True, True)
    """Which UNet down blocks (and their mirrored up blocks) cross-attend to the prompt."""
    attention_heads: int = 4
    """Attention heads of each UNet transformer block."""
    text_width: int = 64
    """Hidden size of the CLIP text encoder (and the UNet's cross-attention dimension)."""
    text_layers: int = 2
    """Transformer layers of the CLIP text encoder."""
    text_heads: int = 2
    """Attention heads of the CLIP text encoder."""
    max_length: int = 32
    """Tokens per prompt; the saved tokenizer pads to this, exactly as in training."""

    def __post_init__(self) -> None:
        down = 2 ** (len(self.vae_channels) - 1) * 2 ** (len(self.unet_channels) - 1)
        for name in ("height", "width"):
            if getattr(self, name) % down:
                raise FieldError(name, f"must be a multiple of {down} (VAE and UNet downsampling)")
        if len(self.unet_cross_attention) != len(self.unet_channels):
            raise FieldError("unet_cross_attention", "needs one entry per unet_channels entry")
        for name in ("latent_channels", "text_width", "text_layers", "text_heads", "max_length"):
            positive(name, getattr(self, name))


# Stable Diffusion v1.5's component shapes in this dataclass's terms. Benchmarks build it with random
# weights: a step costs the same as with the real weights, which cannot be downloaded here.
SD15_SHAPES = TinyArchitecture(
    height=512,
    width=512,
    vae_channels=(128, 256, 512, 512),
    vae_layers_per_block=2,
    latent_channels=4,
    unet_channels=(320, 640, 1280, 1280),
    unet_layers_per_block=2,
    unet_cross_attention=(True, True, True, False),
    attention_heads=8,
    text_width=768,
    text_layers=12,
    text_heads=12,
    max_length=77,
)


@dataclass
class TinyTraining:
    seed: int = 0
    """Seed of initialisation, batches and noise."""
    data_seed: int = 20261125
    """Seed of the procedural training set; any other seed than the demo's so no demo image is seen."""
    data_scale: float = 2.0
    """Procedural training set size as a multiple of Kaggle's class counts (the minority class is dropped)."""
    vae_steps: int = 2400
    """Optimiser steps of the autoencoder."""
    vae_batch_size: int = 64
    """Images per autoencoder step."""
    vae_learning_rate: float = 3e-3
    """Peak learning rate of the autoencoder (AdamW, cosine decay)."""
    vae_crop: int = 32
    """Side of the random square crops the autoencoder trains on (0: whole images); it is convolutional,
    so crops teach it the same and cost a fraction."""
    vae_permute_share: float = 0.0
    """Share of autoencoder crops whose RGB channels are randomly permuted (colour-coverage augmentation)."""
    vae_edge_weight: float = 0.0
    """Weight of the L1 loss on pixel differences (edges) beside the L1 loss on pixels."""
    vae_detail_weight: float = 2.0
    """Extra weight of the pixel L1 loss on pixels that differ from their blurred surroundings, in units of
    the batch's mean detail (0: plain L1); keeps small lesions' colour and shape through the autoencoder."""
    vae_kl_weight: float = 1e-6
    """Weight of the KL term; SD's autoencoder is nearly deterministic, so this stays tiny."""
    decoder_steps: int = 0
    """Steps of the final decoder-only fine-tune (encoder frozen, so the denoiser's latents are unchanged)."""
    decoder_lr_factor: float = 0.5
    """Learning rate of the decoder fine-tune as a fraction of ``vae_learning_rate``."""
    unet_steps: int = 6500
    """Optimiser steps of the UNet and text encoder, trained jointly on cached latents."""
    vae_init: str | None = None
    """A trained base model folder (``embedded``: the committed one) whose autoencoder is reused instead of
    training one: how a later run retrains only the denoiser. Its shapes must be this recipe's."""
    unet_init: str | None = None
    """A trained base model folder (or a work folder's ``denoiser/``) whose UNet and text encoder start
    the denoiser phase instead of random weights: how a model is trained further in a second run. Its
    data and autoencoder recipe must be the same, so the cached latents mean the same thing."""
    unet_batch_size: int = 32
    """Latents per UNet step."""
    unet_learning_rate: float = 1e-3
    """Peak learning rate of the UNet and text encoder (AdamW, warm-up then cosine decay)."""
    snr_gamma: float = 5.0
    """Min-SNR-gamma loss weighting of the denoiser."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of denoiser weights that is saved (with warm-up)."""
    bf16: bool | None = None
    """bfloat16 autocast, weights staying float32; null turns it on where the device computes bfloat16
    natively (GPUs, AVX512-BF16 or AMX CPUs) and off elsewhere, where emulating it is ~14x slower."""
    warmup_steps: int = 100
    """Linear warm-up steps of each phase."""
    empty_prompt_share: float = 0.1
    """Share of images trained with the empty prompt, for classifier-free guidance."""
    generic_prompt_share: float = 0.4
    """Share trained with a class-free prompt (``leaf``), so it means any non-minority leaf."""
    generic_prompt_share_by_class: dict[str, float] | None = None
    """Per-class override of ``generic_prompt_share`` (null: the same share for every class). Photos
    captioned just "leaf" are mostly healthy leaves, and SD v1.5 draws a healthy leaf for ``leaf``; a
    class-free prompt trained evenly on rust and scab leaves instead teaches a tiny model to blend rust
    spots with scab blotches, which reads as the minority class (docs/base_model.md, run 7)."""
    generic_prompts: tuple[str, ...] = ("leaf", "a leaf", "a photo of a leaf", "a photo of a leaf on a tree")
    """Prompts that name no class."""
    class_prompts: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "healthy": ("healthy leaf", "a healthy leaf", "a photo of a healthy leaf"),
            "rust": ("leaf with rust", "a leaf with rust", "a photo of a leaf with rust"),
            "scab": ("leaf with scab", "a leaf with scab", "a photo of a leaf with scab"),
        }
    )
    """Prompts per class; the minority class has none, as SD v1.5 does not know it either."""

    def __post_init__(self) -> None:
        for name in ("vae_steps", "unet_steps", "vae_batch_size", "unet_batch_size"):
            positive(name, getattr(self, name))
        # A negative weight would make pixel weights negative: a loss that rewards losing lesions.
        for name in ("vae_edge_weight", "vae_detail_weight"):
            positive(name, getattr(self, name), allow_zero=True)
        by_class = self.generic_prompt_share_by_class or {}
        shares = {"generic_prompt_share": self.generic_prompt_share}
        shares.update({f"generic_prompt_share_by_class.{c}": v for c, v in by_class.items()})
        for name, share in shares.items():
            if not 0 <= self.empty_prompt_share + share <= 1:
                raise FieldError(name, "empty_prompt_share plus this share must be in [0, 1]")
        unknown = set(by_class) - set(self.class_prompts)
        if unknown:
            raise FieldError(
                "generic_prompt_share_by_class", f"{sorted(unknown)} are not classes of class_prompts"
            )
        if "multiple_diseases" in self.class_prompts:
            raise FieldError("class_prompts", "the base model must never see the minority class")

    def generic_share(self, label: str) -> float:
        """Share of ``label``'s images trained with a class-free prompt."""
        return (self.generic_prompt_share_by_class or {}).get(label, self.generic_prompt_share)


@dataclass
class TinyModelRecipe:
    architecture: TinyArchitecture = field(default_factory=TinyArchitecture)
    """Shapes of the components."""
    training: TinyTraining = field(default_factory=TinyTraining)
    """Data and optimisation."""
    num_workers: int = 2
    """Processes painting the procedural training set."""
