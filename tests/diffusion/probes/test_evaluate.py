from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from torch import nn

from leafgen.diffusion.probes.evaluate import (
    class_shares,
    classifier_probs,
    generate,
    per_class_accuracy,
    roundtrip,
)

CLASSES = ("healthy", "multiple_diseases", "rust", "scab")


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    p = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    p.set_progress_bar_config(disable=True)
    return p


def test_a_sample_depends_on_its_seed_not_on_the_batch(pipe):
    together = generate(pipe, "leaf", 4, seed=7, batch=4, steps=3, size=(16, 24))
    alone = generate(pipe, "leaf", 4, seed=7, batch=1, steps=3, size=(16, 24))
    shifted = generate(pipe, "leaf", 2, seed=9, batch=2, steps=3, size=(16, 24))
    assert together.shape == (4, 3, 16, 24) and together.min() >= 0 and together.max() <= 1
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(together[2:], shifted, atol=1e-4, rtol=0)
    assert not torch.allclose(together[0], together[1])


def test_roundtrip_returns_images_at_the_model_size(pipe):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    out = roundtrip(pipe.vae, pixels, (16, 24))
    assert out.shape == (3, 3, 16, 24) and out.min() >= 0 and out.max() <= 1


def test_classifier_probs_resize_and_sum_to_one():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return torch.stack(
                [x.mean((1, 2, 3)), -x.mean((1, 2, 3)), x[:, 0].mean((1, 2)), self.w.expand(len(x))], 1
            )

    probs = classifier_probs(Probe(), torch.rand(5, 3, 16, 24), (32, 48), batch=2)
    assert probs.shape == (5, 4) and np.allclose(probs.sum(1), 1) and set(seen) == {(32, 48)}


def test_accuracy_and_shares_against_hand_counts():
    probs = np.eye(4)[[0, 0, 2, 2, 3, 1]]
    labels = [0, 2, 2, 2, 3, 3]
    assert per_class_accuracy(probs, labels, CLASSES) == {"healthy": 1.0, "rust": 2 / 3, "scab": 0.5}
    assert class_shares(probs, CLASSES) == {
        "healthy": 2 / 6,
        "multiple_diseases": 1 / 6,
        "rust": 2 / 6,
        "scab": 1 / 6,
    }
