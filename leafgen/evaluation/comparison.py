"""Honest comparison of classifier arms: per class and overall, over seeds and over test images.

For every arm and seed the metrics are computed from saved probabilities; an arm's figure is the mean
over seeds with the spread (standard deviation) beside it. Against each reference arm (the baseline and
the balanced arm by default), every other arm gets per-seed paired differences (same seed, same test
images) and a percentile-bootstrap 95% interval of the seed-averaged difference, resampling test images
with the same resample for every arm, so the interval reflects how few test images of a class there are.
Validation differences are reported next to test ones, and a validation gain in the target class,
accuracy or mean AUC that the test split does not confirm is flagged.

ROC AUC is computed as the Mann-Whitney rank statistic (equal to scikit-learn's ``roc_auc_score``, which
the tests check) so thousands of resamples are evaluated as arrays rather than in a Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from leafgen.labels import CLASSES

Probs = Mapping[str, Sequence[np.ndarray]]
"""Arm name -> one (N, C) probability array per seed, seeds in the same order for every arm."""


def metric_names() -> list[str]:
    return [*(f"recall/{c}" for c in CLASSES), "accuracy", *(f"auc/{c}" for c in CLASSES), "mean_auc"]


def resampled_metrics(y: np.ndarray, probs: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of :func:`metric_names` on each row of ``idx`` (B, N) of test-image indices: (B,)."""
    yb, pb = y[idx], probs[idx]  # (B, N), (B, N, C)
    correct = pb.argmax(-1) == yb
    out: dict[str, np.ndarray] = {}
    aucs = []
    for k, name in enumerate(CLASSES):
        pos = yb == k
        n_pos = pos.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"recall/{name}"] = (correct & pos).sum(1) / n_pos
            ranks = rankdata(pb[..., k], axis=1)
            n_neg = pos.shape[1] - n_pos
            auc = ((ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        out[f"auc/{name}"] = auc
        aucs.append(auc)
    out["accuracy"] = correct.mean(1)
    with np.errstate(invalid="ignore"):
        out["mean_auc"] = np.nanmean(np.stack(aucs), axis=0) if len(aucs) else np.full(len(idx), np.nan)
    return out


def _seed_metrics(y: np.ndarray, probs: Probs) -> dict[str, dict[str, list[float]]]:
    """Arm -> metric -> value per seed, on all images."""
    everything = np.arange(len(y))[None]
    return {
        arm: {
            name: [float(resampled_metrics(y, p, everything)[name][0]) for p in per_seed]
            for name in metric_names()
        }
        for arm, per_seed in probs.items()
    }


def _summary(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    std = float(np.nanstd(arr, ddof=1)) if len(arr) > 1 else None  # one seed: no spread to measure
    return {"mean": float(np.nanmean(arr)), "std": std, "per_seed": values}


# Below this many test images of a class, a bootstrap over them says little: its interval collapses.
MIN_CLASS_IMAGES = 10


def _verdict(low: float, high: float, paired: Sequence[float], n_images: int | None) -> str:
    """'better' or 'worse' only when the whole test-image interval is on one side of zero and so is every
    seed's paired difference: the interval holds the test sample's noise, the seeds the training noise."""
    if n_images is not None and n_images < MIN_CLASS_IMAGES:
        return f"too few test images ({n_images})"
    if low > 0 and all(d > 0 for d in paired):
        return "better"
    if high < 0 and all(d < 0 for d in paired):
        return "worse"
    return "no clear difference"


def compare_arms(
    y_test: np.ndarray,
    test: Probs,
    y_val: np.ndarray,
    val: Probs,
    seeds: Sequence[int],
    target_class: str,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    references: Sequence[str] = ("baseline",),
) -> dict[str, Any]:
    """The comparison as a JSON-able dict (see the module docstring); ``test``/``val`` hold each arm's
    probabilities per seed in ``seeds`` order. ``deltas[reference][arm][metric]``: every arm against each
    reference arm."""
    names = metric_names()
    test_values, val_values = _seed_metrics(y_test, test), _seed_metrics(y_val, val)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_test), size=(bootstrap_samples, len(y_test)))
    # Seed-averaged metric of every arm on every resample: (B,) per arm and metric.
    boot = {}
    for arm, per_seed in test.items():
        runs = [resampled_metrics(y_test, p, idx) for p in per_seed]
        boot[arm] = {name: np.mean([run[name] for run in runs], axis=0) for name in names}
    counts = np.bincount(y_test, minlength=len(CLASSES))
    deltas: dict[str, Any] = {}
    warnings: list[str] = []
    for ref in references:
        deltas[ref] = {}
        for arm in (a for a in test if a != ref):
            deltas[ref][arm] = {}
            for name in names:
                paired = [a - b for a, b in zip(test_values[arm][name], test_values[ref][name])]
                low, high = np.nanpercentile(boot[arm][name] - boot[ref][name], [2.5, 97.5])
                val_delta = float(np.nanmean(val_values[arm][name]) - np.nanmean(val_values[ref][name]))
                cls = name.split("/")[-1]
                n_images = int(counts[CLASSES.index(cls)]) if cls in CLASSES else None
                entry = {
                    "mean": float(np.nanmean(paired)),
                    "per_seed": paired,
                    "ci95": [float(low), float(high)],
                    "verdict": _verdict(low, high, paired, n_images),
                    "val_mean": val_delta,
                }
                deltas[ref][arm][name] = entry
                watched = name in (f"recall/{target_class}", "accuracy", "mean_auc")
                if watched and val_delta > 0.02 and entry["verdict"] != "better":
                    warnings.append(
                        f"{arm} vs {ref}, {name}: {val_delta:+.1%} on validation, but on the held-out test "
                        f"split {entry['mean']:+.1%} with 95% interval [{low:+.1%}, {high:+.1%}]: the "
                        "validation gain is not confirmed"
                    )
    if len(seeds) < 2:
        warnings.append("one seed per arm: the spread between training runs is not measured")
    few = [f"{c} ({n})" for c, n in zip(CLASSES, counts) if n < MIN_CLASS_IMAGES]
    if few:
        warnings.append(
            f"fewer than {MIN_CLASS_IMAGES} test images of {', '.join(few)}: no verdict is drawn for "
            "those classes; use a larger test split"
        )
    return {
        "arms": list(test),
        "references": list(references),
        "seeds": list(seeds),
        "target_class": target_class,
        "test_counts": {c: int(n) for c, n in zip(CLASSES, counts)},
        "bootstrap_samples": bootstrap_samples,
        "test": {arm: {n: _summary(v) for n, v in m.items()} for arm, m in test_values.items()},
        "val": {arm: {n: _summary(v) for n, v in m.items()} for arm, m in val_values.items()},
        "deltas": deltas,
        "warnings": warnings,
    }


def other_recall(comparison: dict[str, Any], arm: str) -> list[float]:
    """Per seed, the mean test recall of every class but the target: what an arm pays for the target."""
    others = [c for c in CLASSES if c != comparison["target_class"]]
    per_class = [comparison["test"][arm][f"recall/{c}"]["per_seed"] for c in others]
    return [float(np.mean(values)) for values in zip(*per_class)]
