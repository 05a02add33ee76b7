"""The search space is checked before any trial starts, with the key named in every error."""

from __future__ import annotations

import pytest

from leafgen.config import load_config
from leafgen.errors import ConfigError
from leafgen.tuning.search import shared_prefix
from leafgen.tuning.space import apply_values, parse_space
from leafgen.tuning.trial import TRIAL_STAGES


def _space(space: str, *more: str):
    return load_config(None, [f"tune.space={space}", *more])


def test_a_valid_space_parses_into_params():
    cfg = _space(
        "{dreambooth.learning_rate: {loguniform: [1.0e-6, 1.0e-4]},"
        " mix.synthetic_ratio: {choice: [0, 0.5, 1]},"
        " dreambooth.max_train_steps: {randint: [100, 400]},"
        " dreambooth.train_text_encoder: {choice: [true, false]}}"
    )
    params = {p.key: p for p in parse_space(cfg, TRIAL_STAGES)}
    assert params["dreambooth.learning_rate"].kind == "loguniform"
    assert params["mix.synthetic_ratio"].args == (0, 0.5, 1)
    assert params["dreambooth.max_train_steps"].values == (100, 399)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("{}", "tune.space is empty"),
        (
            "{dreambooth.learnig_rate: {choice: [1]}}",
            "tune.space.dreambooth.learnig_rate: no such config key",
        ),
        ("{data.split_seed: {choice: [0, 1]}}", "cannot be searched"),
        ("{eval.seeds: {choice: [[0], [1]]}}", "cannot be searched"),
        ("{mix.synthetic_ratio: {normal: [0, 1]}}", "unknown domain 'normal'"),
        ("{mix.synthetic_ratio: {uniform: [2, 1]}}", "low must be below high"),
        ("{dreambooth.learning_rate: {loguniform: [0, 1]}}", "bounds must be > 0"),
        ("{mix.synthetic_ratio: {choice: [0, -1]}}", r"value -1.*mix.synthetic_ratio: must be >= 0"),
        ("{dreambooth.max_train_steps: {choice: [10, ten]}}", "expected an integer"),
        ("{mix.synthetic_ratio: [0, 1]}", "expected one of"),
        ("{eval.arms.baseline.balance: {choice: [none, loss]}}", "cannot be searched"),
        ("{eval.arms.augmented.name: {choice: [a, b]}}", "name one field of the arm's recipe"),
        ("{eval.arms.augmented.colour: {choice: [a, b]}}", "eval.arms.augmented.colour: no such config key"),
        (
            "{eval.arms.augmented.swap_probability: {choice: [0.5, 2]}}",
            r"value 2.*eval\.arms\[augmented\]\.swap_probability: must be in \[0, 1\]",
        ),
    ],
)
def test_bad_spaces_name_the_key(space, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(_space(space), TRIAL_STAGES)


def test_the_recipe_of_the_trial_arm_is_searchable_by_name():
    cfg = _space(
        "{eval.arms.augmented.synthetic_mode: {choice: [append, swap]},"
        " eval.arms.augmented.swap_probability: {uniform: [0.2, 0.8]}}"
    )
    params = {p.key: p for p in parse_space(cfg, TRIAL_STAGES)}
    assert set(params) == {"eval.arms.augmented.synthetic_mode", "eval.arms.augmented.swap_probability"}
    trial = apply_values(cfg, {"eval.arms.augmented.synthetic_mode": "swap"})
    assert trial.eval.arm("augmented").synthetic_mode == "swap"
    assert trial.eval.arm("augmented_balanced") == cfg.eval.arm("augmented_balanced")


def test_grid_search_takes_choices_only():
    cfg = _space("{mix.synthetic_ratio: {uniform: [0, 1]}}", "tune.search_alg=grid")
    with pytest.raises(ConfigError, match="grid search takes"):
        parse_space(cfg, TRIAL_STAGES)


def test_a_setting_no_trial_stage_reads_is_refused():
    # The drift probe is not part of a trial, so a drift-only key cannot move the objective.
    with pytest.raises(ConfigError, match="no stage of a trial reads"):
        parse_space(_space("{generate.adapter: {choice: [a, b]}}"), TRIAL_STAGES)


def test_apply_values_validates_the_whole_config():
    cfg = apply_values(load_config(), {"mix.synthetic_ratio": 0.5, "dreambooth.learning_rate": 1e-5})
    assert cfg.mix.synthetic_ratio == 0.5 and cfg.dreambooth.learning_rate == 1e-5
    with pytest.raises(ConfigError, match="dreambooth.instance_prompt"):
        apply_values(load_config(), {"dreambooth.identifier_token": "<other>"})


def test_stages_no_searched_key_reaches_run_once_before_the_trials():
    params = parse_space(_space("{dreambooth.learning_rate: {choice: [1.0e-5, 1.0e-4]}}"), TRIAL_STAGES)
    assert [s.name for s in shared_prefix(TRIAL_STAGES, params)] == [
        "dataset",
        "split",
        "classifier",
        "class_images",
    ]
    params = parse_space(_space("{classifier.learning_rate: {choice: [0.001, 0.01]}}"), TRIAL_STAGES)
    assert [s.name for s in shared_prefix(TRIAL_STAGES, params)] == ["dataset", "split"]


def test_the_shipped_search_config_parses():
    cfg = load_config("configs/tune.yaml")
    keys = [p.key for p in parse_space(cfg, TRIAL_STAGES)]
    assert "mix.synthetic_ratio" in keys and "dreambooth.learning_rate" in keys


def test_the_objective_must_be_a_validation_metric():
    with pytest.raises(ConfigError, match="tune.metric: must be a validation metric"):
        load_config(None, ["tune.metric=test/accuracy"])
    with pytest.raises(ConfigError, match="tune.tie_breaker: must be a validation metric"):
        load_config(None, ["tune.tie_breaker=accuracy"])


def test_the_method_and_the_clusters_are_searchable_and_bad_values_are_named():
    cfg = _space(
        "{dreambooth.method: {choice: [dreambooth, textual_inversion]},"
        " dreambooth.clusters: {choice: [1, 2, auto]}}"
    )
    params = {p.key: p for p in parse_space(cfg, TRIAL_STAGES)}
    assert params["dreambooth.method"].args == ("dreambooth", "textual_inversion")
    assert params["dreambooth.clusters"].args == (1, 2, "auto")
    trial = apply_values(cfg, {"dreambooth.method": "textual_inversion", "dreambooth.clusters": "auto"})
    assert trial.dreambooth.method == "textual_inversion" and trial.dreambooth.clusters == "auto"
    with pytest.raises(
        ConfigError, match=r"dreambooth.clusters value 0.*dreambooth.clusters: must be 1 or more"
    ):
        parse_space(_space("{dreambooth.clusters: {choice: [0, 2]}}"), TRIAL_STAGES)
    # A method that contradicts a fixed setting is refused before any trial starts.
    with pytest.raises(ConfigError, match="dreambooth.method value 'textual_inversion'.*new_token"):
        parse_space(
            _space("{dreambooth.method: {choice: [textual_inversion]}}", "dreambooth.new_token=false"),
            TRIAL_STAGES,
        )
