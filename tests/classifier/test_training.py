import shutil

import numpy as np
import pytest
import torch

from leafgen.classifier.training import (
    META_FILE,
    MODEL_FILE,
    SplitArrays,
    fit,
    load_classifier,
)
from leafgen.config import load_config


@pytest.fixture(scope="module")
def splits(tiny_arrays):
    images, labels = tiny_arrays
    val = np.arange(len(labels)) % 4 == 0
    return SplitArrays(images[~val], labels[~val]), SplitArrays(images[val], labels[val])


def _cfg(*extra):
    return load_config(
        None,
        [
            "classifier.image_size=32",
            "classifier.batch_size=16",
            "classifier.epochs=3",
            "classifier.learning_rate=0.002",
            *extra,
        ],
    ).classifier


def test_fit_reports_every_epoch_with_validation_metrics_and_a_checkpoint(splits, tmp_path):
    reports = []

    def report(metrics, checkpoint_dir):
        saved = None
        if checkpoint_dir is not None:
            saved = tmp_path / f"ckpt{metrics['epoch']}"
            shutil.copytree(checkpoint_dir, saved)
        reports.append((metrics, saved))

    fit(_cfg(), *splits, report)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    for metrics, saved in reports:
        assert {"train/loss", "val/accuracy", "val/recall/multiple_diseases", "val/mean_auc"} <= set(metrics)
        assert (saved / MODEL_FILE).is_file() and (saved / META_FILE).is_file()
    model, meta = load_classifier(reports[-1][1])
    assert meta["epoch"] == 2 and meta["classes"][1] == "multiple_diseases"
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 48)).shape == (2, 4)


def test_resume_continues_after_the_checkpointed_epoch(splits, tmp_path):
    kept = {}

    def report(metrics, checkpoint_dir):
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, tmp_path / str(metrics["epoch"]))
        kept[metrics["epoch"]] = metrics

    fit(_cfg("classifier.epochs=1"), *splits, report)
    resumed = []
    fit(_cfg(), *splits, lambda m, c: resumed.append(m["epoch"]), resume_from=tmp_path / "1")
    assert resumed == [2, 3]
