"""Bad fine-tuning settings: each a ConfigError naming the key, raised when the config loads or, for what
needs the data or the base model's vocabulary, by the stage's check before it clears its old outputs."""

from __future__ import annotations

import json

import pytest
from diffusers import StableDiffusionPipeline

from leafgen.config import load_config
from leafgen.data.stages import DATASET, SPLIT
from leafgen.diffusion.finetune.stages import CLASS_IMAGES, DREAMBOOTH
from leafgen.errors import ConfigError
from leafgen.pipeline import run_pipeline
from leafgen.stages import COMPLETE, RunDir, run_stage


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["dreambooth.clusters=0"], "dreambooth.clusters"),
        (["dreambooth.clusters=auto", "dreambooth.max_clusters=1"], "dreambooth.max_clusters"),
        (["dreambooth.clusters=two"], "dreambooth.clusters"),
        (["dreambooth.instance_prompt=a leaf"], "dreambooth.instance_prompt"),
        (["dreambooth.method=textual_inversion", "dreambooth.new_token=false"], "dreambooth.new_token"),
        (
            ["dreambooth.method=textual_inversion", "dreambooth.train_text_encoder=true"],
            "dreambooth.train_text_encoder",
        ),
        (["dreambooth.clusters=2", "dreambooth.new_token=false"], "dreambooth.new_token"),
        (["dreambooth.method=lora"], "dreambooth.method"),
        (
            ["dreambooth.clusters=2", "generate.mode=img2img", "generate.cluster_allocation=equal"],
            "generate.cluster_allocation",
        ),
    ],
)
def test_a_bad_setting_is_refused_when_the_config_loads(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        load_config(None, overrides)


def test_good_settings_load():
    cfg = load_config(None, ["dreambooth.method=textual_inversion", "dreambooth.clusters=auto"])
    assert cfg.dreambooth.train_steps == cfg.dreambooth.textual_inversion_steps
    assert not cfg.dreambooth.with_prior and cfg.dreambooth.prior_loss_weight == 1.0
    assert load_config(None, ["dreambooth.clusters=3"]).dreambooth.clusters == 3


@pytest.fixture(scope="module")
def data_run(tiny_model_dir, tmp_path_factory):
    """Overrides for a run directory whose dataset and split are complete, with an old DreamBooth output."""
    run_dir = tmp_path_factory.mktemp("checks") / "run"
    args = ["data.procedural.scale=0.05", "data.procedural.size=64", f"run_dir={run_dir}"]
    args += ["dreambooth.num_class_images=0", "dreambooth.prior_loss_weight=0"]  # class images: none
    args += [f"base_model.name_or_path={tiny_model_dir}"]
    stages = (DATASET, SPLIT, CLASS_IMAGES)
    run_pipeline(load_config("configs/tiny.yaml", args), stages=stages, log=lambda line: None)
    old = run_dir / "dreambooth"
    old.mkdir()
    (old / "kept.txt").write_text("an earlier fine-tune")
    (old / COMPLETE).write_text(json.dumps({"key": "another", "stage": "dreambooth", "outputs": {}}))
    return run_dir, args


def refused(data_run, *overrides: str, match: str) -> None:
    run_dir, args = data_run
    cfg = load_config("configs/tiny.yaml", [*args, *overrides])
    with pytest.raises(ConfigError, match=match):
        run_stage(DREAMBOOTH, cfg, RunDir(run_dir))
    assert (run_dir / "dreambooth" / "kept.txt").is_file(), "the check ran after the old outputs were cleared"


def test_more_clusters_than_target_train_images_is_refused_before_anything_is_cleared(data_run):
    refused(
        data_run, "dreambooth.clusters=50", match=r"^dreambooth.clusters: 50 clusters but the train split"
    )


def test_an_identifier_the_vocabulary_already_holds_is_refused(data_run, tmp_path):
    # A base model that is an earlier full fine-tune already holds the token.
    _, args = data_run
    pipe = StableDiffusionPipeline.from_pretrained(args[-1].split("=", 1)[1])
    pipe.tokenizer.add_tokens(["<disease-leaf-1>"])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    pipe.save_pretrained(tmp_path / "tuned")
    base = f"base_model.name_or_path={tmp_path / 'tuned'}"
    refused(data_run, base, "dreambooth.clusters=2", match="^dreambooth.identifier_token: '<disease-leaf-1>'")
    refused(
        data_run,
        "dreambooth.new_token=false",
        "dreambooth.identifier_token=zqxwv",
        "dreambooth.instance_prompt=zqxwv leaf",
        match="^dreambooth.identifier_token='zqxwv' is 4 tokens",
    )
