"""GPU paths of DreamBooth: fp16 autocast with a gradient scaler, and bitsandbytes' 8-bit AdamW.
Skipped without CUDA (CI has none); run them on a machine with a GPU."""

from dataclasses import replace

import pytest
import torch

from leafgen.config import DreamBoothConfig
from leafgen.diffusion.finetune.data import ImageSet
from leafgen.diffusion.finetune.dreambooth import prepare_models
from leafgen.diffusion.finetune.loop import DreamBoothTrainer

pytestmark = pytest.mark.gpu

CFG = DreamBoothConfig(num_class_images=2, train_batch_size=2, learning_rate=1e-3, lora_rank=4)


def _train(cfg, model_dir, tiny_dataset, steps=3):
    paths = sorted((tiny_dataset / "images").glob("Train_*.jpg"))
    models = prepare_models(cfg, str(model_dir))
    trainer = DreamBoothTrainer(
        cfg,
        models,
        ImageSet(paths[:4], 16, 24, "center"),
        ImageSet(paths[4:8], 16, 24, "center"),
        torch.device("cuda"),
    )
    before = {k: v.clone() for k, v in models.unet.state_dict().items() if "lora_B" in k}
    losses = []
    trainer.train(steps, lambda m: losses.append(m["loss"]))
    after = models.unet.state_dict()
    return trainer, losses, any(not torch.equal(after[k], v) for k, v in before.items())


def test_fp16_autocast_trains_lora_on_cuda(trained_tiny_model, tiny_dataset):
    trainer, losses, changed = _train(replace(CFG, mixed_precision="fp16"), trained_tiny_model, tiny_dataset)
    assert trainer.amp == torch.float16 and trainer.scaler.is_enabled()
    assert all(torch.isfinite(torch.tensor(losses))) and changed


def test_8bit_adam_trains_lora_on_cuda(trained_tiny_model, tiny_dataset):
    pytest.importorskip("bitsandbytes")
    trainer, losses, changed = _train(replace(CFG, use_8bit_adam=True), trained_tiny_model, tiny_dataset)
    assert type(trainer.optimizer).__name__ == "AdamW8bit"
    assert all(torch.isfinite(torch.tensor(losses))) and changed
