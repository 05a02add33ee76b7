"""A group of classifier trainings in one process (what a stage hands Ray Train as one fit): every run
trains as it would alone, reports and checkpoints carry the run's id, the best epoch is kept beside the
run, finished runs are skipped and an interrupted one resumes to the same weights."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from leafgen.classifier.export import export_run
from leafgen.classifier.runs import (
    BEST_DIR,
    DONE_FILE,
    RUN_FILE,
    best_copy,
    marker_history,
    spec_for,
    train_runs,
)
from leafgen.classifier.sampling import SyntheticUse
from leafgen.config import load_config


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def arrays(tiny_arrays, tmp_path_factory):
    images, labels = tiny_arrays
    folder = tmp_path_factory.mktemp("arrays")
    val = np.arange(len(labels)) % 4 == 0
    parts = {
        "train_images": images[~val],
        "train_labels": labels[~val],
        "val_images": images[val],
        "val_labels": labels[val],
        "test_images": images[val],
        "test_labels": labels[val],
        "train_synthetic": np.arange((~val).sum()) % 5 == 0,  # pretend every fifth image is synthetic
        "train_sources": np.full((~val).sum(), -1),
    }
    paths = {}
    for name, values in parts.items():
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], values)
    return paths


def _cfg(seed: int, *extra: str):
    return load_config(
        None,
        [
            "classifier.image_size=32",
            "classifier.batch_size=16",
            "classifier.epochs=2",
            "classifier.learning_rate=0.002",
            f"classifier.seed={seed}",
            *extra,
        ],
    ).classifier


def _specs(root: Path, arrays):
    return [
        spec_for("a/seed_0", root / "a", _cfg(0), arrays, "multiple_diseases"),
        spec_for(
            "b/seed_1",
            root / "b",
            _cfg(1, "classifier.balanced_sampling=true"),
            arrays,
            "multiple_diseases",
            SyntheticUse("append", loss_weight=0.5),
        ),
    ]


def _weights(spec) -> dict:
    return load_file(str(best_copy(Path(spec.out) / BEST_DIR) / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.fixture(scope="module")
def group(arrays, tmp_path_factory):
    """Two runs trained in one group, uninterrupted: (specs, reports)."""
    reports = []
    specs = _specs(tmp_path_factory.mktemp("group"), arrays)
    train_runs(specs, lambda m, c: reports.append((m["run"], m["epoch"], c is not None)))
    return specs, reports


def test_every_run_trains_as_alone_keeps_its_best_epoch_and_exports(arrays, group, tmp_path):
    specs, reports = group
    assert reports == [(s.run_id, e, True) for s in specs for e in (1, 2)]
    for spec in specs:
        assert spec.done() and json.loads((Path(spec.out) / DONE_FILE).read_text())["run_id"] == spec.run_id
    alone = _specs(tmp_path / "alone", arrays)[1:]
    train_runs(alone, lambda m, c: None)
    assert _same(_weights(specs[1]), _weights(alone[0]))  # the group changes nothing about a run
    metrics = export_run(specs[0], arrays, False, lambda folder: [])
    out = Path(specs[0].out)
    assert (out / "model" / "model.safetensors").is_file() and 1 <= metrics["best_epoch"] <= 3
    assert np.load(out / "test_probs.npy").shape == (len(np.load(arrays["test_labels"])), 4)
    assert np.load(out / "val_probs.npy").shape == np.load(out / "test_probs.npy").shape


def test_an_interrupted_group_skips_finished_runs_and_resumes_to_the_same_weights(arrays, group, tmp_path):
    straight, _ = group

    specs = _specs(tmp_path / "killed", arrays)
    kept = tmp_path / "checkpoint"

    def report(metrics, checkpoint):
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(checkpoint, kept)  # Ray keeps the latest checkpoint
        if metrics["run"] == "b/seed_1" and metrics["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_runs(specs, report)
    assert specs[0].done() and not specs[1].done()
    carried = json.loads((kept / RUN_FILE).read_text())
    assert carried["run_id"] == "b/seed_1" and [row["epoch"] for row in carried["history"]] == [1]
    resumed = []
    train_runs(specs, lambda m, c: resumed.append((m["run"], m["epoch"], m["start_epoch"])), resume_from=kept)
    assert resumed == [("b/seed_1", 2, 2)]  # run a is not trained again; run b continues after epoch 1
    # The done marker holds every epoch, those before the interruption too (rank 0's own record).
    assert [(r["run"], r["epoch"]) for r in marker_history(Path(specs[1].out))] == [
        ("b/seed_1", 1),
        ("b/seed_1", 2),
    ]
    for done, whole in zip(specs, straight):
        assert _same(_weights(done), _weights(whole))
