"""The arms as recipes (eval.arms) and the judge's recipe in config: defaults, overrides that name an arm,
and every bad input as a ConfigError naming the arm and the key; config files extending a base file."""

import pytest

from leafgen.config import ArmRecipe, load_config
from leafgen.errors import ConfigError


def test_default_arms_are_the_four_recipes_with_eval_balance_for_the_balanced_arm():
    arms = load_config(None, ["eval.balance=loss"]).eval.arms
    assert [(a.name, a.train, a.balance) for a in arms] == [
        ("baseline", "real", "none"),
        ("balanced", "real", "loss"),
        ("augmented", "mix", "none"),
        ("augmented_balanced", "mix", "sampling"),
    ]
    assert load_config(None).eval.references == ("baseline", "balanced")


def test_an_override_may_name_an_arm_and_changes_only_that_arm():
    cfg = load_config(
        None,
        [
            "eval.arms.augmented.synthetic_mode=swap",
            "eval.arms.augmented.swap_probability=0.3",
            "eval.balance=loss",
        ],
    )
    augmented = cfg.eval.arm("augmented")
    assert (augmented.synthetic_mode, augmented.swap_probability) == ("swap", 0.3)
    assert cfg.eval.arm("balanced").balance == "loss"  # the other overrides still shape the defaults
    assert len(cfg.eval.arms) == 4


def test_arms_listed_in_a_file_are_exactly_those(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "eval:\n  references: [baseline]\n  arms:\n    - {name: baseline}\n"
        "    - {name: lowweight, train: mix, synthetic_loss_weight: 0.5}\n"
    )
    cfg = load_config(path, ["eval.arms.lowweight.synthetic_loss_weight=0.25"])
    assert cfg.eval.arms == (ArmRecipe("baseline"), ArmRecipe("lowweight", "mix", synthetic_loss_weight=0.25))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.arms=[]"], r"eval\.arms: needs at least one arm"),
        (["eval.arms=[{name: a}, {name: a}]", "eval.references=[a]"], r"eval\.arms\[a\]: two arms are named"),
        (["eval.arms=[{name: a, colour: red}]"], r"eval\.arms\[a\]\.colour: unknown config key"),
        (["eval.arms=[{name: a, train: mixed}]"], r"eval\.arms\[a\]\.train: must be one of"),
        (
            ["eval.arms.augmented.swap_probability=1.5"],
            r"eval\.arms\[augmented\]\.swap_probability: must be in \[0, 1\]",
        ),
        (
            ["eval.arms.augmented.synthetic_loss_weight=-1"],
            r"eval\.arms\[augmented\]\.synthetic_loss_weight: must be >= 0",
        ),
        (["eval.arms.baseline.synthetic_mode=swap"], r"eval\.arms\[baseline\]\.synthetic_mode: only applies"),
        (["eval.arms.nosuch.balance=loss"], r"eval\.arms\.nosuch: no entry named 'nosuch'"),
        (["eval.references=[baseline, cheap]"], r"eval\.references: 'cheap' is not an arm"),
        (["generate.num_images=0"], r"eval\.arms\[augmented\]\.train: trains on synthetic images"),
        (["eval.judge.epochs=0"], r"eval\.judge\.epochs: must be > 0"),
        (["eval.judge.num_workers=0"], r"eval\.judge\.num_workers: must be > 0"),
        (["eval.drift_samples=0"], r"eval\.drift_samples: must be > 0"),
        (["tune.arm=nosuch"], r"tune\.arm: 'nosuch' is not an arm"),
    ],
)
def test_bad_arms_and_judge_settings_name_the_arm_and_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_the_judge_recipe_overrides_only_what_it_sets():
    from leafgen.classifier.stage import judge_config

    cfg = load_config(None, ["classifier.num_workers=2", "eval.judge.num_workers=1", "eval.judge.epochs=5"])
    judge = judge_config(cfg).classifier
    assert (judge.num_workers, judge.epochs, judge.seed, judge.balanced_sampling) == (1, 5, 1000, True)
    assert judge.learning_rate == cfg.classifier.learning_rate  # unset: the classifier's
    assert judge_config(load_config(None, ["classifier.num_workers=2"])).classifier.num_workers == 2


def test_a_config_extends_its_base_file_section_by_section(tmp_path):
    (tmp_path / "base.yaml").write_text("run_dir: runs/a\nclassifier:\n  epochs: 3\n  batch_size: 8\n")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("base: ../base.yaml\nclassifier:\n  epochs: 5\n")
    cfg = load_config(child, ["classifier.batch_size=4"])
    assert (cfg.run_dir, cfg.classifier.epochs, cfg.classifier.batch_size) == ("runs/a", 5, 4)


def test_missing_bases_cycles_and_repeated_keys_are_clear_errors(tmp_path):
    missing = tmp_path / "m.yaml"
    missing.write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: config file not found \(the base of"):
        load_config(missing)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="extend each other in a cycle"):
        load_config(tmp_path / "a.yaml")
    twice = tmp_path / "t.yaml"
    twice.write_text("classifier:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ConfigError, match="'epochs' is given twice"):
        load_config(twice)


def test_the_shipped_tune_and_study_configs_extend_the_demo():
    demo = load_config("configs/demo.yaml")
    tune = load_config("configs/tune.yaml")
    assert tune.data == demo.data and tune.classifier == demo.classifier and tune.tune.space
    study = load_config("configs/study.yaml")
    assert study.data == demo.data and len(study.eval.seeds) == 5
    assert {"augmented_swap", "augmented_lowweight", "synthetic_only"} <= {a.name for a in study.eval.arms}
