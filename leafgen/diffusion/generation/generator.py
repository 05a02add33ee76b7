"""The generation worker: one diffusers pipeline, called on batches of prompt-table rows.

``ImageGenerator`` is what Ray Data's ``map_batches`` instantiates once per actor, and it is just as
callable without Ray. Each call renders whole groups of rows per pipeline call (rows that share steps,
guidance, mode, strength and size), each row with its own ``torch.Generator``, so an image depends on its
row only, not on its batch or actor, nor (text-to-image) on the device or precision. It writes every image
atomically, then the call's manifest part, and returns the manifest rows.

The CPU work of a finished call (PNG encoding, sha256, file and manifest writes) runs outside the lock
that serialises pipeline calls, so when two batches are in the actor at once (Ray Data runs two calls
per actor with ``generate.overlap_writes``) the next pipeline call starts while the previous batch is
written. Threads rather than a separate CPU ``map_batches`` stage: the pixels stay in this process (no
trip through the object store, no writer actors that might land on another node, where a run kept on
object storage would have to push from), a call still returns only once its images and then its
manifest part are on disk (so resume semantics are unchanged), and zlib and hashlib release the GIL, so
the writing thread does not hold up the one launching GPU work.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from diffusers.utils import logging as diffusers_logging
from PIL import Image, ImageOps
from transformers.utils import logging as transformers_logging

from leafgen import atomic
from leafgen.data.images import open_rgb
from leafgen.diffusion.components import initial_noise
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.generation.manifest import MANIFEST_KEYS, image_file, write_part
from leafgen.diffusion.generation.prompt_table import Row, columns_from_rows, rows_from_columns
from leafgen.diffusion.generation.speed import auto_batch_size

# Rows that may share one pipeline call.
GROUP_KEYS = ("mode", "steps", "guidance", "strength", "height", "width")


def load_source(path: str, height: int, width: int) -> Image.Image:
    """An img2img source image, upright RGB, resized to cover ``height x width`` and centre-cropped.
    A JPEG is decoded at the smallest DCT scale still covering the target: a 2048x1365 Kaggle photo
    for 512x512 took 22 ms instead of 69 (mean difference 0.8 of 255 after the same LANCZOS resize)."""
    img = open_rgb(Path(path), "an img2img source image", draft=(width, height))
    return ImageOps.fit(img, (width, height), Image.Resampling.LANCZOS)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class ImageGenerator:
    """Renders prompt-table rows to ``<out_dir>/images/<id>.png`` and records them in the manifest.

    ``engine`` is an :class:`EngineSettings` as a dict (as Ray passes constructor arguments); ``threads``
    caps torch's CPU threads, so CPU actors sharing a node do not oversubscribe it. ``batch_size``: rows
    per pipeline call (a batch's rows of one group beyond it go in further calls); ``auto`` chooses it
    from free GPU memory on the first call (:func:`~leafgen.diffusion.generation.speed.auto_batch_size`);
    None: one call per group of the batch. Safe to call from two threads at once.
    """

    def __init__(
        self,
        engine: dict[str, Any],
        out_dir: str,
        threads: int | None = None,
        batch_size: int | str | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        # One bar over all images is the driver's; per-actor loading bars would interleave with it.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        self.settings = EngineSettings(**engine)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.pipe = load_generation_pipeline(self.settings, self.device)
        self.scheduler = type(self.pipe.scheduler).__name__
        self._img2img: StableDiffusionImg2ImgPipeline | None = None
        self.out_dir = Path(out_dir)
        self.batch_size = batch_size
        # One pipeline call at a time: the scheduler keeps per-call state, and two calls would only
        # share the GPU. Everything after the call's pixels are on the CPU runs outside it.
        self._pipeline_lock = threading.Lock()

    @property
    def img2img(self) -> StableDiffusionImg2ImgPipeline:
        if self._img2img is None:
            # Shares every component with the text-to-image pipeline: no second copy of the weights.
            self._img2img = StableDiffusionImg2ImgPipeline.from_pipe(self.pipe)
        return self._img2img

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = rows_from_columns(batch)
        done: list[Row] = []
        group_of = lambda row: tuple(row[k] for k in GROUP_KEYS)  # noqa: E731
        for _, group in itertools.groupby(sorted(rows, key=group_of), key=group_of):
            group = list(group)
            size = self.call_size(group[0]) or len(group)
            for i in range(0, len(group), size):
                chunk = group[i : i + size]
                sources = self.sources(chunk)  # CPU work: decoded outside the lock, like the writes
                with self._pipeline_lock:
                    pixels, seconds = self.render(chunk, sources)
                done += self.write(chunk, pixels, seconds)
        return columns_from_rows(done, MANIFEST_KEYS)

    def call_size(self, row: Row) -> int | None:
        """Rows per pipeline call; ``auto`` is settled once, on the first call (under the lock: it runs
        the pipeline to measure its footprint)."""
        if self.batch_size == "auto":
            with self._pipeline_lock:
                if self.batch_size == "auto":
                    self.batch_size = auto_batch_size(self.pipe, self.device, row)
        return self.batch_size  # type: ignore[return-value]

    def record(self, done: list[Row]) -> Path:
        """Write a finished call's manifest part (its images are already written); returns its path."""
        return write_part(self.out_dir, done)

    def sources(self, rows: Sequence[Row]) -> list[Image.Image] | None:
        """img2img rows' source images at the rows' size; None for text-to-image rows."""
        first = rows[0]
        if first["mode"] != "img2img":
            return None
        return [load_source(row["source_path"], first["height"], first["width"]) for row in rows]

    @torch.inference_mode()
    def render(self, rows: Sequence[Row], sources: list[Image.Image] | None) -> tuple[np.ndarray, float]:
        """Generate one group of rows in a single pipeline call (img2img from ``sources``): float pixels
        in [0, 1] (N, H, W, 3) on the CPU, and the call's seconds per image."""
        first = rows[0]
        generators = [torch.Generator("cpu").manual_seed(int(row["seed"])) for row in rows]
        kwargs: dict[str, Any] = dict(
            prompt=[row["prompt"] for row in rows],
            negative_prompt=[row["negative_prompt"] for row in rows]
            if any(row["negative_prompt"] for row in rows)
            else None,
            num_inference_steps=int(first["steps"]),
            guidance_scale=float(first["guidance"]),
            generator=generators,
            output_type="np",
        )
        t0 = time.perf_counter()
        if first["mode"] == "img2img":
            images = self.img2img(image=sources, strength=float(first["strength"]), **kwargs).images
        else:
            height, width = int(first["height"]), int(first["width"])
            latents = initial_noise(self.pipe, generators, height, width)
            images = self.pipe(height=height, width=width, latents=latents, **kwargs).images
        return images, (time.perf_counter() - t0) / len(rows)

    def write(self, rows: Sequence[Row], images: np.ndarray, seconds: float) -> list[Row]:
        """Encode, hash and write each image atomically, then the manifest part naming them."""
        results = []
        for row, image in zip(rows, images):
            data = png_bytes((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
            target = image_file(self.out_dir, row["id"])
            atomic.write_bytes(target, data)
            results.append(
                {
                    **row,
                    "file": f"{target.parent.name}/{target.name}",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "seconds": seconds,
                    "finished_at": time.time(),
                    "scheduler": self.scheduler,
                    "base_model": self.settings.base_model,
                    "adapter": self.settings.adapter or "",
                }
            )
        self.record(results)
        return results
