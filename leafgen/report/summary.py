"""Plain-text summaries printed at the end of commands."""

from __future__ import annotations

import json
from pathlib import Path

from leafgen.data.split import SPLITS
from leafgen.labels import CLASSES


def format_counts(columns: dict[str, dict[str, int]]) -> str:
    """A class-by-column table of image counts with a total row."""
    names = list(columns)
    width = max(len(c) for c in (*CLASSES, "total"))
    lines = [f"{'class':<{width}}  " + "  ".join(f"{n:>9}" for n in names)]
    for c in CLASSES:
        lines.append(f"{c:<{width}}  " + "  ".join(f"{columns[n].get(c, 0):>9}" for n in names))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{sum(columns[n].values()):>9}" for n in names))
    return "\n".join(lines)


def print_data_summary(run_dir: Path) -> None:
    """Class counts of the dataset and of each split of a run, if those stages are complete."""
    dataset, split = run_dir / "dataset" / "summary.json", run_dir / "split" / "summary.json"
    if not dataset.is_file():
        return
    info = json.loads(dataset.read_text())
    columns = {"train.csv": info["counts"]}
    if split.is_file():
        per_split = json.loads(split.read_text())
        columns.update({name: per_split[name] for name in SPLITS})
    print(
        f"dataset: {info['root']} ({info['train_images']} labelled, "
        f"{info['test_images']} unlabelled test images)"
    )
    if info["skipped"]:
        print(f"skipped {len(info['skipped'])} bad image(s); see {dataset}")
    print(format_counts(columns))
