"""Generation speed levers on the tiny pipeline: writes off the pipeline's critical path with the same
files and manifest, the batch-size choice, and levers that leave the pictures as they were."""

from __future__ import annotations

import threading
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from leafgen.config import load_config
from leafgen.diffusion import compilation
from leafgen.diffusion.finetune.adapters import EngineSettings
from leafgen.diffusion.generation import generator as generator_module
from leafgen.diffusion.generation import speed
from leafgen.diffusion.generation.generator import ImageGenerator
from leafgen.diffusion.generation.manifest import finalize, read_parts, sha256_file
from leafgen.diffusion.generation.prompt_table import ROW_KEYS, TableSpec, columns_from_rows, prompt_table
from leafgen.errors import ConfigError

from ..conftest import read_pixels

SPEC = TableSpec(
    num_images=4,
    prompts=("a leaf", "leaf with rust"),
    negative_prompt="",
    seed=5,
    steps=3,
    guidance=3.0,
    height=16,
    width=24,
)
GiB = 2**30


def test_batch_size_is_the_largest_that_fits_the_free_memory():
    footprint = speed.Footprint(fixed=2 * GiB, per_image=GiB + GiB // 2)
    # 85% of 20 GiB is 17 GiB; 2 fixed leave 15, ten images of 1.5 GiB.
    assert speed.choose_batch_size(20 * GiB, footprint) == 10
    assert speed.choose_batch_size(20 * GiB, footprint, limit=6) == 6
    # An H200's 139 GiB would fit ~77 such images: capped at AUTO_BATCH_LIMIT.
    assert speed.choose_batch_size(139 * GiB, footprint) == speed.AUTO_BATCH_LIMIT
    # Not even one fits by the estimate: one image per call still runs (and may still fit).
    assert speed.choose_batch_size(GiB, footprint) == 1
    assert speed.choose_batch_size(3 * GiB, speed.Footprint(fixed=0, per_image=GiB)) == 2


def test_batch_size_auto_is_a_config_value_and_other_words_are_not():
    assert load_config(None, ["generate.batch_size=auto"]).generate.batch_size == "auto"
    assert load_config(None, ["generate.batch_size=12"]).generate.batch_size == 12
    for bad in ("generate.batch_size=0", "generate.batch_size=largest"):
        with pytest.raises(ConfigError, match="generate.batch_size"):
            load_config(None, [bad])


def test_auto_batch_on_cpu_falls_back_to_the_cpu_size(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "CPU_BATCH", 3)
    rows = prompt_table(replace(SPEC, num_images=5, prompts=("a leaf",)))
    generator = ImageGenerator(asdict(EngineSettings(str(tiny_model_dir))), str(tmp_path), 1, "auto")
    generator(columns_from_rows(rows, ROW_KEYS))
    assert generator.batch_size == 3
    # Five rows of one group in calls of 3 and 2: one manifest part per pipeline call.
    assert len(list((tmp_path / "manifest").glob("part-*.parquet"))) == 2
    assert finalize(tmp_path, rows).num_rows == 5


def test_the_next_call_renders_while_the_previous_batch_is_written(tiny_model_dir, tmp_path, monkeypatch):
    """Two calls at once, as Ray Data makes them with overlap_writes: while the first batch's write is
    held, the second batch renders and is written; the first batch's manifest part appears only after
    its images are on disk with the hashes it records."""
    rows = prompt_table(SPEC)
    first, second = rows[:2], rows[2:]
    generator = ImageGenerator(asdict(EngineSettings(str(tiny_model_dir))), str(tmp_path), 1, 2)
    held, release = threading.Event(), threading.Event()
    write = generator.write

    def held_write(batch_rows, images, seconds):
        if batch_rows[0]["id"] == first[0]["id"]:
            held.set()
            assert release.wait(300)
        return write(batch_rows, images, seconds)

    parts_seen = []

    def checked_write_part(out_dir, done):
        for row in done:  # every image of a part is already on disk, intact
            assert sha256_file(out_dir / row["file"]) == row["sha256"]
        parts_seen.append([row["id"] for row in done])
        return write_part(out_dir, done)

    write_part = generator_module.write_part
    monkeypatch.setattr(generator_module, "write_part", checked_write_part)
    monkeypatch.setattr(generator, "write", held_write)
    one = threading.Thread(target=generator, args=(columns_from_rows(first, ROW_KEYS),))
    one.start()
    assert held.wait(300), "the first call never reached its write"
    two = threading.Thread(target=generator, args=(columns_from_rows(second, ROW_KEYS),))
    two.start()
    two.join(120)  # would never end if writing held the pipeline
    assert not two.is_alive(), "the second call waited for the first batch's write"
    assert set(read_parts(tmp_path)) == {r["id"] for r in second}
    assert not any((tmp_path / "images" / f"{r['id']}.png").exists() for r in first)
    release.set()
    one.join(300)
    assert parts_seen == [[r["id"] for r in second], [r["id"] for r in first]]
    assert finalize(tmp_path, rows).column("id").to_pylist() == [r["id"] for r in rows]


def _images(model_dir, out, rows, **levers) -> list[np.ndarray]:
    generator = ImageGenerator(asdict(EngineSettings(str(model_dir), **levers)), str(out), threads=1)
    generator(columns_from_rows(rows, ROW_KEYS))
    return generator, [read_pixels(out / "images" / f"{r['id']}.png") for r in rows]


def test_channels_last_and_fused_projections_keep_the_pictures(tiny_model_dir, tmp_path):
    rows = prompt_table(SPEC)
    _, plain = _images(tiny_model_dir, tmp_path / "plain", rows, channels_last=False)
    generator, fast = _images(tiny_model_dir, tmp_path / "fast", rows, channels_last=True, fuse_qkv=True)
    unet = generator.pipe.unet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any(getattr(m, "fused_projections", False) for m in unet.modules())
    for a, b in zip(plain, fast):
        assert np.abs(a - b).max() <= 2


def test_compiled_unet_and_decoder_match_eager_and_cache_under_the_users_folder(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Compiled through dynamo with a backend that generates no code (inductor's C++ build of this model
    takes minutes on two CPU cores; the gpu-marked test compiles with inductor for real)."""
    monkeypatch.setattr(compilation, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "restored-after-the-test")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rows = prompt_table(SPEC)
    _, eager = _images(tiny_model_dir, tmp_path / "eager", rows)
    generator, compiled = _images(tiny_model_dir, tmp_path / "compiled", rows, compile=True)
    assert generator.pipe.unet._compiled_call_impl is not None
    assert generator.pipe.vae.decoder._compiled_call_impl is not None
    for a, b in zip(eager, compiled):
        assert np.abs(a - b).max() <= 2
    folder = tmp_path / "cache" / "leafgen" / "torchinductor"
    assert compilation.compile_cache_dir() == folder and folder.is_dir()
    torch._dynamo.reset()  # compiled code of this test's modules is not kept for later tests


def test_a_kaggle_size_source_is_decoded_at_a_reduced_scale_that_still_covers(tmp_path, monkeypatch):
    """img2img from a 2048x1365 photo: the JPEG is decoded at a DCT scale that still covers 512x512
    (1024x683, a quarter of the pixels; the full decode cost 3x the time on the critical path) and the
    source matches a full decode closely."""
    from PIL import Image, ImageOps

    from leafgen.diffusion.generation.generator import load_source

    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 255, (43, 64, 3), dtype=np.uint8)  # photo-like: detail at many scales
    photo = Image.fromarray(smooth).resize((2048, 1365), Image.Resampling.BICUBIC)
    path = tmp_path / "Train_0.jpg"
    photo.save(path, quality=92)
    decoded = []
    open_rgb = generator_module.open_rgb

    def spy(*args, **kwargs):
        img = open_rgb(*args, **kwargs)
        decoded.append(img.size)
        return img

    monkeypatch.setattr(generator_module, "open_rgb", spy)
    source = load_source(str(path), 512, 512)
    full = ImageOps.fit(Image.open(path).convert("RGB"), (512, 512), Image.Resampling.LANCZOS)
    assert decoded == [(1024, 683)] and source.size == (512, 512)
    assert np.abs(np.asarray(source, np.int16) - np.asarray(full, np.int16)).mean() < 2
