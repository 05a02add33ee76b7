"""A LeafgenError raised inside Ray reaches the user as one ``leafgen: error:`` line naming the stage and
the worker, exit 2: from a Ray Data generation actor (a base model whose weights are cut short) and from a
Ray Train worker inside a Tune trial (a searched weights file it cannot read), the cheapest real ways to
make a worker fail on a bad file. Ray neither retries it nor prints its traceback."""

from __future__ import annotations

import shutil

import pytest

from leafgen.cli import main

from .conftest import PIPELINE, TINY_RUN


@pytest.fixture
def bad_weights(tmp_path):
    path = tmp_path / "backbone.safetensors"
    path.write_bytes(b"not a safetensors file")  # exists, so it passes the pre-flight check
    return path


def _one_error_line(capfd) -> tuple[str, str]:
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("leafgen: error:")]
    assert len(lines) == 1, err[-3000:]
    # Neither the worker's traceback nor Ray Train's retry report of it (Ray's unrelated lines may pass).
    for noise in ("LeafgenError", "Error in training function", "[FailurePolicy]"):
        assert noise not in out + err
    return lines[0], out


def test_an_error_in_a_generation_actor(pipeline_run, model_dir, tmp_path, capfd):
    run_dir, model = tmp_path / "run", tmp_path / "model"
    shutil.copytree(pipeline_run[0], run_dir, symlinks=True)  # its class images are redone for this model
    shutil.copytree(model_dir, model)
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # a download that broke off
    args = [*TINY_RUN, f"run_dir={run_dir}", f"base_model.name_or_path={model}", *PIPELINE]
    assert main(["dreambooth", *args]) == 2
    line, _ = _one_error_line(capfd)
    assert line.startswith(f"leafgen: error: [class_images] cannot load base model '{model}'")
    assert "(in a Ray Data generation actor, pid " in line


def test_an_error_in_a_train_worker_of_a_tune_trial(ray_cluster, model_dir, bad_weights, tmp_path, capfd):
    """Both boundaries at once: the worker's error leaves Ray Train in the trial, then Tune."""
    space = f"tune.space={{classifier.weights: {{choice: ['{bad_weights}']}}}}"
    args = [*TINY_RUN, f"run_dir={tmp_path / 'search'}", f"base_model.name_or_path={model_dir}", *PIPELINE]
    args += ["eval.seeds=[0]", "tune.search_alg=grid", "tune.num_samples=1", space]
    assert main(["tune", *args]) == 2
    line, _ = _one_error_line(capfd)
    assert line.startswith(f"leafgen: error: [classifier] {bad_weights}: cannot read weights")
    assert "(Tune trial " in line and "(in a Ray Train worker of rank 0" in line
    assert not (tmp_path / "search" / "results.csv").exists()
