import math

import numpy as np
import torch
from PIL import Image
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassRecall,
)

from leafgen.classifier.metrics import classification_metrics, save_confusion_matrix
from leafgen.labels import CLASSES


def _fixed():
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3] * 5)
    logits = rng.normal(size=(len(y), 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_metrics_agree_with_torchmetrics_on_fixed_arrays():
    y, probs = _fixed()
    m = classification_metrics(y, probs)
    yt, pt = torch.from_numpy(y), torch.from_numpy(probs)
    assert math.isclose(m["accuracy"], MulticlassAccuracy(4, average="micro")(pt, yt).item(), rel_tol=1e-6)
    recall = MulticlassRecall(4, average="none")(pt, yt).numpy()
    assert np.allclose([m[f"recall/{c}"] for c in CLASSES], recall)
    auroc = MulticlassAUROC(4, average="none")(pt.float(), yt).numpy()
    assert np.allclose([m[f"auc/{c}"] for c in CLASSES], auroc, atol=1e-5)
    assert math.isclose(m["mean_auc"], float(auroc.mean()), abs_tol=1e-5)
    assert m["target_recall"] == m["recall/multiple_diseases"]
    assert np.array_equal(np.array(m["confusion_matrix"]), MulticlassConfusionMatrix(4)(pt, yt).numpy())


def test_hand_computed_case():
    y = np.array([0, 1, 1, 2, 3])
    probs = np.eye(4)[[0, 1, 2, 2, 3]] * 0.9 + 0.025
    m = classification_metrics(y, probs, target_class="multiple_diseases")
    assert m["accuracy"] == 0.8
    assert m["recall/multiple_diseases"] == 0.5 and m["recall/rust"] == 1.0
    assert m["confusion_matrix"][1] == [0, 1, 1, 0]


def test_auc_of_an_absent_class_is_nan_not_an_error():
    y = np.array([0, 2, 3, 0])
    m = classification_metrics(y, np.full((4, 4), 0.25))
    assert math.isnan(m["auc/multiple_diseases"]) and not math.isnan(m["mean_auc"])


def test_confusion_matrix_png(tmp_path):
    y, probs = _fixed()
    path = save_confusion_matrix(
        classification_metrics(y, probs)["confusion_matrix"], tmp_path / "cm.png", "test"
    )
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 300
