"""Every check before the first stage: each selected stage's own check and what the stages load from
outside the run, all problems at once, one ``leafgen: error:`` line each, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from leafgen.cli import main
from leafgen.diffusion.components import EMBEDDED_DIR
from leafgen.integrity.preflight import hub_snapshot_problem


def test_every_problem_is_reported_before_the_first_stage(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        [
            "run",
            "--config",
            "configs/tiny.yaml",
            f"run_dir={run_dir}",
            "base_model.name_or_path=embedded",
            "classifier.seed=0",
            "eval.judge.seed=0",
            f"classifier.weights={tmp_path / 'backbone.safetensors'}",
            f"generate.adapter={tmp_path}",
        ]
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(err) == 3 and all(line.startswith("leafgen: error: ") for line in err)
    assert "eval.judge.seed (0) must differ from classifier.seed" in err[0]
    assert "generate.adapter is for `leafgen generate`" in err[1]
    assert f"no such file {tmp_path / 'backbone.safetensors'}" in err[2]
    assert not run_dir.exists()  # nothing ran, nothing was written


def test_a_base_model_missing_from_the_offline_cache_fails_before_any_stage(kaggle_folder, tmp_path):
    """The new user's case: the real settings, a Kaggle folder, and no Stable Diffusion in the cache."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    args = ["--config", "configs/sd15.yaml", f"data.root={kaggle_folder}", f"run_dir={tmp_path / 'run'}"]
    done = subprocess.run(
        [sys.executable, "-m", "leafgen.cli", "dreambooth", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        "leafgen: error: base_model.name_or_path 'stable-diffusion-v1-5/stable-diffusion-v1-5'"
    )
    assert "HF_HUB_OFFLINE=1" in line and "huggingface-cli download" in line
    assert not (tmp_path / "run").exists()  # refused before the dataset stage validated a single image


def _cached(cache, repo="org/tiny", commit="0123abcd"):
    """The embedded model as the hub cache holds a downloaded snapshot of ``repo``."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(
        EMBEDDED_DIR, root / "snapshots" / commit, ignore=shutil.ignore_patterns("*.yaml", "*.md")
    )
    return root / "snapshots" / commit


def test_a_complete_hub_snapshot_passes_and_an_incomplete_one_is_named(tmp_path):
    snapshot = _cached(tmp_path)
    assert hub_snapshot_problem("org/tiny", cache_dir=tmp_path) is None
    next((snapshot / "unet").glob("*.safetensors")).unlink()  # a download that broke off
    assert "no unet/ weights" in hub_snapshot_problem("org/tiny", cache_dir=tmp_path)
    assert "not in the Hugging Face cache" in hub_snapshot_problem("org/other", cache_dir=tmp_path)
