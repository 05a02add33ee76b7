"""The classifier on real Ray Train: 2 CPU workers with DDP over gloo, checkpoints, a killed worker, a
killed driver, and the Kaggle submission written from the exported model."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

from leafgen.classifier.runs import DONE_FILE
from leafgen.cli import main
from leafgen.config import load_config
from leafgen.data.stages import dataset_root
from leafgen.distributed.train_classifier import read_history
from leafgen.labels import TRAIN_COLUMNS
from leafgen.stages import RunDir, StageContext

from .conftest import TINY_RUN, alive_actors, copy_run


def _wait_for_epochs(storage, n, timeout=300):
    """Until the driver has recorded ``n`` epochs: then epoch n-1's checkpoint is registered with Ray
    (a checkpoint folder on disk alone may still be mid-upload)."""
    deadline = time.time() + timeout
    while len(read_history(storage)) < n:
        assert time.time() < deadline, f"fewer than {n} epochs recorded in {storage}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def trained(ray_cluster, data_run):
    args = [
        "train-classifier",
        f"run_dir={data_run}",
        *TINY_RUN,
        "classifier.epochs=5",
        "classifier.num_workers=2",
    ]
    assert main(args) == 0
    return data_run, args


def test_two_worker_ddp_stage_trains_exports_and_tests(trained, capsys):
    run_dir, args = trained
    stage = run_dir / "classifier"
    metrics = json.loads((stage / "metrics.json").read_text())
    losses = [row["train/loss"] for row in metrics["history"]]
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4, 5]
    assert min(losses[-2:]) < losses[0], losses
    assert all(row["train/images"] == 64 for row in metrics["history"])  # both workers' shards, no more
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 18
    assert (stage / "model" / "model.safetensors").is_file() and (stage / "confusion_test.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (stage / "ray" / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "val/mean_auc", "val/recall/multiple_diseases", "test/mean_auc"} <= tags
    best = max(metrics["history"], key=lambda r: r["val/mean_auc"])
    assert metrics["best_val"]["val/mean_auc"] == pytest.approx(best["val/mean_auc"])

    assert main(args) == 0  # complete: a second run is skipped and prints the same table
    out = capsys.readouterr().out
    assert (
        "[classifier] skipped (up to date)" in out and "mean column AUC" in out and "multiple_diseases" in out
    )


def test_predict_writes_a_kaggle_submission(trained, tmp_path, capsys):
    run_dir, _ = trained
    folder = dataset_root(None, RunDir(run_dir).marker("dataset")["outputs"], run_dir)
    out = tmp_path / "submission.csv"
    assert (
        main(
            [
                "predict",
                "--model",
                str(run_dir / "classifier" / "model"),
                "--folder",
                str(folder),
                "--out",
                str(out),
                "--tta",
            ]
        )
        == 0
    )
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    with open(folder / "test.csv", newline="") as fh:
        test_ids = [r[0] for r in list(csv.reader(fh))[1:]]
    assert tuple(rows[0]) == TRAIN_COLUMNS
    assert [r[0] for r in rows[1:]] == test_ids
    assert all(abs(sum(map(float, r[1:])) - 1) < 1e-4 for r in rows[1:])
    assert main(["predict", "--model", str(tmp_path), "--folder", str(folder), "--out", str(out)]) == 2
    assert "not a trained classifier" in capsys.readouterr().err


def test_a_killed_worker_resumes_its_group_from_the_interrupted_run(ray_cluster, data_run, tmp_path):
    """Two runs in one fit: a worker killed during the second leaves the first finished and untouched;
    the new worker group skips it and continues the second from its checkpoint."""
    from leafgen.classifier.runs import spec_for
    from leafgen.classifier.stage import cache_split_arrays
    from leafgen.distributed.train_classifier import train_runs_on_ray

    cfg = load_config(
        TINY_RUN[1], [f"run_dir={data_run}", *TINY_RUN[2:], "classifier.epochs=4", "classifier.num_workers=2"]
    )
    run = RunDir(data_run)
    arrays = cache_split_arrays(
        cfg, StageContext(run, tmp_path, {n: run.marker(n)["outputs"] for n in ("dataset", "split")})
    )
    specs = [
        spec_for(name, tmp_path / name, replace(cfg.classifier, seed=seed), arrays, "multiple_diseases")
        for name, seed in (("first", 0), ("second", 1))
    ]
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("done", train_runs_on_ray(cfg, specs, tmp_path / "ray") or True)
    )
    thread.start()
    # Find the worker processes first (the state API takes a while), then kill one right after the second
    # run's first checkpoint, while training is still running.
    deadline = time.time() + 300
    while len(workers := alive_actors("RayTrainWorker")) < 2:
        assert time.time() < deadline, "the worker group never started"
        time.sleep(0.2)
    _wait_for_epochs(tmp_path / "second" / "ray", 2)
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=900)
    assert outcome.get("done")
    first, second = (read_history(tmp_path / name / "ray") for name in ("first", "second"))
    assert [row["epoch"] for row in first] == [1, 2, 3, 4] and first[-1]["start_epoch"] == 1
    assert [row["epoch"] for row in second] == [1, 2, 3, 4]
    assert second[-1]["start_epoch"] > 1  # the new worker group continued from a checkpoint
    assert all(spec.done() for spec in specs)


def test_interrupted_driver_resumes_with_the_same_command(ray_cluster, data_run, tmp_path):
    import ray

    run_dir = copy_run(data_run, tmp_path / "run", ("dataset", "split", "config.yaml"))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = [
        sys.executable,
        "-m",
        "leafgen.cli",
        "train-classifier",
        f"run_dir={run_dir}",
        *TINY_RUN,
        "classifier.epochs=8",
        "classifier.num_workers=2",
    ]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_epochs(run_dir / "classifier" / "ray", 2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    history = read_history(run_dir / "classifier" / "ray")
    assert [row["epoch"] for row in history] == list(range(1, 9))
    assert history[-1]["start_epoch"] > 1, history  # continued, not started over
    assert "held-out test split" in done.stdout


def test_an_epoch_the_driver_missed_is_read_from_the_done_marker(tmp_path):
    # A driver killed between a worker's last report and its own log write finds the run done with its
    # history one epoch short; rank 0's done marker holds every epoch.
    log = tmp_path / "ray"
    log.mkdir()
    (log / "history.jsonl").write_text(json.dumps({"epoch": 1, "val/accuracy": 0.5, "by": "driver"}) + "\n")
    marker = [{"epoch": 1, "val/accuracy": 0.5}, {"epoch": 2, "val/accuracy": 0.75}]
    (tmp_path / DONE_FILE).write_text(json.dumps({"run_id": "a", "epochs": 2, "history": marker}))
    history = read_history(log)
    assert [row["epoch"] for row in history] == [1, 2] and history[0]["by"] == "driver"
    assert history[1]["val/accuracy"] == 0.75
