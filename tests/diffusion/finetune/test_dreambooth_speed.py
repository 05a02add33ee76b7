"""DreamBooth's speed switches take the same steps as the plain trainer: fused AdamW and a compiled UNet."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from leafgen.diffusion import compilation

from .conftest import trainer
from .test_dreambooth import CFG


def _steps(cfg, model_dir, sets, n=2):
    torch.manual_seed(0)  # the same LoRA initialisation for both trainers
    t = trainer(cfg, model_dir, sets)
    losses = [t.optimizer_step()["loss"] for _ in range(n)]
    return t, losses, {k: v.detach().clone() for k, v in t.models.unet.named_parameters() if v.requires_grad}


def test_fused_adamw_takes_the_same_steps(tiny_model_dir, image_sets):
    cfg = replace(CFG, lora_rank=4)
    _, plain_losses, plain = _steps(cfg, tiny_model_dir, image_sets)
    fused, fused_losses, weights = _steps(replace(cfg, fused_adam=True), tiny_model_dir, image_sets)
    assert fused.optimizer.defaults["fused"] is True
    assert fused_losses == pytest.approx(plain_losses, rel=1e-4)
    for name, value in weights.items():
        torch.testing.assert_close(value, plain[name], rtol=1e-4, atol=1e-6)


def test_compiled_unet_trains_like_the_eager_one(tiny_model_dir, image_sets, monkeypatch, tmp_path):
    """Through dynamo and AOTAutograd without code generation (inductor's C++ build takes minutes on two
    CPU cores; the gpu-marked test compiles with inductor)."""
    monkeypatch.setattr(compilation, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cfg = replace(CFG, lora_rank=4)
    _, eager_losses, eager = _steps(cfg, tiny_model_dir, image_sets)
    compiled, losses, weights = _steps(replace(cfg, compile=True), tiny_model_dir, image_sets)
    assert compiled.models.unet._compiled_call_impl is not None
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    for name, value in weights.items():
        torch.testing.assert_close(value, eager[name], rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()
