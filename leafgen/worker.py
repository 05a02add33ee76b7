"""What a training loop knows of its place in a data-parallel group, and how it reports.

Training loops (classifier, DreamBooth) run without Ray: the distributed layer hands them a
``WorkerContext`` (rank, world size, device, Ray's ``prepare_model``) and a ``report(metrics,
checkpoint_dir)`` callable that calls ``ray.train.report``; tests and single-process runs pass the defaults
and a plain function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ReportFn = Callable[[dict[str, Any], Path | None], None]


@dataclass
class WorkerContext:
    """Where this process sits in a data-parallel group; the defaults mean a single process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m
    """Wraps the model for DDP (Ray's ``prepare_model``) after it is on ``device``."""
