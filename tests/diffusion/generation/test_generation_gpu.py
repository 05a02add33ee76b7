"""GPU path of the generation worker: float16 weights, channels_last, images that match float32 on CPU
closely. Skipped without CUDA (CI has none); run it on a machine with a GPU."""

from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from leafgen.diffusion.finetune.adapters import EngineSettings
from leafgen.diffusion.generation.generator import ImageGenerator
from leafgen.diffusion.generation.prompt_table import ROW_KEYS, TableSpec, columns_from_rows, prompt_table

pytestmark = pytest.mark.gpu


def test_float16_channels_last_generation_on_cuda(trained_tiny_model, tmp_path):
    rows = prompt_table(TableSpec(4, ("leaf with rust",), "", 0, 10, 3.0, 16, 24))
    gpu = ImageGenerator(asdict(EngineSettings(str(trained_tiny_model))), str(tmp_path / "gpu"))
    assert gpu.pipe.unet.dtype == torch.float16
    assert gpu.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    gpu(columns_from_rows(rows, ROW_KEYS))
    cpu = ImageGenerator(
        asdict(EngineSettings(str(trained_tiny_model), dtype="float32")), str(tmp_path / "cpu")
    )
    cpu.pipe.to("cpu")
    cpu(columns_from_rows(rows, ROW_KEYS))
    for row in rows:
        a, b = (
            np.asarray(Image.open(tmp_path / d / "images" / f"{row['id']}.png"), dtype=np.int16)
            for d in ("gpu", "cpu")
        )
        # Same seeds (CPU generators) and model: half precision moves pixels a little, not the picture.
        assert np.abs(a - b).mean() < 8, row["id"]
