"""The prompt table: each row's seed and template depend on the base seed and its index only."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from leafgen.diffusion.prompt_table import ROW_KEYS, TableSpec, prompt_table
from leafgen.errors import LeafgenError

SPEC = TableSpec(
    num_images=40,
    prompts=("a", "b", "c"),
    negative_prompt="blurry",
    seed=0,
    steps=5,
    guidance=2.0,
    height=16,
    width=24,
)


def test_more_images_keep_the_first_ones():
    assert prompt_table(SPEC)[:10] == prompt_table(replace(SPEC, num_images=10))


def test_rows_are_complete_and_ids_unique():
    rows = prompt_table(SPEC)
    assert all(tuple(row) == ROW_KEYS for row in rows)
    assert len({row["id"] for row in rows}) == len(rows)


def test_templates_are_drawn_per_row_and_seeds_do_not_overlap_between_base_seeds():
    rows = prompt_table(SPEC)
    assert set(Counter(row["prompt"] for row in rows)) == {"a", "b", "c"}
    other = prompt_table(replace(SPEC, seed=1))
    assert not {row["seed"] for row in rows} & {row["seed"] for row in other}


def test_img2img_uses_every_source_before_repeating_one():
    sources = [(f"Train_{i}", Path(f"/data/Train_{i}.jpg")) for i in range(7)]
    rows = prompt_table(replace(SPEC, mode="img2img", strength=0.3, num_images=14), sources)
    first, second = ([row["source_id"] for row in rows[k : k + 7]] for k in (0, 7))
    assert sorted(first) == sorted(s for s, _ in sources) == sorted(second)
    assert all(row["strength"] == 0.3 for row in rows)


def test_img2img_without_sources_is_a_clear_error():
    with pytest.raises(LeafgenError, match="no source images"):
        prompt_table(replace(SPEC, mode="img2img"))
