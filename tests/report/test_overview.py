"""The report's first screen and the judge's trust, written from the numbers."""

import numpy as np

from leafgen.config import JudgeConfig
from leafgen.evaluation.comparison import compare_arms
from leafgen.labels import CLASSES
from leafgen.report.judge import judge_quality, judge_warning
from leafgen.report.overview import dreambooth_sentence, overview

MD = CLASSES.index("multiple_diseases")


def _judge_test(rust_called_md: int, md_found: int) -> dict:
    """Test metrics of a judge on 20 images per class: ``rust_called_md`` rust leaves called the target,
    ``md_found`` of the 20 target images found."""
    matrix = np.diag([20, md_found, 20 - rust_called_md, 20])
    matrix[1, 2] = 20 - md_found
    matrix[2, 1] = rust_called_md
    accuracy = np.trace(matrix) / matrix.sum()
    return {"accuracy": float(accuracy), "target_recall": md_found / 20, "confusion_matrix": matrix.tolist()}


def test_a_judge_is_weak_below_any_bar_and_says_which():
    good = judge_quality(_judge_test(1, 19), "multiple_diseases", JudgeConfig())
    assert not good["weak"] and judge_warning(good) == []
    assert good["called_target"]["rust"] == 0.05
    over = judge_quality(_judge_test(5, 19), "multiple_diseases", JudgeConfig())
    assert over["weak"] and "calls 25.0% of real rust test images multiple_diseases" in over["reasons"][-1]
    blind = judge_quality(_judge_test(0, 10), "multiple_diseases", JudgeConfig())
    assert any("finds 50.0%" in r for r in blind["reasons"]) and "weak" in judge_warning(blind)[0]


def _comparison():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)

    def probs(md_right: float, rust_right: float) -> np.ndarray:
        p = rng.dirichlet(np.ones(4), size=len(y)) * 0.1
        for i, label in enumerate(y):
            share = md_right if label == MD else rust_right if label == 2 else 0.95
            p[i, label if rng.random() < share else (MD if label == 2 else (label + 1) % 4)] += 1
        return p / p.sum(1, keepdims=True)

    arms = {
        "baseline": [probs(0.1, 0.97) for _ in range(3)],
        "balanced": [probs(0.9, 0.6) for _ in range(3)],
        "augmented": [probs(0.6, 0.85) for _ in range(3)],
    }
    return compare_arms(
        y, arms, y, arms, [0, 1, 2], "multiple_diseases", 300, references=("baseline", "balanced")
    )


def test_the_first_screen_says_which_arms_helped_at_what_cost_and_whether_dreambooth_did():
    comparison = _comparison()
    drift = {
        "target_class": "multiple_diseases",
        "prompts": [
            {
                "prompt": "<x> leaf",
                "samples": 64,
                "target_share_before": 0.2,
                "target_share_after": 0.5,
                "change": 0.3,
                "change_ci95": [0.15, 0.45],
            },
            {
                "prompt": "leaf",
                "samples": 64,
                "target_share_before": 0.1,
                "target_share_after": 0.1,
                "change": 0.0,
                "change_ci95": [-0.05, 0.05],
            },
        ],
    }
    quality = judge_quality(_judge_test(1, 19), "multiple_diseases", JudgeConfig())
    text = " ".join(overview(comparison, drift, quality))
    assert text.index("Against baseline") < text.index("Against balanced")
    assert "balanced +" in text and "(better), paying rust" in text  # the cheap fix, and what it costs
    assert "augmented -" in text.split("Against balanced")[1]  # below the cheap fix
    assert "Synthetic data added to rebalancing for multiple_diseases: not measurably" in text
    assert "DreamBooth raised" in text and "meets its bars" in text
    drift["prompts"][0]["change_ci95"] = [-0.05, 0.45]
    assert dreambooth_sentence(drift).startswith("DreamBooth did not measurably raise")
