"""The independent judge stage, and the base-model check that needs both classifiers."""

from __future__ import annotations

import json

from leafgen.cli import main
from leafgen.diffusion.components import build_pipeline
from leafgen.labels import CLASSES

from ..diffusion.conftest import tiny_architecture
from .conftest import TINY_RUN


def test_judge_has_its_own_recipe_and_seed_and_the_check_uses_both(ray_cluster, data_run, tmp_path, capsys):
    model = tmp_path / "t2i"
    build_pipeline(tiny_architecture(), seed=0).save_pretrained(model, safe_serialization=True)
    out = tmp_path / "check"
    args = [
        "check-base-model",
        f"run_dir={data_run}",
        *TINY_RUN,
        "classifier.epochs=1",
        "eval.judge.epochs=2",
        f"base_model.name_or_path={model}",
        "base_model.resolution=16",
        "base_model.width=24",
        "--out",
        str(out),
        "--samples",
        "3",
        "--steps",
        "2",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    classifier = json.loads((data_run / "classifier" / "model" / "classifier.json").read_text())
    judge = json.loads((data_run / "judge" / "model" / "classifier.json").read_text())
    assert classifier["config"]["seed"] == 0 and judge["config"]["seed"] == 1000
    assert judge["config"]["balanced_sampling"] and not classifier["config"]["balanced_sampling"]
    assert (judge["config"]["epochs"], classifier["config"]["epochs"]) == (2, 1)  # the judge's own budget
    assert (data_run / "judge" / "model" / "model.safetensors").read_bytes() != (
        data_run / "classifier" / "model" / "model.safetensors"
    ).read_bytes()

    result = json.loads((out / "base_model_check.json").read_text())
    assert set(result["roundtrip_accuracy"]) <= set(CLASSES) and result["roundtrip_accuracy"]
    for prompt, row in result["prompts"].items():
        assert abs(sum(row["judge_shares"].values()) - 1) < 1e-9, prompt
        assert (out / f"samples_{prompt.replace(' ', '_')}.png").is_file()
    assert (out / "roundtrip.png").is_file() and "leaf with rust" in text

    # The judge seed must not be the gating classifier's; refusing it leaves the finished judge in place.
    assert (
        main(["check-base-model", f"run_dir={data_run}", *TINY_RUN, "eval.judge.seed=0", "--out", str(out)])
        == 2
    )
    assert "eval.judge.seed" in capsys.readouterr().err
    assert (data_run / "judge" / "model" / "model.safetensors").is_file()
