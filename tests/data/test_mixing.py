"""Mixing real and synthetic training images: exact counts, first-accepted order, train split only."""

from __future__ import annotations

from pathlib import Path

import pytest

from leafgen.data.mixing import mix_train, read_mix, write_mix
from leafgen.errors import LeafgenError
from leafgen.labels import CLASSES

MD = CLASSES.index("multiple_diseases")
TRAIN = [(f"Train_{i}", MD if i < 4 else 0) for i in range(10)]  # 4 real target-class images
ACCEPTED = [
    {"id": f"syn-{i:06d}", "file": f"images/syn-{i:06d}.png", "source_id": f"Train_{i % 4}" if i % 2 else ""}
    for i in (5, 1, 3, 0, 2, 4, 6)
]


def mix(ratio, accepted=ACCEPTED):
    return mix_train(TRAIN, lambda i: f"/data/{i}.jpg", accepted, Path("/gen"), "multiple_diseases", ratio)


@pytest.mark.parametrize(("ratio", "expected"), [(0, 0), (0.25, 1), (0.5, 2), (1, 4), (1.5, 6)])
def test_ratio_gives_exact_counts_of_the_first_accepted_images(ratio, expected):
    mixed = mix(ratio)
    synthetic = [r for r in mixed.rows if r[2] == "synthetic"]
    assert mixed.synthetic == mixed.requested == expected and mixed.shortfall == 0
    assert [r[0] for r in synthetic] == [f"syn-{i:06d}" for i in range(expected)]
    assert all(r.label == MD and r.path == Path("/gen/images") / f"{r.image_id}.png" for r in synthetic)
    # A synthetic row names the real image it was made from (img2img), or none (txt2img).
    assert all(
        r.source_id == (f"Train_{int(r.image_id[-1]) % 4}" if int(r.image_id[-1]) % 2 else "")
        for r in synthetic
    )
    assert [r[:2] for r in mixed.rows if r[2] == "real"] == TRAIN


def test_a_ratio_beyond_what_the_gate_kept_uses_all_and_reports_the_shortfall():
    mixed = mix(2)
    assert (mixed.requested, mixed.synthetic, mixed.shortfall) == (8, 7, 1)


def test_a_larger_ratio_keeps_the_images_of_a_smaller_one():
    small = {r[0] for r in mix(0.5).rows}
    assert small <= {r[0] for r in mix(1).rows}


def test_colliding_ids_are_refused():
    with pytest.raises(LeafgenError, match="collide"):
        mix(1, [{"id": "Train_0", "file": "images/x.png"}])


def test_mix_csv_round_trips(tmp_path):
    mixed = mix(1)
    write_mix(tmp_path / "mix.csv", mixed)
    assert read_mix(tmp_path / "mix.csv") == mixed.rows
