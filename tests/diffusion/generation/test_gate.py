"""The quality gate on crafted inputs: what shows the class is kept, what does not is dropped, and a copy
of a real image is dropped whatever its score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from torch import nn

from leafgen.config import GateConfig
from leafgen.diffusion.generation.gate import (
    REJECT_COPY,
    REJECT_EASY,
    REJECT_MARGIN,
    REJECT_SCORE,
    RealImages,
    check_acceptance,
    gate_rows,
    nearest,
    perceptual_hashes,
)
from leafgen.errors import LeafgenError
from leafgen.labels import CLASSES

TARGET = "multiple_diseases"


def colour_classifier() -> nn.Module:
    """A real (tiny) classifier: mean colour -> logits; red-dominant images are the target class."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, len(CLASSES)))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
        model[2].weight[CLASSES.index(TARGET)] = torch.tensor([4.0, -2.0, -2.0])
        model[2].weight[CLASSES.index("healthy")] = torch.tensor([-2.0, 4.0, -2.0])
    return model.eval()


def save(img: Image.Image, path) -> str:
    img.resize((24, 16), Image.Resampling.LANCZOS).save(path)
    return path.name


@pytest.fixture
def crafted(tiny_dataset, tmp_path):
    real_paths = sorted((tiny_dataset / "images").glob("Train_*.jpg"))[:12]
    real = RealImages([p.stem for p in real_paths], perceptual_hashes(real_paths, "real"))
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 60, (16, 24, 3), dtype=np.uint8)
    reddish = Image.fromarray(np.clip(texture + [190, 60, 30], 0, 255).astype(np.uint8))
    greenish = Image.fromarray(np.clip(texture + [40, 170, 40], 0, 255).astype(np.uint8))
    # Red and green alike: the target and healthy are close (a rust-only edit is this for the real gate).
    yellowish = Image.fromarray(np.clip(texture + [150, 150, 30], 0, 255).astype(np.uint8))
    copied = Image.open(real_paths[3]).convert("RGB")
    files = {
        "shows-class": save(reddish, tmp_path / "a.png"),
        "off-class": save(greenish, tmp_path / "b.png"),
        "copy": save(copied, tmp_path / "c.png"),
        "brightened-copy": save(ImageEnhance.Brightness(copied).enhance(1.15), tmp_path / "d.png"),
        "both": save(yellowish, tmp_path / "e.png"),
    }
    rows = [{"id": k, "file": f} for k, f in files.items()]
    return rows, real, real_paths


def test_gate_keeps_the_class_and_drops_low_scores_and_copies(crafted, tmp_path):
    rows, real, real_paths = crafted
    gated = {
        r["id"]: r
        for r in gate_rows(
            rows, tmp_path, colour_classifier(), (32, 48), real, TARGET, GateConfig(threshold=0.5)
        )
    }
    assert gated["shows-class"]["accepted"] and gated["shows-class"]["score"] >= 0.5
    assert gated["off-class"]["reason"] == REJECT_SCORE and gated["off-class"]["score"] < 0.5
    for copy in ("copy", "brightened-copy"):
        assert gated[copy]["reason"] == REJECT_COPY, gated[copy]
        assert gated[copy]["nearest_real"] == real_paths[3].stem
    assert gated["copy"]["copy_distance"] <= 2
    assert check_acceptance(list(gated.values()), GateConfig(), TARGET) == 0.2


def test_threshold_and_duplicate_distance_are_what_decide(crafted, tmp_path):
    rows, real, _ = crafted
    everything = GateConfig(threshold=0.0, near_duplicate_distance=0)
    gated = gate_rows(rows, tmp_path, colour_classifier(), (32, 48), real, TARGET, everything)
    assert [r["id"] for r in gated if not r["accepted"]] == ["copy"]  # only an exact-hash copy remains out


def test_the_margin_drops_images_another_class_comes_close_to(crafted, tmp_path):
    rows, real, _ = crafted
    gate = lambda cfg: {  # noqa: E731
        r["id"]: r for r in gate_rows(rows, tmp_path, colour_classifier(), (32, 48), real, TARGET, cfg)
    }
    loose = gate(GateConfig(threshold=0.2))
    assert loose["both"]["accepted"] and loose["both"]["margin"] < 0.3  # kept on its score alone
    strict = gate(GateConfig(threshold=0.2, margin=0.3))
    assert strict["both"]["reason"] == REJECT_MARGIN and strict["shows-class"]["accepted"]
    assert strict["shows-class"]["margin"] >= 0.3


def test_max_score_drops_exactly_the_images_above_it_as_too_easy(crafted, tmp_path):
    rows, real, _ = crafted
    scored = gate_rows(rows, tmp_path, colour_classifier(), (32, 48), real, TARGET, GateConfig(threshold=0.0))
    cut = float(np.median([r["score"] for r in scored]))
    capped = gate_rows(
        rows, tmp_path, colour_classifier(), (32, 48), real, TARGET, GateConfig(threshold=0.0, max_score=cut)
    )
    for before, after in zip(scored, capped):
        too_easy = before["accepted"] and before["score"] > cut
        assert (after["reason"] == REJECT_EASY) == too_easy, after
        assert after["accepted"] == (before["accepted"] and not too_easy)


def test_a_gate_that_keeps_nothing_says_which_side_removed_what(crafted, tmp_path):
    rows, real, _ = crafted
    cfg = GateConfig(threshold=1.0)
    gated = gate_rows(rows, tmp_path, colour_classifier(), (32, 48), real, TARGET, cfg)
    with pytest.raises(
        LeafgenError, match=r"kept none of 5 synthetic images: 3 score below threshold \(gate"
    ):
        check_acceptance(gated, cfg, TARGET)
    cfg = GateConfig(threshold=0.0, max_score=0.0)
    gated = gate_rows(rows, tmp_path, colour_classifier(), (32, 48), real, TARGET, cfg)
    with pytest.raises(LeafgenError, match=r"3 too easy \(gate\.max_score\); 2 near-duplicate"):
        check_acceptance(gated, cfg, TARGET)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"margin": 1.0}, r"margin: must be in \[0, 1\)"), ({"threshold": 0.5, "max_score": 0.4}, "max_score")],
)
def test_bad_margin_and_max_score_are_refused(kwargs, message):
    from leafgen.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        GateConfig(**kwargs)


def test_an_img2img_image_may_resemble_its_own_source_but_no_other_real_image(crafted, tmp_path):
    rows, real, real_paths = crafted
    rows = [{**r, "source_id": real_paths[3].stem if r["id"] == "copy" else ""} for r in rows]
    rows.append({"id": "copy-of-another", "file": rows[2]["file"], "source_id": real_paths[5].stem})
    gated = {
        r["id"]: r
        for r in gate_rows(
            rows, tmp_path, colour_classifier(), (32, 48), real, TARGET, GateConfig(threshold=0.0)
        )
    }
    assert gated["copy"]["accepted"] and gated["copy"]["nearest_real"] != real_paths[3].stem
    assert gated["copy-of-another"]["reason"] == REJECT_COPY


def test_nearest_returns_index_and_hamming_distance():
    refs = np.zeros((3, 64), dtype=bool)
    refs[1, :5] = True
    refs[2] = True
    queries = np.zeros((2, 64), dtype=bool)
    queries[0, :4] = True
    queries[1, 10:] = True
    index, distance = nearest(queries, refs)
    assert index.tolist() == [1, 2] and distance.tolist() == [1, 10]
    index, distance = nearest(queries, refs, exclude=[1, None])
    assert index.tolist() == [0, 2] and distance.tolist() == [4, 10]
