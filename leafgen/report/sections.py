"""The report's sections on the generative side: the synthetic images and the gate, DreamBooth's validation
grids, and the drift probe with the judge that measured it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from leafgen.report.document import Figure, Section, Table
from leafgen.report.judge import judge_table, judge_warning

MAX_VALIDATION_GRIDS = 6


def _opt(value: float | None, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _ci_share(entry: dict[str, Any]) -> str:
    if entry["share"] is None:
        return "n/a (none)"
    low, high = entry["ci95"]
    return f"{entry['share']:.3f} [{low:.3f}, {high:.3f}] of {entry['images']}"


def gate_section(
    gate: dict[str, Any],
    mix: dict[str, Any],
    measured: dict[str, Any],
    allocation: dict[str, Any] | None,
    target: str,
    figures: list[Figure],
) -> Section:
    reasons = gate["rejected_by_reason"]
    rows = [["accepted", str(gate["accepted"]), f"{gate['accepted'] / gate['images']:.1%}"]]
    rows += [[why, str(n), f"{n / gate['images']:.1%}"] for why, n in reasons.items()]
    margin = f", ahead of every other class by >= {gate['margin']}" if gate.get("margin") is not None else ""
    easy = f", at most {gate['max_score']} (above: too easy)" if gate.get("max_score", 1.0) < 1.0 else ""
    judged = {s["strength"]: s["judge_share"] for s in measured["by_strength"]}
    strength_rows = [
        [f"{s['strength']:.2f}", str(s["images"]), str(s["accepted"]), _opt(judged.get(s["strength"]))]
        for s in gate["by_strength"]
    ]
    near, kid, floor = measured["nearest_real"], measured["kid"], measured["kid_real_halves"]
    set_rows = [
        [f"judge's {target} share, accepted", _ci_share(measured["judge_share"]["accepted"])],
        [f"judge's {target} share, rejected", _ci_share(measured["judge_share"]["rejected"])],
        ["median distance to the nearest real train image", _opt(near["median_distance"], "{:.4f}")],
        [
            f"share nearer a real image than the near-duplicate line ({near['near_duplicate_line']:.4f})",
            _opt(near["share_below_line"], "{:.1%}"),
        ],
        [f"KID, accepted vs real {target} train images", _kid(kid)],
        [f"KID, two halves of the real {target} train images (the floor)", _kid(floor)],
    ]
    tables = [
        Table(["gate decision", "images", "share"], rows),
        Table(["img2img strength", "images", "accepted", f"judge's {target} share"], strength_rows),
        Table(["the generated set", "value"], set_rows),
    ]
    paragraphs = [
        f"Generated {gate['images']}; the gate (the gating classifier's {target} probability >= "
        f"{gate['threshold']}{margin}{easy}; no pHash within {gate['near_duplicate_distance']} bits of a "
        f"real image) accepted {gate['accepted']} ({gate['acceptance_rate']:.1%}). Grids run from the "
        "lowest img2img strength to the highest.",
        f"Mix: ratio {mix['synthetic_ratio']} asks for {mix['requested']} synthetic images per "
        f"{mix['real_target_images']} real ones; {mix['synthetic']} used"
        + (f" ({mix['shortfall']} short: the gate accepted too few)" if mix["shortfall"] else "")
        + f". An arm with train: mix trains on {mix['train_images']} images; val and test stay real.",
        f"The generated set, measured by the independent judge and in {measured['feature_space']} (cosine "
        "distances; KID: unbiased MMD^2 with the cubic polynomial kernel on those features, computed with "
        "scikit-learn, mean ± std over random subsets).",
    ]
    if allocation is not None:
        tables.append(_allocation_table(allocation))
        paragraphs.append(_allocation_words(allocation))
    return Section("Synthetic images and the quality gate", paragraphs, tables, figures)


def _kid(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "n/a (too few images)"
    return f"{entry['mean']:.4f} ± {entry['std']:.4f} (subsets of {entry['subset_size']})"


def _allocation_words(allocation: dict[str, Any]) -> str:
    if allocation["allocation"] == "even":
        return "Allocation: even, the same number of img2img rows from every source image."
    return (
        "Allocation: errors. Each validation image of the class goes to its nearest source (the gating "
        "classifier's features) and weighs 1 - its target probability; a share "
        f"{allocation['floor']} of the rows is spread evenly, the rest by those errors. Test images are "
        "never read."
    )


def _allocation_table(allocation: dict[str, Any]) -> Table:
    sources = sorted(allocation["sources"], key=lambda s: -s["rows"])
    errors = allocation["allocation"] == "errors"
    header = ["source image", "rows", *(["weight", "val images nearest", "summed error"] if errors else [])]
    rows = [
        [
            s["source_id"],
            str(s["rows"]),
            *([f"{s['weight']:.3f}", str(s["val_images"]), f"{s['error']:.3f}"] if errors else []),
        ]
        for s in sources
    ]
    return Table(header, rows)


def dreambooth_section(folder: Path, info: dict[str, Any]) -> Section:
    grids = info["validation_grids"]
    picks = sorted(
        {grids[round(i)] for i in np.linspace(0, len(grids) - 1, min(len(grids), MAX_VALIDATION_GRIDS))}
    )
    loss = info["final_loss"]
    return Section(
        "DreamBooth",
        paragraphs=[
            f"{info['kind']} fine-tune, {info['steps']} steps on {info['instance_images']} instance and "
            f"{info['class_images']} class images; final loss {loss['loss']:.4f} (instance "
            f"{loss['loss/instance']:.4f}, prior {loss['loss/prior']:.4f}). Validation grids over steps: one "
            "row per validation prompt, the same seeds in every grid, so a cell compares across steps.",
        ],
        figures=[Figure(folder / "validation" / g, g.removesuffix(".png").replace("_", " ")) for g in picks],
    )


def _share(value: float, ci: list[float], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(value)} [{f.format(ci[0])}, {f.format(ci[1])}]"


def drift_section(
    folder: Path, drift: dict[str, Any], quality: dict[str, Any], judge_confusion: Path | None
) -> Section:
    target = drift["target_class"]
    rows = []
    for r in drift["prompts"]:
        if r["kind"] == "leaf":
            shares = [
                _share(r["target_share_before"], r["before_ci95"]),
                _share(r["target_share_after"], r["after_ci95"]),
                _share(r["change"], r["change_ci95"], signed=True),
            ]
        else:
            shares = ["not a leaf: not judged", "", ""]
        rows.append([repr(r["prompt"]), str(r["samples"]), *shares, f"{r['feature_distance']:.4f}"])
    settings = drift["settings"]
    figures = [Figure(folder / "drift_grid.png", "each prompt: before (left) and after (right), same seeds")]
    if judge_confusion is not None and judge_confusion.is_file():
        figures.append(Figure(judge_confusion, "the judge's confusion matrix on the held-out test split"))
    return Section(
        "DreamBooth's effect and language drift",
        paragraphs=[
            f"The same prompts and seeds before and after the fine-tune, judged by the independent judge "
            f"(its own figures below). The instance prompt comes first: its {target} share should rise; the "
            f"class prompt's should not. Shares are for prompts that name a leaf, with 95% Wilson intervals; "
            f"the change has a 95% paired-bootstrap interval. The instance and class prompts get "
            f"{settings['samples']} samples per model, the others {settings['other_samples']} (budget). "
            "Prompts that are not leaves (cat, sea, ...) have no right answer for a leaf classifier: only "
            "their feature distance (mean cosine distance of before/after pairs in the judge's features; 0: "
            "untouched) is reported.",
        ],
        tables=[
            Table(
                ["prompt", "samples", f"{target} before", f"{target} after", "change", "feature distance"],
                rows,
            ),
            judge_table(quality, target),
        ],
        figures=figures,
        warnings=judge_warning(quality),
    )
