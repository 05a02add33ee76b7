"""Decode-once image cache: each image set is decoded and resized once into a uint8 array on disk.

Training reads the array (memory-mapped, so DDP workers on one node share the page cache) instead of
decoding JPEGs every epoch; augmentations then run on the cached pixels. The cache key covers every
file's path, size and modification time and the target size, so an edited image or another resolution
is a new cache entry, never a stale hit. Entries are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from leafgen import atomic
from leafgen.data.images import load_rgb

CACHE_VERSION = 1


def cache_key(paths: Sequence[Path], size: tuple[int, int]) -> str:
    digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "size": list(size)}).encode())
    for path in paths:
        st = os.stat(path)
        digest.update(f"{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def decode_resized(path: Path, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 of ``path`` resized to ``size`` = (height, width), portrait photos turned landscape."""
    height, width = size
    img = load_rgb(path, max_pixels, draft=(width, height))
    if (img.height > img.width) != (height > width):
        img = img.transpose(Image.Transpose.ROTATE_90)  # leaf orientation carries no label information
    return np.asarray(img.resize((width, height), Image.BILINEAR, reducing_gap=2.0))


def ensure_cached(
    paths: Sequence[Path],
    size: tuple[int, int],
    cache_dir: str | Path,
    max_pixels: int = 60_000_000,
    workers: int = 4,
    progress: bool = True,
) -> Path:
    """Path of the .npy entry holding ``paths`` at ``size`` = (height, width), decoding them if needed."""
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{cache_key(paths, size)}.npy"
    if not target.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(target) as tmp:
            _decode_into(tmp, paths, size, max_pixels, workers, progress)
    return target


def cached_images(
    paths: Sequence[Path], size: tuple[int, int], cache_dir: str | Path, **options: Any
) -> np.ndarray:
    """(N, H, W, 3) uint8 array of ``paths`` at ``size``, memory-mapped from the cache (``ensure_cached``)."""
    return np.load(ensure_cached(paths, size, cache_dir, **options), mmap_mode="r")


def _decode_into(
    path: Path, paths: Sequence[Path], size: tuple[int, int], max_pixels: int, workers: int, progress: bool
) -> None:
    height, width = size
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(paths), height, width, 3))

    def fill(i: int) -> None:
        out[i] = decode_resized(Path(paths[i]), size, max_pixels)

    # PIL releases the GIL while decoding and resizing, so threads run in parallel.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(fill, range(len(paths)))
        for _ in tqdm(
            jobs,
            total=len(paths),
            desc=f"decoding to {width}x{height}",
            unit="img",
            disable=not progress,
            leave=False,
        ):
            pass
    out.flush()
