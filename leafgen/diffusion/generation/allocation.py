"""Where to generate: how many img2img rows each source image gets (``generate.allocation``).

``even`` gives every source the same number of rows. ``errors`` generates where the gating classifier
errs (as ActGen and feedback-guided synthesis do): each target-class image of the *validation* split is
assigned to its nearest source in the classifier's feature space (cosine), and weighs 1 - the classifier's
probability of the target class for it; a source's error is the sum over the validation images assigned to
it. The allocation is softened so no source is starved: a share ``allocation_floor`` of the rows is spread
evenly, the rest in proportion to the errors. Only the validation split is read; the held-out test split
never is, so it stays untouched by what is generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import nn

from leafgen.diffusion.probes.evaluate import classifier_features, classifier_probs, to_unit_float


def error_weights(
    classifier: nn.Module,
    size: tuple[int, int],
    sources: np.ndarray,
    val: np.ndarray,
    target: int,
    floor: float,
) -> dict[str, Any]:
    """Per source (uint8 images (S, H, W, 3)), its row weight from the target-class validation images
    ``val`` (uint8 (V, H, W, 3)): see the module docstring. Returns weights and what they came from."""
    src, seen = to_unit_float(sources), to_unit_float(val)
    feats = [F.normalize(classifier_features(classifier, x, size), dim=1) for x in (src, seen)]
    nearest = (feats[1] @ feats[0].T).argmax(1).numpy()
    miss = 1.0 - classifier_probs(classifier, seen, size)[:, target]
    errors = np.bincount(nearest, weights=miss, minlength=len(sources))
    share = errors / errors.sum() if errors.sum() > 0 else np.full(len(sources), 1.0 / len(sources))
    weights = floor / len(sources) + (1 - floor) * share
    return {
        "weights": weights.tolist(),
        "errors": errors.tolist(),
        "val_images": np.bincount(nearest, minlength=len(sources)).tolist(),
        "val_target_probability": (1.0 - miss).tolist(),
        "val_nearest_source": nearest.tolist(),
    }


def allocation_table(
    source_ids: Sequence[str], rows: Sequence[dict[str, Any]], info: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Per source: its id, the rows it got and, for ``errors``, the validation evidence behind them."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["source_id"]] = counts.get(row["source_id"], 0) + 1
    table = []
    for k, source in enumerate(source_ids):
        entry: dict[str, Any] = {"source_id": source, "rows": counts.get(source, 0)}
        if info is not None:
            entry.update(weight=info["weights"][k], error=info["errors"][k], val_images=info["val_images"][k])
        table.append(entry)
    return table


def load_pixels(paths: Sequence[Path], size: tuple[int, int], cache: Path, max_pixels: int) -> np.ndarray:
    """Images decoded at the classifier's input size through the run's decode cache."""
    from leafgen.data.cache import ensure_cached

    return np.load(ensure_cached(list(paths), size, cache, max_pixels), mmap_mode="r")
