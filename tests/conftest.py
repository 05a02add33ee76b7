"""Shared fixtures: tiny procedural datasets and writable Kaggle-format folders. No network."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from leafgen.data.procedural import ProceduralSpec, make_dataset  # noqa: E402

TINY_SPEC = ProceduralSpec(scale=0.03, size=64, seed=123, test_fraction=0.2)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tiny procedural dataset in Kaggle format (shared; copy it before changing it)."""
    return make_dataset(tmp_path_factory.mktemp("tiny") / "data", TINY_SPEC, workers=1, progress=False)


@pytest.fixture
def kaggle_folder(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny dataset for tests that break it."""
    dst = tmp_path / "kaggle"
    shutil.copytree(tiny_dataset, dst)
    return dst


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
