"""Classifier metrics from predicted probabilities, computed with scikit-learn.

Per class: recall (the per-class accuracy the Plant Pathology papers report) and one-vs-rest ROC AUC;
overall: accuracy and the Kaggle metric, the mean column-wise ROC AUC. The confusion matrix is kept as
counts and drawn as a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score, roc_auc_score

from leafgen import atomic
from leafgen.labels import CLASSES


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, target_class: str = "multiple_diseases"
) -> dict[str, Any]:
    """Flat metric dict (``accuracy``, ``recall/<class>``, ``auc/<class>``, ``mean_auc``, ``target_recall``,
    ``confusion_matrix``) for integer labels ``y_true`` and an (N, C) probability array."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(len(CLASSES)))
    pred = probs.argmax(axis=1)
    recall = recall_score(y_true, pred, labels=labels, average=None, zero_division=0)
    onehot = np.eye(len(CLASSES))[y_true]
    aucs = [
        roc_auc_score(onehot[:, k], probs[:, k]) if 0 < onehot[:, k].sum() < len(y_true) else math.nan
        for k in labels
    ]
    metrics: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, pred))}
    for k, name in enumerate(CLASSES):
        metrics[f"recall/{name}"] = float(recall[k])
        metrics[f"auc/{name}"] = float(aucs[k])
    defined = [a for a in aucs if not math.isnan(a)]
    metrics["mean_auc"] = float(np.mean(defined)) if defined else math.nan
    metrics["target_recall"] = metrics[f"recall/{target_class}"]
    metrics["confusion_matrix"] = confusion_matrix(y_true, pred, labels=labels).tolist()
    return metrics


def save_confusion_matrix(matrix: list[list[int]], path: str | Path, title: str = "") -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted) as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=CLASSES).plot(
        ax=ax, colorbar=False, cmap="Greens"
    )
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
