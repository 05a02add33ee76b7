"""The prompt table: one row per image to generate, holding everything that image depends on.

A row is a plain dict of scalars (it crosses into Ray Data as is). Each row's seed, and the template its
prompt is drawn from, are functions of the base seed and the row's index only, so raising the number of
images keeps the first ones, and an image never depends on which batch or actor renders it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leafgen.errors import LeafgenError

Row = dict[str, Any]

# Every row has exactly these keys; the manifest adds what generation measured (file, sha256, time).
ROW_KEYS = (
    "id",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "mode",
    "strength",
    "source_id",
    "source_path",
    "height",
    "width",
)


@dataclass(frozen=True)
class TableSpec:
    """What a prompt table is made of (``GenerateConfig`` plus the resolution and the id prefix)."""

    num_images: int
    prompts: Sequence[str]
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    height: int
    width: int
    mode: str = "txt2img"
    strength: float = 1.0
    prefix: str = "syn"


def row_seed(base_seed: int, index: int) -> int:
    """A 31-bit seed of (base seed, index); unlike ``base + index``, seeds 0 and 1 share no images."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1)[0] >> 1)


def prompt_table(spec: TableSpec, sources: Sequence[tuple[str, Path]] = ()) -> list[Row]:
    """Rows ``<prefix>-000000`` ... for ``spec``; img2img rows cycle through ``sources`` (id, path) in an
    order shuffled by the base seed, so every real image is used before any is used twice."""
    if spec.mode == "img2img" and not sources:
        raise LeafgenError(
            "generate.mode is img2img but there are no source images: the train split holds no image of "
            "the target class"
        )
    order = np.random.default_rng(spec.seed).permutation(len(sources)) if sources else []
    rows = []
    for i in range(spec.num_images):
        seed = row_seed(spec.seed, i)
        source_id, source_path = sources[order[i % len(sources)]] if spec.mode == "img2img" else ("", "")
        rows.append(
            {
                "id": f"{spec.prefix}-{i:06d}",
                "prompt": spec.prompts[np.random.default_rng(seed).integers(len(spec.prompts))],
                "negative_prompt": spec.negative_prompt,
                "seed": seed,
                "steps": spec.steps,
                "guidance": float(spec.guidance),
                "mode": spec.mode,
                "strength": float(spec.strength) if spec.mode == "img2img" else 1.0,
                "source_id": source_id,
                "source_path": str(source_path),
                "height": spec.height,
                "width": spec.width,
            }
        )
    return rows


def rows_from_columns(batch: dict[str, Any]) -> list[Row]:
    """A Ray Data batch (dict of equal-length arrays) as a list of plain rows."""
    n = len(batch["id"])
    return [{key: _plain(batch[key][i]) for key in ROW_KEYS} for i in range(n)]


def columns_from_rows(rows: Sequence[Row], keys: Sequence[str]) -> dict[str, np.ndarray]:
    return {key: np.asarray([row[key] for row in rows]) for key in keys}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
