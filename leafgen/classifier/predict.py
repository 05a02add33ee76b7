"""Kaggle submission: class probabilities for every image of a folder's test.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from leafgen import atomic
from leafgen.classifier.engine import ArrayDataset, eval_transform, predict_probs
from leafgen.classifier.training import input_size, load_classifier
from leafgen.config import ClassifierConfig
from leafgen.data.cache import cached_images
from leafgen.data.plant_pathology import read_folder
from leafgen.errors import LeafgenError
from leafgen.labels import TRAIN_COLUMNS


def write_submission(
    model_dir: str | Path,
    folder: str | Path,
    out: str | Path,
    flip_tta: bool = False,
    cache_dir: str | Path | None = None,
    max_image_pixels: int = 60_000_000,
) -> Path:
    """Write ``image_id,healthy,multiple_diseases,rust,scab`` probabilities for ``folder``'s test.csv."""
    model_dir = Path(model_dir)
    if not (model_dir / "classifier.json").is_file():
        raise LeafgenError(
            f"{model_dir}: not a trained classifier (expected model.safetensors and classifier.json)"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_classifier(model_dir, device)
    data = read_folder(folder, max_image_pixels=max_image_pixels)  # validates, and decodes every image once
    if not data.test_ids:
        raise LeafgenError(f"{folder}/test.csv lists no images")
    size = input_size(ClassifierConfig(image_size=meta["image_size"]))
    images = cached_images(
        [data.path(i) for i in data.test_ids],
        size,
        cache_dir or Path(out).parent / ".cache",
        max_pixels=max_image_pixels,
    )
    loader = DataLoader(
        ArrayDataset(images, np.zeros(len(images), dtype=np.int64), eval_transform()), batch_size=64
    )
    probs = predict_probs(model, loader, device, flip_tta)
    rows = ([image_id, *(f"{p:.6f}" for p in row)] for image_id, row in zip(data.test_ids, probs))
    atomic.write_csv(out, TRAIN_COLUMNS, rows)
    return Path(out)
