"""Three Ray nodes on this machine (``ray.cluster_utils.Cluster``): a node that hosts training workers or a
generation actor is removed mid-run, and the run still completes on the remaining nodes: training from its
last checkpoint, generation with every requested image exactly once.

The drivers run as subprocesses joined to the cluster (``RAY_ADDRESS``), as a submitted job would; this
test process stays out of the cluster so it can remove nodes and watch the files.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from leafgen.diffusion.manifest import read_parts, sha256_file
from leafgen.distributed.train_classifier import read_history

from .conftest import TINY_RUN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args(cpus: int) -> dict:
    # Own agent ports: another Ray instance of this test session may hold the defaults.
    return {
        "num_cpus": cpus,
        "dashboard_agent_listen_port": _free_port(),
        "metrics_export_port": _free_port(),
    }


@pytest.fixture
def cluster(monkeypatch):
    """A head and two worker nodes with one CPU each."""
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="lgc-", dir="/tmp")
    (Path(temp) / "ray").mkdir()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TMPDIR", temp)  # Ray writes the cluster's address file under it
    c = Cluster(initialize_head=True, head_node_args={**_node_args(1), "temp_dir": f"{temp}/ray"})
    workers = [c.add_node(**_node_args(1)) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    c.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _hosting(workers: list, title: str):
    """The worker node one of whose processes has ``title`` in its process title, or None."""
    for node in workers:
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        for child in raylet.children(recursive=True):
            try:
                if title in " ".join(child.cmdline()):
                    return node
            except psutil.Error:
                continue
    return None


def _driver(cluster, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    return subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait(condition, what: str, proc: subprocess.Popen, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert proc.poll() is None, f"the run ended before {what}: {proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def test_training_survives_the_loss_of_a_node(cluster, data_run, tmp_path):
    c, workers = cluster
    run_dir = tmp_path / "run"
    shutil.copytree(data_run, run_dir)
    args = [*TINY_RUN, f"run_dir={run_dir}", "classifier.epochs=8", "classifier.num_workers=2"]
    args = [a for a in args if not a.startswith("ray.num_cpus")] + ["ray.job_cpus=2"]
    proc = _driver(c, ["-m", "leafgen.cli", "train-classifier", *args])
    storage = run_dir / "classifier" / "ray"
    # One CPU per node: the two workers sit on two nodes; remove a worker node that hosts one, once a
    # checkpoint exists. The head and the other node still hold the whole group of two.
    node = _wait(lambda: _hosting(workers, "RayTrainWorker"), "the workers started", proc)
    _wait(lambda: len(read_history(storage)) >= 2, "two epochs", proc)
    c.remove_node(node, allow_graceful=False)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    history = read_history(storage)
    assert [row["epoch"] for row in history] == list(range(1, 9))
    assert history[-1]["start_epoch"] > 1, history  # the new group continued from a checkpoint
    assert (run_dir / "classifier" / "model" / "model.safetensors").is_file()


GENERATE = """
import sys
from leafgen.diffusion.adapters import EngineSettings
from leafgen.diffusion.prompt_table import TableSpec, prompt_table
from leafgen.distributed.generate import generate_on_ray
spec = TableSpec(num_images=24, prompts=("a leaf",), negative_prompt="", seed=0, steps=8, guidance=3.0,
                 height=16, width=24)
generate_on_ray(prompt_table(spec), EngineSettings(sys.argv[1]), sys.argv[2], batch_size=2, num_actors=2,
                cpu_threads=1, progress=False)
"""


def test_generation_that_loses_a_node_ends_with_every_image_once(cluster, model_dir, tmp_path):
    c, workers = cluster
    out = tmp_path / "out"
    proc = _driver(c, ["-c", GENERATE, str(model_dir), str(out)])
    node = _wait(lambda: _hosting(workers, "ImageGenerator"), "an actor on a worker node started", proc)
    _wait(lambda: len(read_parts(out)) >= 2, "the first images", proc)
    c.remove_node(node, allow_graceful=False)
    assert len(read_parts(out)) < 24, "removed too late: generation had already finished"
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-3000:]
    final = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(r["id"] for r in final) == sorted({r["id"] for r in final}) and len(final) == 24
    for row in final:
        assert sha256_file(Path(out) / row["file"]) == row["sha256"]
