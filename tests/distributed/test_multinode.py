"""Three Ray nodes on this machine (``ray.cluster_utils.Cluster``): a node that hosts training workers or a
generation actor is removed mid-run, and the run still completes on the remaining nodes: training from its
last checkpoint, generation with every requested image exactly once.

The drivers run as subprocesses joined to the cluster (``RAY_ADDRESS``), as a submitted job would; this
test process stays out of the cluster so it can remove nodes and watch the files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from leafgen.cli import main
from leafgen.diffusion.generation.manifest import read_parts, sha256_file
from leafgen.distributed.train_classifier import read_history
from leafgen.run_storage import MIRROR_ENV
from leafgen.stages import RunDir

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


@contextlib.contextmanager
def start_cluster(monkeypatch, head_cpus: int, node_env: Sequence[dict[str, str]], head_env=None):
    """A head with ``head_cpus`` CPUs and one one-CPU worker node per entry of ``node_env`` (the
    environment of that node's raylet and so of its workers): (cluster, worker nodes)."""
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="lgc-", dir="/tmp")
    (Path(temp) / "ray").mkdir()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_TMPDIR", temp)  # Ray writes the cluster's address file under it
    head = {**_node_args(head_cpus), "temp_dir": f"{temp}/ray", "env_vars": head_env}
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
        workers = [c.add_node(**_node_args(1), env_vars=env) for env in node_env]
        c.wait_for_nodes()
        yield c, workers
    finally:
        c.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def cluster(monkeypatch):
    """A head and two worker nodes with one CPU each."""
    with start_cluster(monkeypatch, 1, [{}, {}]) as started:
        yield started


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


def _driver(cluster, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env or {}), "RAY_ADDRESS": cluster.address}
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
from leafgen.diffusion.finetune.adapters import EngineSettings
from leafgen.diffusion.generation.prompt_table import TableSpec, prompt_table
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


OBJECT_STORE_RUN = [
    "base_model.resolution=16",
    "base_model.width=24",
    "generate.num_inference_steps=2",
    "generate.cpu_threads=1",
    "dreambooth.lora_rank=2",
    "dreambooth.num_class_images=4",
    "dreambooth.train_batch_size=1",
    "dreambooth.num_workers=2",
    "dreambooth.max_train_steps=4",
    "dreambooth.checkpointing_steps=2",
    "dreambooth.validation_steps=2",
    "dreambooth.num_validation_images=1",
    "classifier.epochs=2",
    "classifier.num_workers=2",
    "classifier.keep_checkpoints_after_export=true",  # DreamBooth's are pruned: both cases in the bucket
    "ray.job_cpus=2",
]


def test_a_run_on_object_storage_works_on_nodes_that_share_no_disk(
    monkeypatch, s3_run_uri, model_dir, tmp_path, capsys
):
    """run_dir is an s3:// URI and every node has its own mirror of it (its own "disk"); the head runs
    no work, so generation actors and training workers all run on the two worker nodes."""
    mirrors = {name: tmp_path / name for name in ("driver", "node1", "node2", "fresh", "check")}
    node_env = [{MIRROR_ENV: str(mirrors[name])} for name in ("node1", "node2")]
    args = [a for a in TINY_RUN if not a.startswith("ray.num_cpus")]
    args += [f"run_dir={s3_run_uri}", f"base_model.name_or_path={model_dir}", *OBJECT_STORE_RUN]
    driver_env = {MIRROR_ENV: str(mirrors["driver"])}
    with start_cluster(monkeypatch, 0, node_env, head_env=driver_env) as (c, _):
        for command in ("dreambooth", "train-classifier"):
            proc = _driver(c, ["-m", "leafgen.cli", command, *args], driver_env)
            out, _ = proc.communicate(timeout=900)
            assert proc.returncode == 0, out[-3000:]
        # Another machine's driver, with an empty mirror, finds every stage complete in the bucket.
        proc = _driver(c, ["-m", "leafgen.cli", "dreambooth", *args], {MIRROR_ENV: str(mirrors["fresh"])})
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-3000:]
        for stage in ("dataset", "split", "class_images", "dreambooth"):
            assert f"[{stage}] skipped (up to date)" in out, out[-3000:]

    monkeypatch.setenv(MIRROR_ENV, str(mirrors["check"]))
    run = RunDir(s3_run_uri)
    run.storage.pull(run.root)
    root = run.root
    # The workers' files reached the bucket: class images rendered by actors, the grids rank 0 drew.
    manifest = pq.read_table(root / "class_images" / "manifest.parquet").to_pylist()
    assert len(manifest) == 4
    for row in manifest:
        assert sha256_file(root / "class_images" / row["file"]) == row["sha256"]
    summary = json.loads((root / "dreambooth" / "summary.json").read_text())
    assert summary["validation_grids"] and summary["steps"] == 4
    for name in summary["validation_grids"]:
        assert (root / "dreambooth" / "validation" / name).is_file()
    assert (root / "dreambooth" / "model" / "learned_embeds.safetensors").is_file()
    assert (root / "classifier" / "model" / "model.safetensors").is_file()
    assert [row["epoch"] for row in read_history(root / "classifier" / "ray")] == [1, 2]
    # Ray kept its checkpoints in the bucket (storage_filesystem), where a new node can resume; mirrors
    # leave them there.
    ray_dir = run.storage.remote_path(root / "classifier" / "ray")
    stored = run.storage.fs.get_file_info(pafs.FileSelector(ray_dir, recursive=True))
    assert [i.path for i in stored if "/fit-" in i.path and "/checkpoint_" in i.path]
    assert not [p for p in (root / "classifier" / "ray").rglob("checkpoint_*") if p.is_dir()]
    # DreamBooth's were deleted from the bucket once its output was exported.
    db_dir = run.storage.remote_path(root / "dreambooth" / "ray")
    stored = run.storage.fs.get_file_info(pafs.FileSelector(db_dir, recursive=True))
    assert stored and not [i.path for i in stored if "/checkpoint_" in i.path]
    # The bucket's copies verify clean; one file gone from the bucket is named.
    assert main(["verify", s3_run_uri]) == 0
    run.storage.fs.delete_file(run.storage.remote_path(root / "split" / "split.csv"))
    assert main(["verify", s3_run_uri]) == 1
    assert "split/split.csv is missing" in capsys.readouterr().out
    # Each worker read its inputs from its own node's mirror: class images, the decoded arrays.
    nodes = [next(mirrors[name].iterdir()) for name in ("node1", "node2")]
    for node in nodes:
        assert len(list((node / "class_images" / "images").glob("*.png"))) == 4, node
        assert (node / "classifier" / "arrays" / "train_labels.npy").is_file(), node
        assert list((node / "cache").rglob("*.npy")), node
