"""Generation speed levers, each a ``generate`` switch: memory format, fused attention projections,
``torch.compile`` with a persistent cache, and a batch size chosen from free GPU memory.

None of them changes which picture a row gives: channels_last, fused projections and compiled kernels
sum in another order (a pixel or two of difference), and the batch size never reaches a row's noise.
``benchmarks/generate_throughput.py --sd15-shape --levers`` measures each one on and off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline

# Tests swap in "eager" (dynamo's tracing without code generation): inductor's C++ build of the tiny
# UNet takes minutes on two CPU cores, and the GPU test compiles for real.
COMPILE_BACKEND = "inductor"
# batch_size auto: rows per pipeline call at most (beyond this an H200 gains nothing measurable, and a
# kill loses more work), the share of free memory it may fill, and the CPU's size (the old default).
AUTO_BATCH_LIMIT = 64
AUTO_HEADROOM = 0.85
CPU_BATCH = 8


def compile_cache_dir() -> Path:
    """Where compiled kernels persist between runs: ``$TORCHINDUCTOR_CACHE_DIR`` when set, else
    ``leafgen/torchinductor`` under the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "leafgen" / "torchinductor"


def enable_compile_cache() -> Path:
    """Point inductor's on-disk caches (FX graphs, autograd graphs, Triton kernels) at
    :func:`compile_cache_dir`, so a second process finds the first one's kernels instead of compiling
    again (torch's default folder is under /tmp). Returns the folder."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    folder = compile_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # read by inductor whenever it looks for a kernel
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return folder


def compile_module(module: torch.nn.Module) -> None:
    """Compile ``module``'s forward in place (the object, its config and its weights stay as they are)."""
    enable_compile_cache()
    module.compile(backend=COMPILE_BACKEND)


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
