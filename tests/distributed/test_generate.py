"""Generation on real Ray Data: sharding invariance, adapters, kills of an actor and of the driver, and
the ``leafgen generate`` command with its quality gate."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from leafgen.cli import main
from leafgen.diffusion.finetune.adapters import EngineSettings
from leafgen.diffusion.generation.manifest import read_parts, sha256_file
from leafgen.diffusion.generation.prompt_table import TableSpec, prompt_table
from leafgen.distributed.generate import actor_plan, generate_on_ray

from ..diffusion.conftest import IDENTIFIER, plain_diffusers_images, read_pixels
from .conftest import TINY_RUN, alive_actors, copy_run

SPEC = TableSpec(
    num_images=12,
    prompts=("a leaf", "leaf with rust"),
    negative_prompt="",
    seed=0,
    steps=3,
    guidance=3.0,
    height=16,
    width=24,
)


def test_actor_plan_fits_the_cluster():
    assert actor_plan({"CPU": 16.0, "GPU": 4.0}, None, 2) == (4, {"num_gpus": 1})
    assert actor_plan({"CPU": 16.0}, None, 4) == (4, {"num_cpus": 4})
    assert actor_plan({"CPU": 2.0}, None, 4) == (1, {"num_cpus": 2})
    assert actor_plan({"CPU": 2.0}, 3, 1) == (3, {"num_cpus": 1})


def test_images_do_not_depend_on_actor_count_or_batch_size(ray_cluster, model_dir, tmp_path):
    rows = prompt_table(SPEC)
    engine = EngineSettings(str(model_dir))
    one = generate_on_ray(rows, engine, tmp_path / "one", batch_size=5, num_actors=1, cpu_threads=2)
    two = generate_on_ray(
        rows, engine, tmp_path / "two", batch_size=2, num_actors=2, cpu_threads=1, overlap_writes=True
    )
    assert one.column("id").to_pylist() == two.column("id").to_pylist() == [r["id"] for r in rows]
    for row in one.to_pylist():
        assert sha256_file(tmp_path / "one" / row["file"]) == row["sha256"]
        a, b = read_pixels(tmp_path / "one" / row["file"]), read_pixels(tmp_path / "two" / row["file"])
        assert a.shape == (16, 24, 3) and np.abs(a - b).max() <= 2, row["id"]
    # The manifest is on disk too, and a rerun finds nothing to do.
    assert pq.read_table(tmp_path / "one" / "manifest.parquet").num_rows == len(rows)
    parts = sorted((tmp_path / "one" / "manifest").iterdir())
    generate_on_ray(rows, engine, tmp_path / "one", batch_size=5)
    assert sorted((tmp_path / "one" / "manifest").iterdir()) == parts


def test_lora_adapter_on_ray_equals_plain_diffusers(ray_cluster, model_dir, tmp_path):
    from ..diffusion.conftest import write_lora_adapter

    adapter = write_lora_adapter(model_dir, tmp_path / "adapter")
    rows = prompt_table(replace(SPEC, prompts=(f"{IDENTIFIER} leaf",), num_images=4))
    table = generate_on_ray(
        rows, EngineSettings(str(model_dir), adapter=str(adapter)), tmp_path / "out", batch_size=2
    )
    assert set(table.column("adapter").to_pylist()) == {str(adapter)}
    plain = plain_diffusers_images(model_dir, adapter, rows)
    for row, expected in zip(rows, plain):
        ours = read_pixels(tmp_path / "out" / "images" / f"{row['id']}.png")
        assert np.abs(ours - expected).max() <= 2, row["id"]


def _wait_for_parts(out_dir, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while len(list((out_dir / "manifest").glob("part-*.parquet"))) < n:
        assert time.time() < deadline, "generation never wrote its first manifest parts"
        time.sleep(0.1)


def test_a_killed_actor_is_replaced_and_every_image_comes_once(ray_cluster, model_dir, tmp_path):
    rows = prompt_table(replace(SPEC, num_images=16, steps=8))
    out = tmp_path / "out"
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault(
            "table", generate_on_ray(rows, EngineSettings(str(model_dir)), out, batch_size=2, num_actors=1)
        )
    )
    thread.start()
    _wait_for_parts(out, 1)
    actors = alive_actors()
    worker = next(a for a in actors if "ImageGenerator" in a.class_name)
    os.kill(worker.pid, signal.SIGKILL)
    assert len(read_parts(out)) < len(rows), "killed too late: generation had already finished"
    thread.join(timeout=600)
    table = outcome["table"]
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    for row in table.to_pylist():
        assert sha256_file(out / row["file"]) == row["sha256"]


@pytest.fixture(scope="module")
def generation_run(ray_cluster, data_run, model_dir, tmp_path_factory):
    """A tiny run whose classifier, generate and gate stages are complete (gate keeps everything)."""
    run_dir = tmp_path_factory.mktemp("gen") / "run"
    shutil.copytree(data_run, run_dir)
    args = [*TINY_RUN, f"run_dir={run_dir}", f"base_model.name_or_path={model_dir}"]
    args += ["base_model.resolution=16", "base_model.width=24", "generate.num_images=10"]
    args += ["generate.num_inference_steps=3", "generate.batch_size=4", "gate.threshold=0.0"]
    assert main(["generate", *args]) == 0
    return run_dir, args


def test_generate_command_writes_images_manifest_and_gate_decisions(generation_run, capsys):
    run_dir, args = generation_run
    gated = pq.read_table(run_dir / "gate" / "manifest.parquet").to_pylist()
    assert len(gated) == 10 and all(r["accepted"] and 0 <= r["score"] <= 1 for r in gated)
    assert all(r["copy_distance"] > 6 and r["nearest_real"].startswith("Train_") for r in gated)
    summary = json.loads((run_dir / "gate" / "summary.json").read_text())
    assert summary["acceptance_rate"] == 1.0
    for grid in ("generate/samples.png", "gate/accepted.png"):
        assert Image.open(run_dir / grid).size[0] > 24
    # Rerun: every stage is complete, nothing is redone; the summary is printed again.
    capsys.readouterr()
    assert main(["generate", *args]) == 0
    assert "quality gate kept 10 of 10" in capsys.readouterr().out


def test_a_gate_that_keeps_nothing_is_a_clear_error(generation_run, capsys):
    run_dir, args = generation_run
    assert main(["generate", *args, "gate.threshold=1.0"]) == 2
    err = capsys.readouterr().err
    assert "kept none of 10 synthetic images" in err and "gate.threshold" in err


def test_killed_driver_then_same_command_generates_only_the_missing_ids(generation_run, tmp_path):
    import ray

    src, args = generation_run
    run_dir = copy_run(src, tmp_path / "run")
    args = [a for a in args if not a.startswith(("run_dir=", "generate.num_images", "generate.num_inf"))]
    cmd = [sys.executable, "-m", "leafgen.cli", "generate", *args, f"run_dir={run_dir}"]
    cmd += ["generate.num_images=24", "generate.num_inference_steps=12", "generate.batch_size=2"]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = run_dir / "generate"
    _wait_for_parts(out, 2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = read_parts(out)
    assert 0 < len(before) < 24
    stats = {i: os.stat(out / "images" / f"{i}.png") for i in before}

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(r["id"] for r in manifest) == [f"syn-{i:06d}" for i in range(24)]
    for image_id, st in stats.items():  # finished before the kill: not regenerated, not touched
        now = os.stat(out / "images" / f"{image_id}.png")
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
        assert read_parts(out)[image_id]["finished_at"] == before[image_id]["finished_at"]
    assert len(list((out / "images").glob("*.png"))) == 24
    assert "generated 24 images" in done.stdout


def test_generate_renders_a_user_prompt_table(generation_run, tmp_path):
    import pyarrow as pa

    src, args = generation_run
    run_dir = copy_run(src, tmp_path / "run")
    table = tmp_path / "prompts.parquet"
    rows = [{"id": f"mine-{k}", "prompt": p, "seed": k} for k, p in enumerate(["a leaf", "leaf with rust"])]
    pq.write_table(pa.Table.from_pylist(rows), table)
    args = [a for a in args if not a.startswith("run_dir=")]
    assert main(["generate", *args, f"run_dir={run_dir}", f"generate.prompt_table={table}"]) == 0
    manifest = pq.read_table(run_dir / "generate" / "manifest.parquet").to_pylist()
    assert [(r["id"], r["prompt"], r["seed"]) for r in manifest] == [
        (r["id"], r["prompt"], r["seed"]) for r in rows
    ]


def test_error_allocation_reads_validation_never_test_and_is_recorded(generation_run, tmp_path):
    from leafgen.config import load_config
    from leafgen.data.split import read_split
    from leafgen.data.stages import dataset_root
    from leafgen.pipeline import GENERATION_STAGES, run_pipeline
    from leafgen.stages import RunDir

    src, args = generation_run
    run_dir = copy_run(src, tmp_path / "run")
    images = dataset_root(None, RunDir(run_dir).marker("dataset")["outputs"], run_dir) / "images"
    for image_id, _ in read_split(run_dir / "split" / "split.csv")["test"]:
        path = images / f"{image_id}.jpg"
        # Zeros of the same size: the rerun's size check passes, reading one would fail the stage.
        path.write_bytes(bytes(path.stat().st_size))
    overrides = [a for a in args[2:] if not a.startswith(("run_dir=", "generate.num_images"))]
    cfg = load_config(
        args[1],
        [
            *overrides,
            f"run_dir={run_dir}",
            "generate.num_images=8",
            "generate.mode=img2img",
            "generate.strength=[0.5, 1.0]",
            "generate.allocation=errors",
            "generate.allocation_floor=0.25",
        ],
    )
    run_pipeline(cfg, only=("generate",), stages=GENERATION_STAGES)
    allocation = json.loads((run_dir / "generate" / "allocation.json").read_text())
    sources = allocation["sources"]
    assert allocation["allocation"] == "errors" and sum(s["rows"] for s in sources) == 8
    most = max(sources, key=lambda s: s["error"])
    assert most["error"] > 0 and most["rows"] == max(s["rows"] for s in sources)
    manifest = pq.read_table(run_dir / "generate" / "manifest.parquet").to_pylist()
    # Recorded as what img2img applies: a whole number of the run's steps.
    steps = cfg.generate.num_inference_steps
    assert {r["strength"] for r in manifest} <= {int(0.5 * steps) / steps, 1.0}


ERROR_LINE = re.compile(
    r"\[\d{4}-\d\d-\d\d [\d:,.]+ E \d+ \d+\]|\bERROR\b|Traceback \(most recent call last\)"
)


def test_a_normal_generate_run_prints_no_error_level_line(generation_run, tmp_path):
    import ray

    src, args = generation_run
    run_dir = copy_run(src, tmp_path / "run")
    args = [a for a in args if not a.startswith(("run_dir=", "generate.num_images"))]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cmd = [
        sys.executable,
        "-m",
        "leafgen.cli",
        "generate",
        *args,
        f"run_dir={run_dir}",
        "generate.num_images=4",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "generated 4 images" in done.stdout
    assert not [line for line in output.splitlines() if ERROR_LINE.search(line)], output[-3000:]


def test_the_noise_filter_drops_only_the_known_line_and_keeps_the_rest_in_order(capfd):
    from leafgen.distributed.quiet import KNOWN_NOISE, ray_noise_filtered

    with ray_noise_filtered():
        os.write(
            2, b"kept one\n[2026-12-03 07:55:02,026 E 1 1] core_worker.cc: Actor X " + KNOWN_NOISE[0] + b".\n"
        )
        os.write(2, b"progress 1/2\rprogress 2/2\rkept two\n")
    assert capfd.readouterr().err == "kept one\nprogress 1/2\rprogress 2/2\rkept two\n"
