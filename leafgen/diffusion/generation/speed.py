"""Generation speed levers, each a ``generate`` switch: memory format, fused attention projections,
``torch.compile`` with a persistent cache, and a batch size chosen from free GPU memory.

None of them changes which picture a row gives: channels_last, fused projections and compiled kernels
sum in another order (a pixel or two of difference), and the batch size never reaches a row's noise.
``benchmarks/generate_throughput.py --sd15-shape --levers`` measures each one on and off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from leafgen.diffusion.compilation import compile_module

# batch_size auto: rows per pipeline call at most (a bound: a larger call writes its first image later
# and a kill loses more work; the GPU lever table says whether 64 already saturates an H200), the share
# of free memory it may fill, and the CPU's size (the old default).
AUTO_BATCH_LIMIT = 64
AUTO_HEADROOM = 0.85
CPU_BATCH = 8


def use_channels_last(setting: bool | None, device: torch.device) -> bool:
    """None: on with CUDA (its convolutions run NHWC kernels), off on the CPU."""
    return device.type == "cuda" if setting is None else setting


def apply_levers(pipe: StableDiffusionPipeline, engine: Any, device: torch.device) -> None:
    """channels_last, fused QKV projections and compilation of the UNet and the decoder, as ``engine``
    (an EngineSettings) asks. Fusing comes after any LoRA is merged, compiling last."""
    if use_channels_last(engine.channels_last, device):
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if engine.fuse_qkv:
        pipe.fuse_qkv_projections()
    if engine.compile:
        compile_module(pipe.unet)
        # The decoder alone: the encoder runs for img2img only, and compiling it would cost start-up
        # for every text-to-image run.
        compile_module(pipe.vae.decoder)


@dataclass(frozen=True)
class Footprint:
    """Peak CUDA memory of one pipeline call: ``fixed + per_image * batch`` bytes."""

    fixed: int
    per_image: int


def choose_batch_size(free: int, footprint: Footprint, limit: int = AUTO_BATCH_LIMIT) -> int:
    """The largest batch whose footprint fits in ``AUTO_HEADROOM`` of ``free`` bytes, in [1, limit]
    (the headroom leaves room for the allocator's fragmentation and for compiled kernels' workspace)."""
    fits = int((free * AUTO_HEADROOM - footprint.fixed) // max(footprint.per_image, 1))
    return max(1, min(limit, fits))


def measure_footprint(pipe: StableDiffusionPipeline, height: int, width: int, guidance: float) -> Footprint:
    """Peak memory of one-step calls of 1 and 2 images (CUDA only): the difference is one image's share
    (UNet activations, twice with guidance, and the decoder's full-resolution ones), the rest is fixed.
    Run eagerly, so a compiled pipeline does not compile two extra batch shapes for it."""
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.compiler.set_stance("force_eager"), torch.inference_mode():
            pipe(
                [""] * n,
                height=height,
                width=width,
                num_inference_steps=1,
                guidance_scale=guidance,
                output_type="np",
            )
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    per_image = max(peaks[1] - peaks[0], 1)
    return Footprint(fixed=max(peaks[0] - per_image, 0), per_image=per_image)


def auto_batch_size(pipe: StableDiffusionPipeline, device: torch.device, row: dict[str, Any]) -> int:
    """``batch_size: auto`` for rows like ``row``: on a GPU, from its free memory and the measured
    footprint; on the CPU, where memory is not what limits a batch, ``CPU_BATCH``."""
    if device.type != "cuda":
        return CPU_BATCH
    footprint = measure_footprint(pipe, int(row["height"]), int(row["width"]), float(row["guidance"]))
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return choose_batch_size(free, footprint)
