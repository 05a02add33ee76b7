"""The prompt table: each row's seed and template depend on the base seed and its index only."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from leafgen.diffusion.generation.prompt_table import ROW_KEYS, TableSpec, prompt_table
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


SOURCES = [(f"Train_{i}", Path(f"/data/Train_{i}.jpg")) for i in range(4)]


def test_a_strength_list_is_drawn_per_row_from_the_rows_seed():
    spec = replace(SPEC, mode="img2img", strength=(0.25, 0.5, 0.75, 1.0), num_images=2000, steps=20)
    rows = prompt_table(spec, SOURCES)
    counts = Counter(row["strength"] for row in rows)
    assert set(counts) == {0.25, 0.5, 0.75, 1.0}
    assert all(abs(n / len(rows) - 0.25) < 0.04 for n in counts.values()), counts
    # A row's strength depends on its seed alone: fewer images keep the first rows, strength included.
    assert prompt_table(replace(spec, num_images=50), SOURCES) == rows[:50]


def test_a_strength_range_is_drawn_uniformly_and_recorded_as_the_steps_img2img_runs():
    spec = replace(SPEC, mode="img2img", strength={"uniform": (0.3, 0.9)}, num_images=2000, steps=20)
    drawn = [row["strength"] for row in prompt_table(spec, SOURCES)]
    assert min(drawn) >= 0.3 and max(drawn) <= 0.9
    assert all(abs(s * 20 - round(s * 20)) < 1e-9 for s in drawn)  # whole steps of 20
    # Uniform over the range: each whole step between the ends is drawn about equally often.
    inner = Counter(s for s in drawn if 0.3 < s < 0.85)
    assert len(inner) == 10 and max(inner.values()) / min(inner.values()) < 1.4, inner


def test_error_weights_give_sources_their_share_of_rows():
    weights = [0.1, 0.2, 0.3, 0.4]
    rows = prompt_table(replace(SPEC, mode="img2img", num_images=100, source_weights=weights), SOURCES)
    counts = Counter(row["source_id"] for row in rows)
    assert [counts[f"Train_{i}"] for i in range(4)] == [10, 20, 30, 40]
    rows = prompt_table(replace(SPEC, mode="img2img", num_images=7, source_weights=weights), SOURCES)
    assert sum(Counter(row["source_id"] for row in rows).values()) == 7  # largest remainder: exact total


def test_img2img_without_sources_is_a_clear_error():
    with pytest.raises(LeafgenError, match="no source images"):
        prompt_table(replace(SPEC, mode="img2img"))


def _write(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_user_prompt_table_fills_missing_values_from_the_config(tmp_path):
    from leafgen.diffusion.generation.prompt_table import read_prompt_table

    sources = [("Train_3", Path("/data/Train_3.jpg"))]
    path = _write(
        tmp_path / "table.parquet",
        [
            {
                "id": "mine-1",
                "prompt": "a leaf",
                "seed": 7,
                "mode": None,
                "source_id": None,
                "strength": None,
            },
            {
                "id": "mine-2",
                "prompt": "b leaf",
                "seed": None,
                "mode": "img2img",
                "source_id": "Train_3",
                "strength": 0.4,
            },
        ],
    )
    rows = read_prompt_table(path, SPEC, sources)
    assert [r["id"] for r in rows] == ["mine-1", "mine-2"]
    assert rows[0]["seed"] == 7 and rows[0]["steps"] == SPEC.steps and rows[0]["negative_prompt"] == "blurry"
    assert rows[0]["mode"] == "txt2img" and rows[0]["strength"] == 1.0
    assert rows[1]["source_path"] == "/data/Train_3.jpg" and rows[1]["strength"] == 0.4
    assert all(tuple(r) == ROW_KEYS for r in rows)


def test_a_bad_user_prompt_table_lists_every_problem_with_its_row(tmp_path):
    from leafgen.diffusion.generation.prompt_table import read_prompt_table
    from leafgen.errors import DataValidationError

    path = _write(
        tmp_path / "bad.parquet",
        [
            {"id": "../escape", "prompt": "x", "mode": None, "source_id": None},
            {"id": "ok", "prompt": "", "mode": None, "source_id": None},
            {"id": "ok", "prompt": "y", "mode": "img2img", "source_id": "Val_1"},
        ],
    )
    with pytest.raises(DataValidationError) as err:
        read_prompt_table(path, SPEC, [("Train_3", Path("/data/Train_3.jpg"))])
    text = str(err.value)
    assert "row 0: image_id '../escape'" in text and "row 1: prompt must be a non-empty string" in text
    assert "row 2: id 'ok' repeats" in text and "row 2: img2img needs a source_id" in text
    with pytest.raises(LeafgenError, match="cannot read the prompt table"):
        read_prompt_table(_write_bytes(tmp_path / "x.parquet"), SPEC)


def _write_bytes(path):
    path.write_bytes(b"not parquet")
    return path


def test_rows_of_a_clustered_fine_tune_name_their_clusters_token():
    from leafgen.diffusion.generation.prompt_table import assign_clusters

    tokens = ["<x-0>", "<x-1>"]
    spec = replace(SPEC, num_images=400, prompts=("<x> leaf", "a photo of <x> leaf"))
    rows = assign_clusters(prompt_table(spec), tokens, [3, 1], "<x>", "size", {})
    assert all(
        row["prompt"].count(tokens[row["cluster"]]) == 1 and "<x>" not in row["prompt"] for row in rows
    )
    share = sum(row["cluster"] == 0 for row in rows) / len(rows)
    assert 0.68 < share < 0.82  # in proportion to the clusters' 3:1 train images (binomial 99.9%: 0.67-0.82)
    equal = assign_clusters(prompt_table(spec), tokens, [3, 1], "<x>", "equal", {})
    assert 0.42 < sum(row["cluster"] == 0 for row in equal) / len(equal) < 0.58
    # A row's cluster depends on its seed only: more images keep the first ones.
    fewer = assign_clusters(prompt_table(replace(spec, num_images=10)), tokens, [3, 1], "<x>", "size", {})
    assert fewer == rows[:10]


def test_img2img_rows_take_their_source_images_cluster_and_a_given_cluster_is_kept():
    from leafgen.diffusion.generation.prompt_table import assign_clusters

    sources = [(f"Train_{i}", Path(f"/data/Train_{i}.jpg")) for i in range(4)]
    spec = replace(SPEC, mode="img2img", strength=0.5, prompts=("<x> leaf",))
    of_source = {"Train_0": 0, "Train_1": 1, "Train_2": 1, "Train_3": 0}
    rows = assign_clusters(prompt_table(spec, sources), ["<x-0>", "<x-1>"], [2, 2], "<x>", "size", of_source)
    assert all(row["cluster"] == of_source[row["source_id"]] for row in rows)
    assert all(row["prompt"] == f"<x-{row['cluster']}> leaf" for row in rows)
    given = [{**row, "cluster": 1} for row in prompt_table(replace(SPEC, prompts=("<x> leaf",)))]
    assert {r["cluster"] for r in assign_clusters(given, ["<x-0>", "<x-1>"], [9, 1], "<x>", "size", {})} == {
        1
    }
    with pytest.raises(LeafgenError, match="cluster 2, but the fine-tune has 2"):
        assign_clusters([{**given[0], "cluster": 2}], ["<x-0>", "<x-1>"], [1, 1], "<x>", "size", {})
