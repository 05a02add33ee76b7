"""The arms comparison: rank AUC equals scikit-learn's, verdicts need interval and seeds to agree,
small classes get no verdict, and a validation gain the test split does not confirm is flagged."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from leafgen.classifier.metrics import classification_metrics
from leafgen.evaluation.comparison import MIN_CLASS_IMAGES, compare_arms, resampled_metrics
from leafgen.labels import CLASSES

MD = CLASSES.index("multiple_diseases")


def probs_for(y: np.ndarray, rng: np.random.Generator, correct_share: dict[int, float]) -> np.ndarray:
    """Probabilities whose argmax is the true class for ``correct_share[class]`` of each class's images."""
    p = rng.dirichlet(np.ones(len(CLASSES)), size=len(y)) * 0.2
    for i, label in enumerate(y):
        right = rng.random() < correct_share.get(int(label), 0.9)
        winner = label if right else (label + 1) % len(CLASSES)
        p[i, winner] += 1.0
    return p / p.sum(1, keepdims=True)


def labels(per_class: int = 40) -> np.ndarray:
    return np.repeat(np.arange(len(CLASSES)), per_class)


def test_vectorised_metrics_equal_sklearn_on_every_resample():
    rng = np.random.default_rng(0)
    y = labels(15)
    p = rng.dirichlet(np.ones(4), size=len(y))
    p[np.arange(len(y)), y] += rng.random(len(y))  # informative but imperfect, with ties absent
    idx = rng.integers(0, len(y), size=(5, len(y)))
    got = resampled_metrics(y, p, idx)
    for b in range(len(idx)):
        yb, pb = y[idx[b]], p[idx[b]]
        want = classification_metrics(yb, pb)
        for k, name in enumerate(CLASSES):
            assert got[f"auc/{name}"][b] == pytest.approx(roc_auc_score(yb == k, pb[:, k]))
            assert got[f"recall/{name}"][b] == pytest.approx(want[f"recall/{name}"])
        assert got["accuracy"][b] == pytest.approx(want["accuracy"])
        assert got["mean_auc"][b] == pytest.approx(want["mean_auc"])


def test_rank_auc_handles_ties_like_sklearn():
    y = np.array([0, 1, 0, 1, 2, 3, 1, 0])
    p = np.full((8, 4), 0.25)
    p[[1, 3], 1] = 0.4  # two positives above, one positive tied with every negative
    got = resampled_metrics(y, p, np.arange(8)[None])
    assert got["auc/multiple_diseases"][0] == pytest.approx(roc_auc_score(y == 1, p[:, 1]))


def compare(y, arms: dict[str, list[np.ndarray]], val_arms=None, seeds=(0, 1, 2)):
    val_arms = val_arms or arms
    return compare_arms(y, arms, y, val_arms, list(seeds), "multiple_diseases", bootstrap_samples=300)


def test_a_clear_gain_on_the_target_class_is_better_and_unchanged_classes_are_not():
    rng = np.random.default_rng(1)
    y = labels()
    base = [probs_for(y, rng, {MD: 0.4}) for _ in range(3)]
    aug = [probs_for(y, rng, {MD: 0.95}) for _ in range(3)]
    result = compare(y, {"baseline": base, "augmented": aug})
    target = result["deltas"]["baseline"]["augmented"]["recall/multiple_diseases"]
    assert target["verdict"] == "better"
    assert target["ci95"][0] > 0 and all(d > 0 for d in target["per_seed"])
    assert 0.4 < target["mean"] < 0.7
    assert result["test"]["augmented"]["recall/multiple_diseases"]["std"] is not None
    assert not result["warnings"]


def test_identical_arms_show_no_difference():
    rng = np.random.default_rng(2)
    y = labels()
    base = [probs_for(y, rng, {}) for _ in range(3)]
    result = compare(y, {"baseline": base, "balanced": [p.copy() for p in base]})
    for entry in result["deltas"]["baseline"]["balanced"].values():
        assert entry["mean"] == 0 and entry["ci95"] == [0.0, 0.0]
        assert entry["verdict"] == "no clear difference"


def test_a_gain_in_one_seed_only_is_no_verdict_even_with_a_tight_interval():
    rng = np.random.default_rng(3)
    y = labels()
    base = [probs_for(y, rng, {MD: 0.3}) for _ in range(3)]
    aug = [probs_for(y, rng, {MD: 1.0}), base[1].copy(), base[2].copy()]
    entry = compare(y, {"baseline": base, "augmented": aug})["deltas"]["baseline"]["augmented"][
        "recall/multiple_diseases"
    ]
    assert entry["ci95"][0] > 0  # the test-image interval alone would call it better
    assert entry["verdict"] == "no clear difference"


def test_a_class_with_few_test_images_gets_no_verdict_and_a_warning():
    rng = np.random.default_rng(4)
    y = np.concatenate([labels(30)[labels(30) != MD], np.full(MIN_CLASS_IMAGES - 1, MD)])
    base = [probs_for(y, rng, {MD: 0.0}) for _ in range(2)]
    aug = [probs_for(y, rng, {MD: 1.0}) for _ in range(2)]
    result = compare(y, {"baseline": base, "augmented": aug}, seeds=(0, 1))
    entry = result["deltas"]["baseline"]["augmented"]["recall/multiple_diseases"]
    assert entry["mean"] == 1.0 and entry["verdict"].startswith("too few test images")
    assert any("fewer than" in w and "multiple_diseases" in w for w in result["warnings"])


def test_a_validation_gain_that_the_test_split_does_not_confirm_is_flagged():
    rng = np.random.default_rng(5)
    y = labels()
    base = [probs_for(y, rng, {MD: 0.5}) for _ in range(3)]
    same = [p.copy() for p in base]
    val_base = [probs_for(y, rng, {MD: 0.5}) for _ in range(3)]
    val_aug = [probs_for(y, rng, {MD: 0.9}) for _ in range(3)]
    result = compare(y, {"baseline": base, "augmented": same}, {"baseline": val_base, "augmented": val_aug})
    entry = result["deltas"]["baseline"]["augmented"]["recall/multiple_diseases"]
    assert entry["val_mean"] > 0.2 and entry["verdict"] == "no clear difference"
    assert any("validation gain is not confirmed" in w for w in result["warnings"])


def test_one_seed_warns_that_training_spread_is_unmeasured():
    rng = np.random.default_rng(6)
    y = labels()
    result = compare(
        y, {"baseline": [probs_for(y, rng, {})], "augmented": [probs_for(y, rng, {})]}, seeds=(0,)
    )
    assert result["test"]["baseline"]["accuracy"]["std"] is None
    assert any("one seed" in w for w in result["warnings"])


def test_every_arm_is_compared_with_each_reference():
    rng = np.random.default_rng(5)
    y = labels()
    shares = {"baseline": {MD: 0.1}, "balanced": {MD: 0.9}, "augmented": {MD: 0.6}}
    arms = {arm: [probs_for(y, rng, s) for _ in range(3)] for arm, s in shares.items()}
    result = compare_arms(
        y, arms, y, arms, [0, 1, 2], "multiple_diseases", 300, references=("baseline", "balanced")
    )
    assert result["references"] == ["baseline", "balanced"]
    assert set(result["deltas"]["baseline"]) == {"balanced", "augmented"}
    assert set(result["deltas"]["balanced"]) == {"baseline", "augmented"}
    md = "recall/multiple_diseases"
    assert result["deltas"]["baseline"]["augmented"][md]["verdict"] == "better"
    assert result["deltas"]["balanced"]["augmented"][md]["verdict"] == "worse"
    # The same resample serves both: augmented - baseline = (augmented - balanced) + (balanced - baseline).
    via = (
        result["deltas"]["balanced"]["augmented"][md]["mean"]
        + result["deltas"]["baseline"]["balanced"][md]["mean"]
    )
    assert result["deltas"]["baseline"]["augmented"][md]["mean"] == pytest.approx(via)
