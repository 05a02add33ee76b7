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


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A local S3 endpoint (moto's server: the S3 HTTP API in a thread of this process); credentials are
    set in the environment so drivers, Ray nodes and workers started from here can reach it."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in (("AWS_ACCESS_KEY_ID", "leafgen"), ("AWS_SECRET_ACCESS_KEY", "leafgen")):
        os.environ[key] = value
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_run_uri(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """``s3://`` URI of an empty run directory in a fresh bucket of the local S3 endpoint."""
    import re
    import uuid

    import pyarrow.fs as pafs

    bucket = f"runs-{uuid.uuid4().hex[:12]}"
    query = f"endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?{query}&allow_bucket_creation=true")
    fs.create_dir(bucket)
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:40]
    return f"s3://{bucket}/{name}?{query}"
