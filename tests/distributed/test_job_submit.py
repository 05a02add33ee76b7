"""`ray job submit` against a real head started with `ray start --head` on loopback, as a user does it:
the job runs jobs/pipeline.py from the uploaded working directory and its artifacts land in run_dir."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import TINY_RUN

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head():
    """A head node on loopback with its own ports (another Ray may run in this test session); the venv's
    bin first on PATH, since a job's `python` is looked up on the PATH the head started with."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    temp = tempfile.mkdtemp(prefix="lgh-", dir="/tmp")
    dashboard = _free_port()
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    start = [
        ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
    ]  # fmt: skip
    done = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    try:
        yield ray, f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop(temp)


def _stop(temp: str) -> None:
    """Stop this head only: `ray stop` would also stop the Ray instance the other tests share."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp in part for part in proc.info["cmdline"] or ()):
            procs.append(proc)
            proc.kill()
    psutil.wait_procs(procs, timeout=30)
    shutil.rmtree(temp, ignore_errors=True)


def test_a_submitted_pipeline_job_succeeds_and_writes_its_artifacts(head, tmp_path):
    ray, address, env = head
    run_dir = tmp_path / "run"
    job = "leafgen-test-job"
    submit = [
        ray, "job", "submit", "--address", address, "--submission-id", job, "--no-wait",
        "--working-dir", str(REPO), "--",
        "python", "jobs/pipeline.py", *TINY_RUN, f"run_dir={run_dir}",
        "--only", "dataset", "--only", "split", "--only", "classifier",
    ]  # fmt: skip
    done = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + 600
    while (status := client.get_job_status(job)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        assert time.monotonic() < deadline, f"the job is still {status}"
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "[classifier] done in" in logs
    assert (run_dir / "classifier" / "model" / "model.safetensors").is_file()
    metrics = json.loads((run_dir / "classifier" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0 and metrics["history"]
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert "jobs/pipeline.py" in " ".join(provenance.get("argv", provenance.get("command", [])))
