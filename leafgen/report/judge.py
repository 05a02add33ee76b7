"""How far to trust the judge: its own held-out test figures, shown beside every figure it produces.

A judge counts the target class in generated images; it can only be trusted to count what it finds in real
ones (its recall of the target class), and what it wrongly puts there (other classes' real images called
the target, e.g. rust leaves called multiple_diseases) inflates every share it reports. Below the bars of
``eval.judge`` it is called weak, in words, at the top of each section that uses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leafgen.config import JudgeConfig
from leafgen.labels import CLASSES
from leafgen.report.document import Table


def judge_quality(test: dict[str, Any], target_class: str, bars: JudgeConfig) -> dict[str, Any]:
    """The judge's accuracy, target recall and, per other class, the share of its real test images called
    the target; ``weak`` and the reasons when a bar is missed. ``test``: the judge stage's test metrics
    (with the confusion matrix: rows true class, columns predicted)."""
    matrix = np.asarray(test["confusion_matrix"], dtype=float)
    k = CLASSES.index(target_class)
    called = {
        c: float(matrix[i, k] / matrix[i].sum()) for i, c in enumerate(CLASSES) if i != k and matrix[i].sum()
    }
    worst = max(called, key=called.get) if called else None
    reasons = []
    if test["accuracy"] < bars.min_accuracy:
        reasons.append(f"test accuracy {test['accuracy']:.3f} < {bars.min_accuracy}")
    if test["target_recall"] < bars.min_target_recall:
        reasons.append(
            f"finds {test['target_recall']:.1%} of real {target_class} test images "
            f"(< {bars.min_target_recall:.0%})"
        )
    if worst is not None and called[worst] > bars.max_confusion:
        reasons.append(
            f"calls {called[worst]:.1%} of real {worst} test images {target_class} "
            f"(> {bars.max_confusion:.0%})"
        )
    return {
        "accuracy": float(test["accuracy"]),
        "target_recall": float(test["target_recall"]),
        "called_target": called,
        "weak": bool(reasons),
        "reasons": reasons,
    }


def judge_warning(quality: dict[str, Any]) -> list[str]:
    """The words at the top of a section measured by a weak judge (none for a judge that meets the bars)."""
    if not quality["weak"]:
        return []
    return [
        "the judge that measured this is weak: "
        + "; ".join(quality["reasons"])
        + ". Its shares of the target class are rough: read them as upper bounds where it over-calls the "
        "class and as lower bounds where it misses it"
    ]


def judge_table(quality: dict[str, Any], target_class: str) -> Table:
    rows = [
        ["test accuracy", f"{quality['accuracy']:.3f}"],
        [f"real {target_class} test images it finds (recall)", f"{quality['target_recall']:.3f}"],
    ]
    rows += [
        [f"real {c} test images it calls {target_class}", f"{share:.3f}"]
        for c, share in quality["called_target"].items()
    ]
    return Table(["the judge on the held-out test split", "value"], rows)
