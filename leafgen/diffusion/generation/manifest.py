"""The generation manifest: one Parquet row per image, written atomically per batch as a part file.

Layout of an output folder::

    images/<id>.png            each written atomically (temp file + rename)
    manifest/part-*.parquet    one part per generated batch, written after its images
    manifest.parquet           the requested rows, in request order, once every image exists

An image counts as done only when a manifest row records it and the file's sha256 matches, so a kill at
any moment leaves either finished images (kept by a rerun) or work that is redone; a batch retried by Ray
after its part was written may appear twice among the parts, and reading keeps one row per id.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from leafgen import atomic
from leafgen.diffusion.generation.prompt_table import ROW_KEYS, Row
from leafgen.errors import LeafgenError

IMAGES_DIR = "images"
PARTS_DIR = "manifest"
MANIFEST_FILE = "manifest.parquet"

# What generation adds to each prompt-table row.
GENERATED_KEYS = (
    "file",
    "sha256",
    "seconds",
    "finished_at",
    "scheduler",
    "base_model",
    "adapter",
)
MANIFEST_KEYS = ROW_KEYS + GENERATED_KEYS


def image_file(out_dir: Path, image_id: str) -> Path:
    return out_dir / IMAGES_DIR / f"{image_id}.png"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_part(out_dir: Path, rows: Sequence[Row]) -> Path:
    """Write the manifest rows of one finished batch as a new part file (atomically)."""
    target = out_dir / PARTS_DIR / f"part-{rows[0]['id']}-{uuid.uuid4().hex[:8]}.parquet"
    table = pa.Table.from_pylist([{k: row[k] for k in MANIFEST_KEYS} for row in rows])
    with atomic.atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return target


def read_parts(out_dir: Path) -> dict[str, Row]:
    """Every recorded row by id; of an id recorded twice (a retried batch), the later one."""
    rows: dict[str, Row] = {}
    parts = sorted((out_dir / PARTS_DIR).glob("part-*.parquet")) if (out_dir / PARTS_DIR).is_dir() else []
    for part in parts:
        try:
            table = pq.read_table(part)
        except (OSError, pa.ArrowInvalid) as exc:
            raise LeafgenError(
                f"{part}: unreadable manifest part ({exc}); parts are written atomically, so this file was "
                "changed by something else: delete it and rerun to regenerate its images"
            ) from None
        for row in table.to_pylist():
            old = rows.get(row["id"])
            if old is None or row["finished_at"] >= old["finished_at"]:
                rows[row["id"]] = row
    return rows


def finished_rows(out_dir: Path, rows: Iterable[Row]) -> dict[str, Row]:
    """The recorded manifest rows of ``rows`` already generated with the same settings: recorded, on
    disk, hash intact; by id."""
    recorded = read_parts(out_dir)
    done = {}
    for row in rows:
        old = recorded.get(row["id"])
        if old is None or any(old.get(k) != row[k] for k in ROW_KEYS):  # parts older than a column: redo
            continue
        path = image_file(out_dir, row["id"])
        if path.is_file() and sha256_file(path) == old["sha256"]:
            done[row["id"]] = old
    return done


def finished_ids(out_dir: Path, rows: Iterable[Row]) -> set[str]:
    """Ids of ``rows`` already generated with the same settings (see :func:`finished_rows`)."""
    return set(finished_rows(out_dir, rows))


def finalize(out_dir: Path, rows: Sequence[Row]) -> pa.Table:
    """The manifest of exactly ``rows`` (request order), checked against the files, saved as
    ``manifest.parquet``. Raises if any image is missing, since then generation did not finish."""
    done = finished_rows(out_dir, rows)
    missing = [row["id"] for row in rows if row["id"] not in done]
    if missing:
        raise LeafgenError(
            f"{out_dir}: {len(missing)} requested image(s) are missing or do not match their manifest row "
            f"(first: {missing[0]}); rerun the same command to generate only those"
        )
    table = pa.Table.from_pylist([{k: done[row["id"]][k] for k in MANIFEST_KEYS} for row in rows])
    with atomic.atomic_path(out_dir / MANIFEST_FILE) as tmp:
        pq.write_table(table, tmp)
    return table


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a finished ``manifest.parquet`` (generation's, or the gate's with its decisions)."""
    if not path.is_file():
        raise LeafgenError(f"{path} does not exist: run the generation stage first")
    return pq.read_table(path).to_pylist()
