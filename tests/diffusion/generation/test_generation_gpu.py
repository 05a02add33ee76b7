"""GPU path of the generation worker: float16 weights, channels_last, images that match float32 on CPU
closely; inductor-compiled UNet and decoder against eager; the batch size chosen from free memory.
Skipped without CUDA (CI has none); run them on a machine with a GPU (benchmarks/gpu_checks.sh)."""

from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from leafgen.diffusion.finetune.adapters import EngineSettings
from leafgen.diffusion.generation import speed
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


def test_inductor_compiled_unet_and_decoder_match_eager_on_cuda(trained_tiny_model, tmp_path, monkeypatch):
    """The real compiler on the GPU (on a CPU inductor's C++ build of this model takes minutes, so the CPU
    test traces with aot_eager); kernels land in the cache folder."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    rows = prompt_table(TableSpec(4, ("leaf with rust",), "", 0, 10, 3.0, 16, 24))
    images = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        engine = asdict(EngineSettings(str(trained_tiny_model), compile=compile_))
        ImageGenerator(engine, str(tmp_path / name))(columns_from_rows(rows, ROW_KEYS))
        images[name] = [
            np.asarray(Image.open(tmp_path / name / "images" / f"{r['id']}.png"), dtype=np.int16)
            for r in rows
        ]
    for a, b in zip(images["eager"], images["compiled"]):
        assert np.abs(a - b).mean() < 2
    assert any((tmp_path / "inductor").rglob("*.py")), "no compiled kernel was cached"
    torch._dynamo.reset()


def test_auto_batch_size_measures_a_footprint_on_cuda(trained_tiny_model, tmp_path):
    generator = ImageGenerator(asdict(EngineSettings(str(trained_tiny_model))), str(tmp_path), None, "auto")
    footprint = speed.measure_footprint(generator.pipe, 16, 24, 3.0)
    assert footprint.per_image > 0 and footprint.fixed >= 0
    rows = prompt_table(TableSpec(3, ("leaf",), "", 0, 10, 3.0, 16, 24))
    generator(columns_from_rows(rows, ROW_KEYS))
    # A 16x24 image of the tiny model takes kilobytes: any GPU fits the limit.
    assert generator.batch_size == speed.AUTO_BATCH_LIMIT
    assert all((tmp_path / "images" / f"{r['id']}.png").is_file() for r in rows)
