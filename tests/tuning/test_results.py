"""Ranking trials, exporting the best config, the results table and the plots."""

from __future__ import annotations

import csv

import pytest

from leafgen.config import load_config
from leafgen.errors import LeafgenError
from leafgen.tuning.results import (
    TrialRow,
    best_config,
    best_trial,
    objective_plot,
    rank_trials,
    table,
    write_best_config,
    write_csv,
)
from leafgen.tuning.space import parse_space
from leafgen.tuning.trial import TRIAL_STAGES

SPACE = "{dreambooth.learning_rate: {loguniform: [1.0e-6, 1.0e-3]}, mix.synthetic_ratio: {choice: [0, 1, 2]}}"


def _row(trial, recall, auc, lr=1e-5, ratio=1, status="TERMINATED"):
    metrics = {} if recall is None else {"val/target_recall": recall, "val/mean_auc": auc, "epochs": 3}
    return TrialRow(trial, status, {"dreambooth.learning_rate": lr, "mix.synthetic_ratio": ratio}, metrics)


@pytest.fixture
def cfg():
    return load_config(None, [f"tune.space={SPACE}", "run_dir=runs/search"])


def test_ties_on_the_objective_are_broken_by_the_tie_breaker(cfg):
    rows = [_row("a", 0.5, 0.80), _row("b", 0.7, 0.70), _row("c", 0.7, 0.90), _row("d", None, None)]
    assert [r.trial_id for r in rank_trials(rows, cfg.tune)] == ["c", "b", "a"]
    low = load_config(None, [f"tune.space={SPACE}", "tune.mode=min"])
    assert [r.trial_id for r in rank_trials(rows, low.tune)] == ["a", "b", "c"]


def test_failed_trials_are_never_the_best(cfg):
    rows = [_row("a", 0.9, 0.9, status="ERROR"), _row("b", 0.4, 0.6)]
    assert best_trial(rows, cfg.tune).trial_id == "b"
    with pytest.raises(LeafgenError, match="no trial reported 'val/target_recall'.*1 failed"):
        best_trial(rows[:1], cfg.tune)


def test_best_config_round_trips_through_leafgen_run_loading(cfg, tmp_path):
    best = _row("b", 0.7, 0.9, lr=3e-5, ratio=2)
    chosen = best_config(cfg, best, str(tmp_path / "best"))
    path = write_best_config(chosen, best, tmp_path / "best_config.yaml")
    loaded = load_config(path)
    assert loaded == chosen
    assert loaded.dreambooth.learning_rate == 3e-5 and loaded.mix.synthetic_ratio == 2
    assert loaded.run_dir == str(tmp_path / "best") and loaded.tune.space == {}
    assert "trial b" in path.read_text().splitlines()[0]


def test_results_table_is_best_first_and_keeps_unscored_trials(cfg, tmp_path):
    params = parse_space(cfg, TRIAL_STAGES)
    rows = [_row("a", 0.5, 0.8, ratio=0), _row("b", 0.7, 0.7, ratio=2), _row("c", None, None, status="ERROR")]
    header, ranked = table(rows, params, cfg.tune)
    written = list(csv.DictReader(write_csv(header, ranked, tmp_path / "results.csv").open()))
    assert [r["trial"] for r in written] == ["b", "a", "c"]
    assert [r["rank"] for r in written] == ["1", "2", ""]
    assert written[0]["mix.synthetic_ratio"] == "2" and written[0]["val/target_recall"] == "0.7"
    for p in params:
        fig = objective_plot(rows, p, cfg.tune)
        assert len(fig.axes[0].collections[0].get_offsets()) == 2  # the scored trials
    assert fig.axes[0].get_xscale() == "linear"
    fig = objective_plot(rows, params[0], cfg.tune)
    assert fig.axes[0].get_xscale() == "log"
