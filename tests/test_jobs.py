"""The `ray job submit` entrypoints are thin: each one is the matching `leafgen` subcommand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

JOBS = Path(__file__).resolve().parent.parent / "jobs"


@pytest.mark.parametrize(
    ("job", "command"),
    [
        ("pipeline", "run"),
        ("train_classifier", "train-classifier"),
        ("dreambooth", "dreambooth"),
        ("generate", "generate"),
        ("tune", "tune"),
    ],
)
def test_job_is_the_leafgen_subcommand(job, command):
    done = subprocess.run(
        [sys.executable, str(JOBS / f"{job}.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"leafgen {command}" in done.stdout
