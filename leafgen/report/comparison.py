"""The report's comparison section: every arm on the held-out test split, and every arm against each
reference arm (differences with 95% intervals, per seed, and validation beside test)."""

from __future__ import annotations

from typing import Any

from leafgen.labels import CLASSES
from leafgen.report.document import Figure, Section, Table

METRICS = (*(f"recall/{c}" for c in CLASSES), "accuracy", "mean_auc")


def cell(stat: dict[str, Any]) -> str:
    spread = f" ± {stat['std']:.3f}" if stat["std"] is not None else ""
    return f"{stat['mean']:.3f}{spread}"


def delta(d: dict[str, Any]) -> str:
    low, high = d["ci95"]
    return f"{d['mean']:+.3f} [{low:+.3f}, {high:+.3f}] {d['verdict']}"


def _label(name: str, target: str) -> str:
    return name.replace("recall/", "") + (" (target)" if name == f"recall/{target}" else "")


def comparison_section(comparison: dict[str, Any], figures: list[Figure]) -> Section:
    arms, target, seeds = comparison["arms"], comparison["target_class"], comparison["seeds"]
    tables = [
        Table(
            ["metric", *arms],
            [[_label(n, target), *(cell(comparison["test"][a][n]) for a in arms)] for n in METRICS],
        )
    ]
    for ref in comparison["references"]:  # the JSON's keys are sorted; the configured order is kept here
        per_arm = comparison["deltas"][ref]
        others = [a for a in arms if a in per_arm]
        tables.append(
            Table(
                ["metric", *(f"{a} − {ref} (95% interval)" for a in others)],
                [[_label(n, target), *(delta(per_arm[a][n]) for a in others)] for n in METRICS],
            )
        )
        tables.append(
            Table(
                [f"difference from {ref}, per seed", *(f"seed {s}" for s in seeds)],
                [
                    [f"{a}: {_label(n, target)}", *(f"{v:+.3f}" for v in per_arm[a][n]["per_seed"])]
                    for a in others
                    for n in (f"recall/{target}", "accuracy", "mean_auc")
                ],
            )
        )
        tables.append(
            Table(
                [f"difference from {ref}", "on validation", "on the held-out test split"],
                [
                    [f"{a}: {_label(n, target)}", f"{per_arm[a][n]['val_mean']:+.3f}", delta(per_arm[a][n])]
                    for a in others
                    for n in (f"recall/{target}", "accuracy")
                ],
            )
        )
    counts = ", ".join(f"{c} {n}" for c, n in comparison["test_counts"].items())
    refs = " and ".join(comparison["references"])
    return Section(
        "The arms on the held-out test split",
        paragraphs=[
            f"Recall per class (per-class accuracy), accuracy and mean column-wise ROC AUC; mean ± standard "
            f"deviation over seeds {seeds}. Every arm is compared with {refs}: differences are paired by "
            f"seed; the interval is a 95% percentile bootstrap over test images "
            f"({comparison['bootstrap_samples']} resamples). Test images: {counts}. "
            "'better' or 'worse' only when the whole interval and every seed's difference are on one side "
            "of zero; a class with too few test images gets no verdict.",
        ],
        tables=tables,
        figures=figures,
        warnings=comparison["warnings"],
    )
