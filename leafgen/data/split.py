"""Deterministic stratified train / val / test split of train.csv.

Kaggle keeps its test labels private, so the held-out test split is carved from train.csv (as MLE-bench
does). The split is written once per run as ``split.csv`` and every later stage reads it from there.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from leafgen import atomic
from leafgen.errors import LeafgenError
from leafgen.labels import CLASSES

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_COLUMNS: tuple[str, ...] = ("image_id", "label", "split")


def stratified_split(
    image_ids: tuple[str, ...] | list[str],
    labels: np.ndarray,
    fractions: tuple[float, float, float],
    seed: int,
) -> dict[str, str]:
    """Map each image id to 'train', 'val' or 'test', stratified by label.

    Each class is split on its own, with at least one image in every part: sklearn's stratified splitters
    allocate by rounding over the whole set and can leave a 3-image class out of val, and a missing class
    makes per-class metrics undefined. Ids are sorted first so the result depends on the set of images,
    not on the row order of the CSV.
    """
    ids = np.asarray(sorted(image_ids), dtype=object)
    by_id = dict(zip(image_ids, np.asarray(labels).tolist()))
    y = np.array([by_id[i] for i in ids])
    counts = np.bincount(y, minlength=len(CLASSES))
    small = [f"{CLASSES[i]} ({n})" for i, n in enumerate(counts) if 0 < n < len(SPLITS)]
    if small:
        raise LeafgenError(
            f"cannot put every class in train, val and test: too few images of {', '.join(small)}; "
            "each class needs at least 3 images"
        )
    _, val_frac, test_frac = fractions
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label in range(len(CLASSES)):
        members = ids[y == label]
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_test = min(max(1, round(n * test_frac)), n - 2)
        n_val = min(max(1, round(n * val_frac)), n - n_test - 1)
        for k, image_id in enumerate(members):
            assignment[image_id] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return assignment


def write_split(
    path: Path, image_ids: tuple[str, ...], labels: np.ndarray, assignment: dict[str, str]
) -> None:
    rows = ([i, CLASSES[y], assignment[i]] for i, y in sorted(zip(image_ids, labels.tolist())))
    atomic.write_csv(path, SPLIT_COLUMNS, rows)


def read_split(path: Path) -> dict[str, list[tuple[str, int]]]:
    """Split name -> [(image_id, class index)] as written by :func:`write_split`."""
    out: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out[row["split"]].append((row["image_id"], CLASSES.index(row["label"])))
    return out


def split_counts(split: dict[str, list[tuple[str, int]]]) -> dict[str, dict[str, int]]:
    """Split name -> class -> image count."""
    return {
        name: {c: sum(1 for _, y in rows if y == i) for i, c in enumerate(CLASSES)}
        for name, rows in split.items()
    }
