"""The embedded procedural dataset, written in exactly the Plant Pathology 2020 (Kaggle) format.

``make_dataset`` writes ``train.csv``, ``test.csv``, ``sample_submission.csv`` and ``images/*.jpg``, plus
``test_labels.csv`` (the answer key Kaggle keeps private; here it lets a user score a submission) and
``procedural.json`` (the settings). Images are deterministic in (seed, split, index) and are written
atomically, so an interrupted run resumes where it stopped and a rerun with the same settings is a no-op.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from leafgen import atomic
from leafgen.data.leaf_painter import render
from leafgen.errors import LeafgenError
from leafgen.labels import CLASSES, KAGGLE_TRAIN_COUNTS, TEST_COLUMNS, TRAIN_COLUMNS

SETTINGS_FILE = "procedural.json"
FORMAT_VERSION = 6  # bump when the painter changes what a (seed, index) pair draws


@dataclass(frozen=True)
class ProceduralSpec:
    """What a procedural folder holds; two folders with equal specs hold identical images."""

    scale: float = 1.0
    size: int = 192
    seed: int = 0
    test_fraction: float = 1.0
    version: int = FORMAT_VERSION

    def class_counts(self) -> dict[str, int]:
        """Training images per class: Kaggle's counts times ``scale``, at least 3 so every split gets one."""
        return {c: max(3, round(n * self.scale)) for c, n in KAGGLE_TRAIN_COUNTS.items()}

    def labels(self, split: str) -> list[str]:
        """Class of each image of ``split`` ('train' or 'test') in id order, shuffled deterministically."""
        counts = self.class_counts()
        if split == "test":
            counts = _apportion(counts, round(sum(counts.values()) * self.test_fraction))
        labels = [c for c in CLASSES for _ in range(counts[c])]
        rng = np.random.default_rng([self.seed, 2, 0 if split == "train" else 1])
        return [labels[i] for i in rng.permutation(len(labels))]


def _apportion(counts: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` in proportion to ``counts`` (largest remainder), so the parts sum to ``total``."""
    quotas = np.array(list(counts.values()), dtype=np.float64) * total / sum(counts.values())
    parts = np.floor(quotas).astype(int)
    parts[np.argsort(parts - quotas, kind="stable")[: total - parts.sum()]] += 1
    return dict(zip(counts, parts.tolist()))


def _render_one(job: tuple[ProceduralSpec, str, int, str, str]) -> None:
    spec, split, index, label, path = job
    rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1, index])
    image = render(label, rng, spec.size)
    with atomic.atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=92)


def make_dataset(
    out: str | Path, spec: ProceduralSpec, workers: int | None = None, progress: bool = True
) -> Path:
    """Write (or finish writing) the procedural dataset ``spec`` into ``out``; returns ``out``."""
    out = Path(out)
    settings = out / SETTINGS_FILE
    if settings.exists():
        found = json.loads(settings.read_text())
        if found != asdict(spec):
            raise LeafgenError(
                f"{out} already holds a procedural dataset made with other settings ({found}); "
                "choose another folder or delete it"
            )
    elif out.exists() and any(p.name not in {"images"} for p in out.iterdir()):
        raise LeafgenError(f"{out} exists and is not a leafgen procedural dataset; choose an empty folder")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)

    train_labels, test_labels = spec.labels("train"), spec.labels("test")
    train_ids = [f"Train_{i}" for i in range(len(train_labels))]
    test_ids = [f"Test_{i}" for i in range(len(test_labels))]
    jobs = [
        (spec, split, i, label, str(images / f"{image_id}.jpg"))
        for split, ids, labels in (("train", train_ids, train_labels), ("test", test_ids, test_labels))
        for i, (image_id, label) in enumerate(zip(ids, labels))
    ]
    todo = [job for job in jobs if not os.path.exists(job[-1])]
    workers = workers or min(os.cpu_count() or 1, 8)
    bar = tqdm(
        total=len(jobs),
        initial=len(jobs) - len(todo),
        desc="drawing leaves",
        unit="img",
        disable=not progress,
    )
    if workers == 1:
        for job in todo:
            _render_one(job)
            bar.update()
    elif todo:
        # spawn: callers may already run torch or Ray threads, which fork would copy in a broken state.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_render_one, todo, chunksize=16):
                bar.update()
    bar.close()

    atomic.write_csv(
        out / "train.csv",
        TRAIN_COLUMNS,
        [[i] + [int(c == y) for c in CLASSES] for i, y in zip(train_ids, train_labels)],
    )
    atomic.write_csv(out / "test.csv", TEST_COLUMNS, [[i] for i in test_ids])
    atomic.write_csv(
        out / "sample_submission.csv", TRAIN_COLUMNS, [[i, 0.25, 0.25, 0.25, 0.25] for i in test_ids]
    )
    atomic.write_csv(
        out / "test_labels.csv",
        TRAIN_COLUMNS,
        [[i] + [int(c == y) for c in CLASSES] for i, y in zip(test_ids, test_labels)],
    )
    atomic.write_json(settings, asdict(spec))
    return out


def contact_sheet(root: str | Path, out: str | Path, per_class: int = 8, thumb: int = 160) -> Path:
    """A PNG with one labelled row of ``per_class`` training images per class, for a person to look at."""
    from torchvision.transforms.functional import pil_to_tensor, resize, to_pil_image
    from torchvision.utils import make_grid

    root = Path(root)
    with open(root / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    label_w = 150
    strips = []
    for c in CLASSES:
        ids = [r["image_id"] for r in rows if r[c] == "1"][:per_class]
        tiles = [
            resize(
                pil_to_tensor(Image.open(root / "images" / f"{i}.jpg").convert("RGB")),
                [thumb * 2 // 3, thumb],
            )
            for i in ids
        ]
        strip = to_pil_image(make_grid(tiles, nrow=per_class, padding=4, pad_value=255))
        canvas = Image.new("RGB", (strip.width + label_w, strip.height), "white")
        canvas.paste(strip, (label_w, 0))
        ImageDraw.Draw(canvas).text((8, strip.height // 2 - 6), c, fill="black")
        strips.append(canvas)
    sheet = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), "white")
    y = 0
    for s in strips:
        sheet.paste(s, (0, y))
        y += s.height
    with atomic.atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(out)
