"""jobs/runtime_env.yaml is a runtime environment Ray accepts, and installs what pyproject.toml requires."""

from __future__ import annotations

from pathlib import Path

import tomllib
import yaml
from ray.runtime_env import RuntimeEnv

REPO = Path(__file__).resolve().parent.parent


def test_runtime_env_is_valid_and_matches_pyproject():
    spec = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**spec)  # Ray's own validation of every field
    assert env["working_dir"] == "."
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    # torch, torchvision and Ray come with Ray's CUDA image; everything else is installed.
    expected = [d for d in deps if not d.startswith(("torch==", "torchvision==", "ray["))]
    assert spec["uv"]["packages"] == expected
