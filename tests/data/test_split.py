import numpy as np
import pytest

from leafgen.data.split import SPLITS, read_split, split_counts, stratified_split, write_split
from leafgen.errors import LeafgenError
from leafgen.labels import KAGGLE_TRAIN_COUNTS


def _kaggle_like():
    labels = np.repeat(np.arange(4), list(KAGGLE_TRAIN_COUNTS.values()))
    ids = tuple(f"Train_{i}" for i in range(len(labels)))
    return ids, labels


def test_split_is_stratified_disjoint_and_complete():
    ids, labels = _kaggle_like()
    assignment = stratified_split(ids, labels, (0.7, 0.1, 0.2), seed=0)
    assert set(assignment) == set(ids)
    by_label = dict(zip(ids, labels))
    for part, frac in zip(SPLITS, (0.7, 0.1, 0.2)):
        members = [i for i, s in assignment.items() if s == part]
        assert abs(len(members) / len(ids) - frac) < 0.01
        counts = np.bincount([by_label[i] for i in members], minlength=4)
        assert counts.min() > 0  # every class in every part
        # each class keeps its share within one image of rounding
        expected = np.array(list(KAGGLE_TRAIN_COUNTS.values())) * frac
        assert np.all(np.abs(counts - expected) <= 1.5)


def test_split_is_deterministic_and_independent_of_row_order():
    ids, labels = _kaggle_like()
    a = stratified_split(ids, labels, (0.7, 0.1, 0.2), seed=3)
    perm = np.random.default_rng(0).permutation(len(ids))
    b = stratified_split(tuple(ids[i] for i in perm), labels[perm], (0.7, 0.1, 0.2), seed=3)
    assert a == b
    assert stratified_split(ids, labels, (0.7, 0.1, 0.2), seed=4) != a


def test_split_round_trips_through_csv(tmp_path):
    ids, labels = _kaggle_like()
    assignment = stratified_split(ids, labels, (0.7, 0.1, 0.2), seed=0)
    write_split(tmp_path / "split.csv", ids, labels, assignment)
    split = read_split(tmp_path / "split.csv")
    assert {i: s for s, rows in split.items() for i, _ in rows} == assignment
    assert sum(sum(c.values()) for c in split_counts(split).values()) == len(ids)


def test_too_few_images_of_a_class_is_explained():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 10 + [3] * 10)
    ids = tuple(f"x{i}" for i in range(len(labels)))
    with pytest.raises(LeafgenError, match=r"too few images of multiple_diseases \(2\)"):
        stratified_split(ids, labels, (0.7, 0.1, 0.2), seed=0)
