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
