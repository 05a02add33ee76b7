"""Error-guided allocation: validation images the gating classifier misses pull rows to their nearest
source, softened by a floor; rows follow the weights."""

import numpy as np
import pytest

from leafgen.diffusion.generation.allocation import error_weights
from leafgen.labels import CLASSES

from .test_gate import TARGET, colour_classifier


def _images(*colours, n=1, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for colour in colours:
        for _ in range(n):
            out.append(np.clip(rng.integers(0, 40, (16, 24, 3)) + colour, 0, 255).astype(np.uint8))
    return np.stack(out)


RED, GREEN, BLUE = (200, 40, 40), (40, 200, 40), (40, 40, 200)


@pytest.mark.parametrize("floor", [0.0, 0.5, 1.0])
def test_sources_near_missed_validation_images_get_more_rows(floor):
    sources = _images(RED, GREEN, BLUE)
    # Two target-class validation images the classifier calls healthy (green), one it gets right (red).
    val = _images(GREEN, GREEN, RED, seed=1)
    info = error_weights(colour_classifier(), (32, 48), sources, val, CLASSES.index(TARGET), floor)
    weights = np.asarray(info["weights"])
    assert weights.sum() == pytest.approx(1.0)
    assert info["val_nearest_source"] == [1, 1, 0] and info["val_images"] == [1, 2, 0]
    assert info["val_target_probability"][2] > 0.5 > info["val_target_probability"][0]
    assert info["errors"][1] > info["errors"][0] and info["errors"][2] == 0
    assert np.all(weights >= floor / 3 - 1e-12)  # the floor: no source is starved
    if floor < 1:
        assert weights[1] > weights[0] >= weights[2]
    else:
        assert weights == pytest.approx([1 / 3] * 3)
