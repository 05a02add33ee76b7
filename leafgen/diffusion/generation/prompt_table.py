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
import pyarrow as pa
import pyarrow.parquet as pq

from leafgen.data.images import unsafe_id_reason
from leafgen.errors import DataValidationError, LeafgenError

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
    "cluster",
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
    strength: float | Sequence[float] | dict[str, Sequence[float]] = 1.0
    """One img2img strength, a list drawn from per row, or {"uniform": (lo, hi)} (``generate.strength``)."""
    prefix: str = "syn"
    source_weights: Sequence[float] | None = None
    """img2img: how many rows each source gets, relative to the others (``generate.allocation``); None:
    the same number for every source."""


def row_seed(base_seed: int, index: int) -> int:
    """A 31-bit seed of (base seed, index); unlike ``base + index``, seeds 0 and 1 share no images."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1)[0] >> 1)


def draw_strength(
    strength: float | Sequence[float] | dict[str, Sequence[float]], seed: int, steps: int
) -> float:
    """The img2img strength of the row with ``seed``: the one value, one of a list, or uniform in a range
    (drawn from the row's own seed, so it never depends on other rows). A drawn value is recorded as what
    img2img applies, a whole number of the ``steps`` (diffusers re-runs int(steps x strength) of them)."""
    if isinstance(strength, (int, float)):
        return float(strength)
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the prompt is drawn from [seed]
    if isinstance(strength, dict):
        lo, hi = strength["uniform"]
        drawn = rng.uniform(lo, hi)
    else:
        drawn = strength[int(rng.integers(len(strength)))]
    return max(1, int(drawn * steps + 1e-9)) / steps


def source_order(n_sources: int, num_images: int, seed: int, weights: Sequence[float] | None) -> list[int]:
    """Which source each img2img row starts from. Even: the sources cycled in an order shuffled by the seed,
    so every one is used before any is used twice. Weighted: each source gets its share of the rows
    (largest remainder), the rows shuffled by the seed."""
    order = np.random.default_rng(seed).permutation(n_sources)
    if weights is None:
        return [int(order[i % n_sources]) for i in range(num_images)]
    w = np.asarray(weights, dtype=float)
    exact = w / w.sum() * num_images
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: num_images - counts.sum()]] += 1
    rows = np.repeat(np.arange(n_sources), counts)
    return [int(i) for i in np.random.default_rng([seed, 2]).permutation(rows)]


def prompt_table(spec: TableSpec, sources: Sequence[tuple[str, Path]] = ()) -> list[Row]:
    """Rows ``<prefix>-000000`` ... for ``spec``; img2img rows start from ``sources`` (id, path) as
    :func:`source_order` spreads them."""
    if spec.mode == "img2img" and not sources:
        raise LeafgenError(
            "generate.mode is img2img but there are no source images: the train split holds no image of "
            "the target class"
        )
    order = source_order(len(sources), spec.num_images, spec.seed, spec.source_weights) if sources else []
    rows = []
    for i in range(spec.num_images):
        seed = row_seed(spec.seed, i)
        source_id, source_path = sources[order[i]] if spec.mode == "img2img" else ("", "")
        rows.append(
            {
                "id": f"{spec.prefix}-{i:06d}",
                "prompt": spec.prompts[np.random.default_rng(seed).integers(len(spec.prompts))],
                "negative_prompt": spec.negative_prompt,
                "seed": seed,
                "steps": spec.steps,
                "guidance": float(spec.guidance),
                "mode": spec.mode,
                "strength": draw_strength(spec.strength, seed, spec.steps) if spec.mode == "img2img" else 1.0,
                "source_id": source_id,
                "source_path": str(source_path),
                "height": spec.height,
                "width": spec.width,
                "cluster": -1,
            }
        )
    return rows


def assign_clusters(
    rows: Sequence[Row],
    tokens: Sequence[str],
    sizes: Sequence[int],
    identifier: str,
    allocation: str,
    source_cluster: dict[str, int],
) -> list[Row]:
    """Rows for a fine-tune with one identifier per cluster (column ``cluster``; -1 means none): img2img
    rows take their source image's cluster; txt2img rows draw one from their own seed, in proportion to
    the clusters' train images (``allocation`` size) or evenly (equal), so a row's cluster never depends
    on how many rows there are. A cluster a user's table gives is kept. Each prompt's identifier becomes
    its cluster's token."""
    weights = np.asarray(sizes, dtype=float) if allocation == "size" else np.ones(len(tokens))
    weights = weights / weights.sum()
    out = []
    for i, row in enumerate(rows):
        cluster = int(row["cluster"])
        if cluster >= len(tokens):
            raise LeafgenError(
                f"row {i} ({row['id']}): cluster {cluster}, but the fine-tune has {len(tokens)}"
            )
        if cluster < 0 and row["mode"] == "img2img" and row["source_id"] in source_cluster:
            cluster = source_cluster[row["source_id"]]
        elif cluster < 0:  # its own stream: the prompt template is drawn from default_rng(seed)
            cluster = int(np.random.default_rng([row["seed"], 1]).choice(len(tokens), p=weights))
        out.append({**row, "cluster": cluster, "prompt": row["prompt"].replace(identifier, tokens[cluster])})
    return out


def read_prompt_table(path: Path, spec: TableSpec, sources: Sequence[tuple[str, Path]] = ()) -> list[Row]:
    """A user's prompt table (Parquet) as rows: ``id`` and ``prompt`` are required; ``negative_prompt``,
    ``seed``, ``steps``, ``guidance``, ``mode``, ``strength`` and ``source_id`` (for img2img, a train-split
    image of the target class) default to ``spec``, ``cluster`` to none (-1). Every problem is reported
    with its row number."""
    try:
        table = pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowInvalid) as exc:
        raise LeafgenError(f"{path}: cannot read the prompt table as Parquet ({exc})") from None
    source_paths = dict(sources)
    problems, rows, seen = [], [], set()
    for i, given in enumerate(table):
        where = f"row {i}"
        unknown = set(given) - set(ROW_KEYS) - {"source_path", "height", "width"}
        if unknown:
            problems.append(f"{where}: unknown column(s) {sorted(unknown)}; allowed: {', '.join(ROW_KEYS)}")
        image_id, prompt = str(given.get("id") or ""), given.get("prompt")
        if unsafe_id_reason(image_id):
            problems.append(f"{where}: {unsafe_id_reason(image_id)}")
        elif image_id in seen:
            problems.append(f"{where}: id {image_id!r} repeats an earlier row")
        seen.add(image_id)
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{where}: prompt must be a non-empty string")
        row = {
            "id": image_id,
            "prompt": prompt,
            "negative_prompt": given.get("negative_prompt") or spec.negative_prompt,
            "seed": int(given["seed"]) if given.get("seed") is not None else row_seed(spec.seed, i),
            "steps": int(given.get("steps") or spec.steps),
            "guidance": float(given["guidance"] if given.get("guidance") is not None else spec.guidance),
            "mode": given.get("mode") or spec.mode,
            "strength": float(given.get("strength") or 0.0),
            "source_id": given.get("source_id") or "",
            "source_path": "",
            "height": spec.height,
            "width": spec.width,
            "cluster": int(given["cluster"]) if given.get("cluster") is not None else -1,
        }
        if not row["strength"]:  # not given: drawn from the section's setting by the row's own seed
            row["strength"] = draw_strength(spec.strength, row["seed"], row["steps"])
        if row["mode"] not in ("txt2img", "img2img"):
            problems.append(f"{where}: mode must be txt2img or img2img, got {row['mode']!r}")
        elif row["mode"] == "img2img":
            if row["source_id"] not in source_paths:
                problems.append(
                    f"{where}: img2img needs a source_id among the train split's target-class images, got "
                    f"{row['source_id']!r}"
                )
            row["source_path"] = str(source_paths.get(row["source_id"], ""))
        else:
            row["strength"] = 1.0
        if row["steps"] <= 0 or row["guidance"] < 0 or not 0 < row["strength"] <= 1:
            problems.append(f"{where}: steps must be > 0, guidance >= 0 and strength in (0, 1]")
        rows.append(row)
    if not table:
        problems.append("the table has no rows")
    if problems:
        raise DataValidationError(str(path), problems, "fix these rows of generate.prompt_table")
    return rows


def rows_from_columns(batch: dict[str, Any]) -> list[Row]:
    """A Ray Data batch (dict of equal-length arrays) as a list of plain rows."""
    n = len(batch["id"])
    return [{key: _plain(batch[key][i]) for key in ROW_KEYS} for i in range(n)]


def columns_from_rows(rows: Sequence[Row], keys: Sequence[str]) -> dict[str, np.ndarray]:
    return {key: np.asarray([row[key] for row in rows]) for key in keys}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
