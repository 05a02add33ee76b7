"""bfloat16 autocast only where the device computes it natively."""

from __future__ import annotations

import torch

from leafgen.diffusion.embedded.recipe import TinyTraining
from leafgen.precision import autocast_bf16, native_bf16


def _matmul_dtype(ctx: torch.autocast) -> torch.dtype:
    with ctx:
        return (torch.ones(4, 4) @ torch.ones(4, 4)).dtype


def test_explicit_choice_wins():
    cpu = torch.device("cpu")
    assert _matmul_dtype(autocast_bf16(cpu, True)) == torch.bfloat16
    assert _matmul_dtype(autocast_bf16(cpu, False)) == torch.float32


def test_automatic_choice_follows_the_cpu():
    cpu = torch.device("cpu")
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native_bf16(cpu) == native
    assert _matmul_dtype(autocast_bf16(cpu)) == (torch.bfloat16 if native else torch.float32)


def test_base_model_recipe_chooses_automatically():
    assert TinyTraining().bf16 is None
