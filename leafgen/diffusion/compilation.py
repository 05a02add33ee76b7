"""``torch.compile`` for leafgen's models, with compiled kernels kept on disk between runs.

Used by generation (``generate.compile``: the UNet and the decoder) and DreamBooth
(``dreambooth.compile``: the UNet's forward and backward). The first run on a machine compiles (about a
minute on a GPU for SD v1.5's UNet; minutes on a CPU); later runs read inductor's FX-graph, autograd and
Triton caches from :func:`compile_cache_dir` and pay only dynamo's tracing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Tests swap in "aot_eager" (dynamo's tracing and autograd without code generation): inductor's C++
# build of the tiny UNet takes minutes on two CPU cores, and the gpu-marked tests compile for real.
COMPILE_BACKEND = "inductor"


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
