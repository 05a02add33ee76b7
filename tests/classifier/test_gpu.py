"""GPU paths of the classifier: bf16 autocast and channels_last in the library loop, NCCL on Ray Train.
Skipped without CUDA (CI has none); run them on a machine with a GPU."""

import numpy as np
import pytest
import torch

from leafgen.classifier.training import SplitArrays, fit
from leafgen.config import load_config

pytestmark = pytest.mark.gpu


def _arrays(n=48):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, size=(n, 32, 48, 3), dtype=np.uint8)
    for k in range(4):  # a learnable signal: one bright channel band per class
        images[labels == k, :, k * 12 : k * 12 + 8, k % 3] = 230
    return SplitArrays(images, labels)


def test_bf16_channels_last_loop_learns_on_cuda():
    from leafgen.worker import WorkerContext

    cfg = load_config(
        None,
        [
            "classifier.image_size=32",
            "classifier.epochs=6",
            "classifier.batch_size=16",
            "classifier.learning_rate=0.003",
        ],
    ).classifier
    losses = []
    fit(
        cfg,
        _arrays(),
        _arrays(16),
        lambda m, c: losses.append(m["train/loss"]),
        worker=WorkerContext(device=torch.device("cuda")),
        amp_dtype=torch.bfloat16,
    )
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_ray_train_uses_nccl_on_gpu(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (a GPU machine may lack it)")
    from leafgen.classifier.runs import spec_for
    from leafgen.config import RayConfig
    from leafgen.distributed.runtime import ensure_ray
    from leafgen.distributed.train_classifier import read_history, train_runs_on_ray

    ensure_ray(RayConfig(temp_dir="/tmp/lg-gpu-ray"))
    cfg = load_config(None, ["classifier.image_size=32", "classifier.epochs=2", "classifier.num_workers=1"])
    arrays = {}
    for name, split in (("train", _arrays()), ("val", _arrays(16))):
        np.save(tmp_path / f"{name}_images.npy", split.images)
        np.save(tmp_path / f"{name}_labels.npy", split.labels)
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = (
            tmp_path / f"{name}_images.npy",
            tmp_path / f"{name}_labels.npy",
        )
    spec = spec_for("gpu", tmp_path / "run", cfg.classifier, arrays, "multiple_diseases")
    train_runs_on_ray(cfg, [spec], tmp_path / "ray")
    assert spec.done() and len(read_history(tmp_path / "run" / "ray")) == 2
