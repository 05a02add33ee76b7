"""DreamBooth on real Ray Train (2 CPU workers, gloo): the command end to end, and a killed worker; textual
inversion with one identifier per cluster through the same command."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import threading
import time

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from leafgen.cli import main
from leafgen.config import load_config
from leafgen.stages import RunDir

from ..diffusion.conftest import IDENTIFIER
from .conftest import TINY_RUN, alive_actors

DB = [
    "base_model.resolution=16",
    "base_model.width=24",
    "generate.num_inference_steps=2",
    "dreambooth.lora_rank=2",
    "dreambooth.num_class_images=4",
    "dreambooth.train_batch_size=1",
    "dreambooth.learning_rate=0.001",
    "dreambooth.num_workers=2",
    "dreambooth.max_train_steps=6",
    "dreambooth.checkpointing_steps=3",
    "dreambooth.validation_steps=3",
    "dreambooth.num_validation_images=2",
]


@pytest.fixture(scope="module")
def dreambooth_run(ray_cluster, data_run, model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("db") / "run"
    shutil.copytree(data_run, run_dir)
    args = [*TINY_RUN, f"run_dir={run_dir}", f"base_model.name_or_path={model_dir}", *DB]
    assert main(["dreambooth", *args]) == 0
    return run_dir, args


def test_dreambooth_command_trains_with_ddp_and_writes_a_loadable_output(dreambooth_run, model_dir, capsys):
    run_dir, args = dreambooth_run
    out = run_dir / "dreambooth" / "model"
    assert {p.name for p in out.iterdir()} == {
        "pytorch_lora_weights.safetensors",
        "learned_embeds.safetensors",
        "README.md",
    }
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    pipe.load_lora_weights(str(out))
    image = pipe(f"{IDENTIFIER} leaf", height=16, width=24, num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 16, 24) and torch.isfinite(image).all()

    summary = json.loads((run_dir / "dreambooth" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["class_images"] == 4
    assert summary["validation_grids"] == ["step_000000.png", "step_000003.png", "step_000006.png"]
    events = EventAccumulator(str(run_dir / "dreambooth" / "ray" / "tensorboard")).Reload()
    assert {"dreambooth/loss", "dreambooth/loss/instance", "dreambooth/loss/prior"} <= set(
        events.Tags()["scalars"]
    )
    assert [e.step for e in events.Images("dreambooth/validation")] == [3, 6]
    # A rerun skips every complete stage and prints the summary again.
    capsys.readouterr()
    assert main(["dreambooth", *args]) == 0
    assert "dreambooth (lora, 6 steps" in capsys.readouterr().out


def test_killed_worker_resumes_from_the_last_checkpoint(dreambooth_run, tmp_path):
    from leafgen.diffusion.generation.stages import train_sources
    from leafgen.distributed.train_dreambooth import read_history, train_dreambooth_on_ray
    from leafgen.stages import StageContext

    run_dir, args = dreambooth_run
    cfg = load_config(
        args[1], [*args[2:], "dreambooth.max_train_steps=40", "dreambooth.checkpointing_steps=4"]
    )
    run = RunDir(run_dir)
    ctx = StageContext(run, tmp_path, {n: run.marker(n)["outputs"] for n in ("dataset", "split")})
    instance = [p for _, p in train_sources(cfg, ctx)]
    classes = sorted((run_dir / "class_images" / "images").glob("*.png"))
    storage = tmp_path / "ray"
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault(
            "result",
            train_dreambooth_on_ray(
                cfg, cfg.base_model.name_or_path, instance, classes, storage, tmp_path / "validation"
            ),
        )
    )
    thread.start()
    deadline = time.time() + 300
    while not any(row["step"] >= 8 for row in read_history(storage)):
        assert time.time() < deadline, "training never reached its second checkpoint"
        time.sleep(0.2)
    workers = alive_actors("RayTrainWorker")
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=900)
    assert outcome["result"].error is None
    history = read_history(storage)
    assert history[-1]["step"] == 40
    assert history[-1]["start_step"] > 1  # the new worker group continued from a checkpoint


@pytest.fixture(scope="module")
def inversion_run(dreambooth_run, tmp_path_factory):
    """``leafgen dreambooth`` with textual inversion and two clusters, in a copy of the DreamBooth run (its
    class images are reused): (run_dir, what it printed)."""
    run_dir = tmp_path_factory.mktemp("ti") / "run"
    shutil.copytree(dreambooth_run[0], run_dir)
    args = [a for a in dreambooth_run[1] if not a.startswith("run_dir=")] + [f"run_dir={run_dir}"]
    args += ["dreambooth.method=textual_inversion", "dreambooth.textual_inversion_steps=6"]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["dreambooth", *args, "dreambooth.clusters=2"]) == 0
    return run_dir, out.getvalue()


def test_textual_inversion_with_clusters_trains_on_ray_and_loads_in_plain_diffusers(
    inversion_run, dreambooth_run, model_dir
):
    from safetensors.torch import load_file

    run_dir, printed = inversion_run
    assert "textual inversion trains no UNet weights, so prior preservation" in printed
    assert ": textual_inversion, 2 clusters" in printed  # the stage's summary line
    stage = run_dir / "dreambooth"
    summary = json.loads((stage / "summary.json").read_text())
    assert (summary["kind"], summary["method"], summary["steps"]) == (
        "textual_inversion",
        "textual_inversion",
        6,
    )
    assert summary["class_images"] == 0 and summary["tokens"] == ["<disease-leaf-0>", "<disease-leaf-1>"]
    out = stage / "model"
    assert {p.name for p in out.iterdir()} == {"learned_embeds.safetensors", "clusters.json", "README.md"}
    clusters = json.loads((out / "clusters.json").read_text())
    assert clusters["k"] == 2 and len(clusters["ids"]) == summary["instance_images"] == sum(clusters["sizes"])
    assert "embedded backbone" in clusters["features"] and len(clusters["distances"][0]) == 2
    embeds = load_file(out / "learned_embeds.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.load_textual_inversion(list(embeds.values()), token=list(embeds))
    image = pipe("<disease-leaf-1> leaf", height=16, width=24, num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 16, 24) and torch.isfinite(image).all()
    # Validation grids draw every cluster's prompt: 2 cluster rows where one identifier had 1, so one row
    # more than the same grid of the one-identifier run.
    grid = Image.open(stage / "validation" / "step_000006.png")
    one = Image.open(dreambooth_run[0] / "dreambooth" / "validation" / "step_000006.png")
    assert grid.height > one.height
    events = EventAccumulator(str(stage / "ray" / "tensorboard")).Reload()
    assert "dreambooth/loss/instance" in events.Tags()["scalars"]
    assert Image.open(stage / "clusters.png").height == 2 * 16 + 3


def test_probe_drift_command_compares_base_and_fine_tune(dreambooth_run, capsys):
    run_dir, args = dreambooth_run
    extra = [
        "--samples",
        "2",
        "--other-samples",
        "1",
        "--steps",
        "2",
        "dreambooth.drift_prompts=[apple orchard]",
    ]
    assert main(["probe-drift", *args, *extra]) == 0
    result = json.loads((run_dir / "drift-probe" / "drift.json").read_text())
    prompts = [row["prompt"] for row in result["prompts"]]
    assert prompts[0] == f"{IDENTIFIER} leaf" and prompts[-1] == "apple orchard" and len(prompts) == 12
    assert [row["samples"] for row in result["prompts"][:3]] == [2, 2, 1]  # instance, class, the rest
    assert result["after"] == str(run_dir / "dreambooth" / "model")
    assert (run_dir / "drift-probe" / "drift_grid.png").is_file()
    assert "feature distance" in capsys.readouterr().out
