"""One real local Ray instance for the distributed tests (starting Ray costs seconds, so it is shared)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import pytest

from leafgen.cli import main
from leafgen.config import RayConfig

TINY_RUN = [
    "--config",
    "configs/tiny.yaml",
    "data.procedural.scale=0.05",
    "data.procedural.size=64",
    "classifier.image_size=32",
    "classifier.batch_size=16",
    "classifier.learning_rate=0.002",
    "ray.num_cpus=2",
]


@pytest.fixture(scope="session")
def ray_cluster():
    from leafgen.distributed.runtime import ensure_ray, shutdown

    # A short temp dir: pytest's tmp paths can exceed the 107-byte Unix socket limit.
    temp = tempfile.mkdtemp(prefix="lgr-", dir="/tmp")
    resources = ensure_ray(RayConfig(num_cpus=2, temp_dir=temp))
    yield resources
    shutdown()


def alive_actors(class_name: str | None = None) -> list:
    """ALIVE actors of this process's Ray cluster. Left to itself, the state API asks the cluster started
    last on the machine, which can be another job's (a demo running beside the tests)."""
    import ray
    from ray.util.state import list_actors

    filters = [("state", "=", "ALIVE")] + ([("class_name", "=", class_name)] if class_name else [])
    return list_actors(address=ray.get_runtime_context().gcs_address, filters=filters)


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    """A run directory whose dataset and split stages are complete."""
    run_dir = tmp_path_factory.mktemp("run")
    assert main(["run", "--only", "dataset", "--only", "split", f"run_dir={run_dir}", *TINY_RUN]) == 0
    assert os.path.isfile(run_dir / "split" / "split.csv")
    return run_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A random-weight tiny text-to-image pipeline in the diffusers layout, shared by the Ray tests."""
    from leafgen.diffusion.components import build_pipeline

    from ..diffusion.conftest import tiny_architecture

    path = tmp_path_factory.mktemp("model") / "tiny"
    build_pipeline(tiny_architecture(), seed=0).save_pretrained(path, safe_serialization=True)
    return path


def copy_run(src, dst, parts=("dataset", "split", "classifier", "config.yaml")):
    """A copy of some stage folders (and files) of run ``src`` as a new run directory ``dst``."""
    for part in parts:
        (shutil.copytree if (src / part).is_dir() else shutil.copy2)(src / part, dst / part)
    return dst


def kill_once(command: str, args: list[str], ready: Callable[[], bool], what: str) -> dict[str, str]:
    """Run ``leafgen <command> <args>`` as a subprocess joined to the shared Ray instance and SIGKILL it
    once ``ready()`` holds (``what`` names that moment); returns the environment to rerun it with."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen(
        [sys.executable, "-m", "leafgen.cli", command, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 900
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, f"the {command} run ended before {what}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return env


# The tiny whole pipeline: a random-weight text-to-image model at 16x24, a few images and steps.
PIPELINE = [
    "base_model.resolution=16",
    "base_model.width=24",
    "generate.num_inference_steps=2",
    "generate.num_images=8",
    "generate.batch_size=4",
    "generate.num_actors=1",
    "generate.cpu_threads=1",
    "gate.threshold=0.0",
    "dreambooth.lora_rank=2",
    "dreambooth.num_class_images=4",
    "dreambooth.train_batch_size=1",
    "dreambooth.max_train_steps=2",
    "dreambooth.checkpointing_steps=2",
    "dreambooth.validation_steps=1",
    "dreambooth.num_validation_images=1",
    "eval.seeds=[0,1]",
    # The judge's recipe is then the balanced arm's at seed 1, which is reused instead of trained again.
    "eval.judge.seed=1",
    "eval.judge.epochs=1",
    "eval.drift_samples=2",
    "eval.drift_other_samples=1",
    "eval.bootstrap_samples=100",
    "mix.synthetic_ratio=1.0",
]


def _mtimes(run_dir, names):
    return {n: os.stat(run_dir / n / "_complete.json").st_mtime_ns for n in names}


@pytest.fixture(scope="session")
def pipeline_run(ray_cluster, model_dir, tmp_path_factory):
    """A whole tiny run, killed while the arms train, then finished by the same command: (run_dir, args).
    Built once per session; tests that change it work on a copy (shutil.copytree)."""
    from leafgen.pipeline import STAGES

    run_dir = tmp_path_factory.mktemp("pipe") / "run"
    args = [*TINY_RUN, f"run_dir={run_dir}", f"base_model.name_or_path={model_dir}", *PIPELINE]
    assert main(["run", "--only", "dataset", "--only", "split", *args]) == 0
    training = run_dir / "arms" / "balanced" / "seed_0" / "ray"
    kill_once("run", args, training.is_dir, "the arms stage started")
    finished = [s.name for s in STAGES[: [s.name for s in STAGES].index("arms")]]
    before = _mtimes(run_dir, finished)
    assert not (run_dir / "arms" / "_complete.json").exists()
    sys.stdout.flush()
    assert main(["run", *args]) == 0
    assert _mtimes(run_dir, finished) == before, "a finished stage was redone after the kill"
    return run_dir, args
