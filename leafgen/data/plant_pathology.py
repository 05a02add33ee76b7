"""Reading and validating a Plant Pathology 2020 (Kaggle FGVC7) folder.

The folder holds ``train.csv`` (``image_id`` plus one-hot class columns), ``test.csv`` (``image_id``) and
``images/<image_id>.jpg``. :func:`read_folder` collects every problem it finds instead of stopping at the
first, so one run tells the user everything to fix.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from leafgen.data.images import image_path, image_problem, unsafe_id_reason
from leafgen.errors import DataValidationError
from leafgen.labels import CLASSES, TEST_COLUMNS, TRAIN_COLUMNS

FIX_HINT = "Fix the entries above; bad images can instead be dropped with data.on_bad_image=skip."


@dataclass(frozen=True)
class PlantPathologyFolder:
    """A validated folder: labelled training images, unlabelled test images and what was skipped."""

    root: Path
    image_ids: tuple[str, ...]
    labels: np.ndarray = field(repr=False)
    """Class index into ``CLASSES`` for each of ``image_ids``."""
    test_ids: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    """``"<image_id>: <reason>"`` for each bad image dropped under ``on_bad_image=skip``."""

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def path(self, image_id: str) -> Path:
        return image_path(self.images_dir, image_id)

    def counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {c: int(n) for c, n in zip(CLASSES, counts)}


def read_folder(
    root: str | Path,
    *,
    on_bad_image: str = "fail",
    max_image_pixels: int = 60_000_000,
    decode_workers: int = 4,
    check_images: bool = True,
    progress: bool = True,
) -> PlantPathologyFolder:
    """Parse and validate ``root``; raise :class:`DataValidationError` listing every problem."""
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(
            str(root), ["not a directory"], "Point data.root at a Kaggle-format folder."
        )
    problems: list[str] = []
    if not (root / "images").is_dir():
        problems.append("images/: folder missing; images must be at images/<image_id>.jpg")
    train_rows, train_problems = parse_train_csv(root / "train.csv")
    test_ids, test_problems = parse_test_csv(root / "test.csv")
    problems += train_problems + test_problems
    train_ids = {image_id for image_id, _, _ in train_rows}
    problems += [
        f"test.csv: image_id {i!r} also appears in train.csv; an image cannot be in both"
        for i in test_ids
        if i in train_ids
    ]
    if problems:
        raise DataValidationError(str(root), problems, FIX_HINT)
    problems += _empty_class_problems(label for _, label, _ in train_rows)
    if problems:
        raise DataValidationError(str(root), problems)

    bad: dict[str, str] = {}
    if check_images:
        bad = _bad_images(
            root / "images", [r[0] for r in train_rows] + test_ids, max_image_pixels, decode_workers, progress
        )
    if bad and on_bad_image == "fail":
        raise DataValidationError(str(root), [f"images/{i}.jpg: {why}" for i, why in bad.items()], FIX_HINT)
    kept = [r for r in train_rows if r[0] not in bad]
    problems = _empty_class_problems(label for _, label, _ in kept)
    if problems:
        raise DataValidationError(str(root), [p + " after skipping bad images" for p in problems])
    return PlantPathologyFolder(
        root=root,
        image_ids=tuple(r[0] for r in kept),
        labels=np.array([r[1] for r in kept], dtype=np.int64),
        test_ids=tuple(i for i in test_ids if i not in bad),
        skipped=tuple(f"{i}: {why}" for i, why in bad.items()),
    )


def parse_train_csv(path: Path) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(image_id, class index, line number) rows of a train.csv, plus problems found."""
    header, rows, problems = _read_csv(path, TRAIN_COLUMNS)
    if header is None:
        return [], problems
    col = {name: header.index(name) for name in TRAIN_COLUMNS}
    out: list[tuple[str, int, int]] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        where = f"{path.name} line {line}"
        image_id = row[col["image_id"]].strip()
        reason = unsafe_id_reason(image_id)
        if reason:
            problems.append(f"{where}: {reason}")
            continue
        values = [_parse_flag(row[col[c]]) for c in CLASSES]
        if any(v is None for v in values):
            shown = ", ".join(f"{c}={row[col[c]].strip()!r}" for c in CLASSES)
            problems.append(f"{where} (image_id {image_id}): label values must be 0 or 1, got {shown}")
            continue
        if sum(values) != 1:  # type: ignore[arg-type]
            on = [c for c, v in zip(CLASSES, values) if v] or ["none"]
            problems.append(
                f"{where} (image_id {image_id}): labels are not one-hot (set: {', '.join(on)}); "
                "exactly one class column must be 1"
            )
            continue
        if image_id in seen:
            problems.append(f"{where}: duplicate image_id {image_id!r} (first on line {seen[image_id]})")
            continue
        seen[image_id] = line
        out.append((image_id, values.index(1), line))
    return out, problems


def parse_test_csv(path: Path) -> tuple[list[str], list[str]]:
    header, rows, problems = _read_csv(path, TEST_COLUMNS)
    if header is None:
        return [], problems
    ids: list[str] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        image_id = row[0].strip()
        reason = unsafe_id_reason(image_id)
        if reason:
            problems.append(f"{path.name} line {line}: {reason}")
        elif image_id in seen:
            problems.append(
                f"{path.name} line {line}: duplicate image_id {image_id!r} (first on line {seen[image_id]})"
            )
        else:
            seen[image_id] = line
            ids.append(image_id)
    return ids, problems


def _read_csv(
    path: Path, columns: tuple[str, ...]
) -> tuple[list[str] | None, list[tuple[int, list[str]]], list[str]]:
    """Header, (line number, fields) rows and problems; header is None when rows cannot be read."""
    expected = ",".join(columns)
    if not path.is_file():
        return None, [], [f"{path.name}: file missing; expected a CSV with header {expected}"]
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, [], [f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    try:
        records = [(i + 1, row) for i, row in enumerate(csv.reader(io.StringIO(text, newline="")))]
    except csv.Error as exc:
        return None, [], [f"{path.name}: not a valid CSV ({exc})"]
    records = [(n, row) for n, row in records if any(cell.strip() for cell in row)]
    if not records:
        return None, [], [f"{path.name}: empty; expected header {expected}"]
    _, header = records[0]
    header = [h.strip() for h in header]
    problems = []
    missing = [c for c in columns if c not in header]
    extra = [h for h in header if h not in columns]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if missing:
        problems.append(f"{path.name} header: missing column(s) {', '.join(missing)}; expected {expected}")
    if extra:
        problems.append(
            f"{path.name} header: unexpected column(s) {', '.join(map(repr, extra))}; expected {expected}"
        )
    if duplicated:
        problems.append(f"{path.name} header: duplicated column(s) {', '.join(duplicated)}")
    if problems:
        return None, [], problems
    rows = []
    for line, row in records[1:]:
        if len(row) != len(header):
            problems.append(f"{path.name} line {line}: expected {len(header)} fields, got {len(row)}")
        else:
            rows.append((line, row))
    return header, rows, problems


def _parse_flag(text: str) -> int | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return int(value) if value in (0.0, 1.0) else None


def _empty_class_problems(labels: Iterable[int]) -> list[str]:
    counts = Counter(labels)
    return [
        f"train.csv: class {c!r} has no images; every class needs at least one"
        for i, c in enumerate(CLASSES)
        if not counts[i]
    ]


def _bad_images(
    images_dir: Path, ids: list[str], max_pixels: int, workers: int, progress: bool
) -> dict[str, str]:
    def check(image_id: str) -> str | None:
        try:
            path = image_path(images_dir, image_id)
        except ValueError as exc:
            return str(exc)
        return image_problem(path, max_pixels)

    # PIL releases the GIL while decoding, so threads give real parallelism here.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(check, ids),
                total=len(ids),
                desc="checking images",
                unit="img",
                disable=not progress,
                leave=False,
            )
        )
    return {i: why for i, why in zip(ids, results) if why}
