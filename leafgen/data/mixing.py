"""Mixing real and synthetic training images: synthetic target-class images join the train split only.

``mix.synthetic_ratio`` is the number of accepted synthetic images used per real train image of the
target class. Which ones: the first accepted images in generation order (ids are numbered by the prompt
table, so a larger ratio keeps the images a smaller one used). When the gate accepted fewer than the
ratio asks for, all accepted images are used and the shortfall is reported. The mixed set is written as
``mix.csv`` (path, label, source) so every retrained model says exactly what it saw; a synthetic row also
names the real image it was made from (img2img), which a swap-mode arm (DA-Fusion) draws it in place of.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from leafgen import atomic
from leafgen.errors import LeafgenError
from leafgen.labels import CLASSES

MIX_COLUMNS = ("image_id", "label", "source", "path", "source_id")


class MixRow(NamedTuple):
    """One image of the mixed train set."""

    image_id: str
    label: int
    """Class index."""
    source: str
    """'real' or 'synthetic'."""
    path: Path
    source_id: str = ""
    """A synthetic image's real source image (img2img), empty for txt2img and real images."""


@dataclass(frozen=True)
class MixedTrainSet:
    """The train split plus accepted synthetic target-class images."""

    rows: list[MixRow]
    requested: int
    """Synthetic images the ratio asks for."""

    @property
    def synthetic(self) -> int:
        return sum(1 for r in self.rows if r.source == "synthetic")

    @property
    def shortfall(self) -> int:
        return self.requested - self.synthetic


def mix_train(
    train: Sequence[tuple[str, int]],
    real_path: Any,
    accepted: Sequence[dict[str, Any]],
    synthetic_root: Path,
    target_class: str,
    ratio: float,
) -> MixedTrainSet:
    """Real train rows (id, class) with their files from ``real_path(id)``, plus the first
    ``round(ratio * real target-class count)`` of the ``accepted`` manifest rows (files under
    ``synthetic_root``), labelled ``target_class``."""
    target = CLASSES.index(target_class)
    real_ids = {image_id for image_id, _ in train}
    requested = math.floor(ratio * sum(1 for _, y in train if y == target) + 0.5)
    chosen = sorted(accepted, key=lambda row: row["id"])[:requested]
    clashes = sorted(real_ids & {row["id"] for row in chosen})
    if clashes:
        raise LeafgenError(f"synthetic image ids {clashes[:3]} collide with real image ids; rename them")
    rows = [MixRow(image_id, y, "real", Path(real_path(image_id))) for image_id, y in train]
    rows += [
        MixRow(row["id"], target, "synthetic", synthetic_root / row["file"], row.get("source_id") or "")
        for row in chosen
    ]
    return MixedTrainSet(rows, requested)


def write_mix(path: Path, mixed: MixedTrainSet) -> None:
    atomic.write_csv(
        path,
        MIX_COLUMNS,
        ([r.image_id, CLASSES[r.label], r.source, str(r.path), r.source_id] for r in mixed.rows),
    )


def read_mix(path: Path) -> list[MixRow]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            MixRow(
                row["image_id"],
                CLASSES.index(row["label"]),
                row["source"],
                Path(row["path"]),
                row.get("source_id") or "",
            )
            for row in csv.DictReader(fh)
        ]
