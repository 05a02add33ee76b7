from pathlib import Path

import pytest

from leafgen.config import PipelineConfig, explain, from_dict, load_config, to_dict
from leafgen.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides_are_typed():
    cfg = load_config(None, ["classifier.epochs=3", "data.split=[0.8, 0.1, 0.1]", "base_model.revision=null"])
    assert cfg.classifier.epochs == 3
    assert cfg.data.split == (0.8, 0.1, 0.1)
    assert cfg.base_model.revision is None
    assert cfg.data.target_class == "multiple_diseases"


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["classifier.learning_rate=1"]).classifier.learning_rate == 1.0
    with pytest.raises(ConfigError, match=r"classifier\.epochs: expected an integer, got 2\.5"):
        load_config(None, ["classifier.epochs=2.5"])


def test_exponent_notation_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; in a file and in an override it means a learning rate.
    path = tmp_path / "c.yaml"
    path.write_text("dreambooth:\n  learning_rate: 5e-6\n")
    cfg = load_config(path, ["classifier.learning_rate=1e-4"])
    assert (cfg.classifier.learning_rate, cfg.dreambooth.learning_rate) == (1e-4, 5e-6)
    with pytest.raises(ConfigError, match=r"classifier\.learning_rate: expected a number, got 'fast'"):
        load_config(None, ["classifier.learning_rate=fast"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("classifier.epoch=3", r"classifier\.epoch: unknown config key; did you mean classifier\.epochs\?"),
        ("data.target_clas=rust", r"did you mean data\.target_class\?"),
        ("classifier.target_class=rust", r"classifier\.target_class: .*did you mean data\.target_class\?"),
        ("clasifier.epochs=3", r"clasifier: unknown config key; did you mean classifier\?"),
        ("bogus=1", r"bogus: unknown config key; valid keys here: run_dir, data"),
    ],
)
def test_misspelt_keys_name_the_closest_valid_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("classifier.epochs=abc", r"classifier\.epochs: expected an integer, got 'abc'"),
        ("classifier.balanced_sampling=1", r"classifier\.balanced_sampling: expected true or false"),
        ("data.on_bad_image=ignore", r"data\.on_bad_image: must be one of 'fail', 'skip'"),
        ("data.target_class=mildew", r"data\.target_class: must be one of healthy"),
        ("data.split=[0.5, 0.1, 0.1]", r"data\.split: needs three positive fractions summing to 1"),
        ("data.split=[0.5, 0.5]", r"data\.split: expected a list of 3 values"),
        ("data.procedural.size=8", r"data\.procedural\.size: must be between 32 and 4096"),
        ("generate.strength=0", r"generate\.strength: every strength must be in \(0, 1\]"),
        (
            "classifier.checkpoint_metric=val/auc",
            r"classifier\.checkpoint_metric: must be one of val/accuracy",
        ),
        ("data=3", r"data: expected a mapping of keys"),
        (
            "dreambooth.instance_prompt=a leaf",
            r"dreambooth\.instance_prompt: must contain the identifier token",
        ),
    ],
)
def test_bad_values_name_the_full_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_malformed_override_is_explained():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(None, ["classifier.epochs"])


def test_yaml_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping"):
        load_config(listy)


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("classifier:\n  epochs: 7\n  batch_size: 8\n")
    cfg = load_config(path, ["classifier.epochs=2"])
    assert (cfg.classifier.epochs, cfg.classifier.batch_size) == (2, 8)


def test_round_trip_through_plain_dicts():
    cfg = load_config(None, ["eval.seeds=[4, 5]", "tune.space={mix.synthetic_ratio: {choice: [0, 1]}}"])
    assert from_dict(PipelineConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    load_config(REPO / "configs" / name)


def test_every_key_has_a_docstring():
    rows = explain()
    assert len(rows) > 40
    assert [key for key, _, doc in rows if not doc] == []


def test_run_dir_and_tune_storage_take_object_store_uris():
    # Opened (and checked) by the run, not by the config: credentials belong to the node that runs it.
    assert load_config(None, ["run_dir=s3://bucket/runs"]).run_dir == "s3://bucket/runs"
    assert load_config(None, ["tune.storage_path=s3://bucket/tune"]).tune.storage_path == "s3://bucket/tune"
