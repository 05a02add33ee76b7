"""Generation on Ray Data: prompt rows sharded over an actor pool, one diffusers pipeline per actor.

Only wiring lives here. The rows not yet finished (``manifest.finished_ids``) go into ``from_items``;
``map_batches`` runs :class:`~leafgen.diffusion.generation.generator.ImageGenerator` on an
``ActorPoolStrategy`` with one GPU per actor, or on CPU with ``cpu_threads`` CPUs (and torch threads)
each. Actors write images and manifest parts themselves, so whatever finished before a crash of an actor or
of the driver is kept, and the same call again renders only what is missing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, DataContext
from tqdm.auto import tqdm

from leafgen.config import RayConfig
from leafgen.diffusion.finetune.adapters import EngineSettings
from leafgen.diffusion.generation.generator import GROUP_KEYS, ImageGenerator
from leafgen.diffusion.generation.manifest import finalize, finished_ids, image_file
from leafgen.diffusion.generation.prompt_table import Row
from leafgen.diffusion.generation.speed import AUTO_BATCH_LIMIT
from leafgen.distributed.errors import worker_label
from leafgen.distributed.quiet import ray_noise_filtered
from leafgen.distributed.runtime import job_resources
from leafgen.errors import LeafgenError
from leafgen.run_storage import RunStorage


class RunImageGenerator(ImageGenerator):
    """An :class:`ImageGenerator` for a run kept on object storage: it reads the model, adapter and
    img2img sources from this node's mirror of the run, and pushes each batch's images, then its manifest
    part, as soon as they are written, so the driver (on any node) finds them and a rerun skips them."""

    def __init__(
        self,
        engine: dict[str, Any],
        out_dir: str,
        run_dir: str,
        threads: int | None = None,
        batch_size: int | str | None = None,
    ):
        self.run = RunStorage.open(run_dir)
        paths = {k: str(self.run.localize(engine[k])) for k in ("base_model", "adapter") if engine.get(k)}
        super().__init__({**engine, **paths}, str(self.run.localize(out_dir)), threads, batch_size)
        self.settings = EngineSettings(**engine)  # the manifest names the driver's paths
        self._pull_lock = threading.Lock()  # two overlapping calls may pull the same source image

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "source_path" in batch:
            batch = {**batch, "source_path": np.array([self._source(p) for p in batch["source_path"]])}
        return super().__call__(batch)

    def record(self, done: list[Row]) -> Path:
        for row in done:
            self.run.push(image_file(self.out_dir, row["id"]))
        part = super().record(done)
        self.run.push(part)  # after its images: a part names finished images only
        return part

    def _source(self, path: Any) -> str:
        if not path:
            return path
        with self._pull_lock:
            return str(self.run.localize(path))


class GuardedImageGenerator:
    """What each actor runs: an :class:`ImageGenerator` (a :class:`RunImageGenerator` for a run on object
    storage) whose ``LeafgenError`` (a model that will not load, a source image it cannot read) comes back
    as a batch holding only the message: the driver raises it once, where Ray would restart the actor,
    retry and print each traceback (``leafgen.distributed.errors``)."""

    def __init__(self, remote: bool, **kwargs: Any):
        self.generator: ImageGenerator | None = None
        self.error: str | None = None
        try:
            self.generator = (RunImageGenerator if remote else ImageGenerator)(**kwargs)
        except LeafgenError as exc:
            self.error = _described(exc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.generator is not None:
            try:
                return self.generator(batch)
            except LeafgenError as exc:
                self.error = _described(exc)
        return {ERROR_COLUMN: np.array([self.error] * len(batch["id"]))}


ERROR_COLUMN = "leafgen_error"


def _described(exc: LeafgenError) -> str:
    return f"{exc} (in a {worker_label('Ray Data generation actor')})"


def actor_plan(resources: dict[str, float], num_actors: int | None, cpu_threads: int) -> tuple[int, dict]:
    """How many actors, and what each one asks Ray for: a GPU each when the cluster has GPUs, else
    ``cpu_threads`` CPUs each (all of the cluster's CPUs by default)."""
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return num_actors or gpus, {"num_gpus": 1}
    cpus = int(resources.get("CPU", 1))
    threads = min(cpu_threads, cpus)
    return num_actors or max(1, cpus // threads), {"num_cpus": threads}


def generate_on_ray(
    rows: Sequence[Row],
    engine: EngineSettings,
    out_dir: str | Path,
    batch_size: int | str,
    ray_cfg: RayConfig | None = None,
    num_actors: int | None = None,
    cpu_threads: int = 1,
    progress: bool = True,
    run: RunStorage | None = None,
    overlap_writes: bool | None = None,
) -> pa.Table:
    """Generate every row not already finished in ``out_dir``; returns the manifest of all ``rows``.
    ``run``: the run ``out_dir`` belongs to, when it is kept on object storage. ``batch_size``: rows per
    pipeline call, or ``auto`` (each actor chooses; a Ray batch is then up to ``AUTO_BATCH_LIMIT`` rows).
    ``overlap_writes``: two calls per actor, so one batch is written while the next renders; None: on
    with GPUs."""
    out_dir = Path(out_dir).expanduser().resolve()
    remote = run is not None and run.remote
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise LeafgenError("the prompt table repeats image ids; every row needs its own id")
    done = finished_ids(out_dir, rows)
    # Rows that can share a pipeline call side by side (a varied img2img strength splits a batch into
    # one call per strength otherwise); ids, and so the manifest's order, are untouched.
    todo = sorted((row for row in rows if row["id"] not in done), key=lambda r: [r[k] for k in GROUP_KEYS])
    if todo:
        resources = job_resources(ray_cfg)
        actors, per_actor = actor_plan(resources, num_actors, cpu_threads)
        if isinstance(batch_size, int):
            rows_per_batch = batch_size
        else:  # auto: each actor splits a batch into the calls its GPU memory allows
            rows_per_batch = min(AUTO_BATCH_LIMIT, math.ceil(len(todo) / actors))
        batches = math.ceil(len(todo) / rows_per_batch)
        actors = min(actors, batches)
        if overlap_writes is None:
            overlap_writes = "num_gpus" in per_actor
        # Two calls at once per actor, the pipeline itself one at a time (ImageGenerator's lock): one
        # batch's PNGs and manifest part are written while the next one renders.
        pool = (
            ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True)
            if overlap_writes
            else ActorPoolStrategy(size=actors)
        )
        # One tqdm bar over images instead of Ray Data's per-operator bars.
        DataContext.get_current().enable_progress_bars = False
        # One block per batch: Ray Data then hands each actor whole batches without re-bundling rows.
        dataset = ray.data.from_items(todo, override_num_blocks=batches).map_batches(
            GuardedImageGenerator,
            fn_constructor_kwargs={
                "remote": remote,
                "engine": asdict(engine),
                "out_dir": str(out_dir),
                "threads": per_actor.get("num_cpus"),
                "batch_size": batch_size,
                **({"run_dir": run.uri} if remote else {}),
            },
            batch_size=rows_per_batch,
            batch_format="numpy",
            compute=pool,
            **per_actor,
        )
        with (
            ray_noise_filtered(),
            tqdm(
                total=len(rows), initial=len(done), desc="generating", unit="img", disable=not progress
            ) as bar,
        ):
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                if ERROR_COLUMN in batch:
                    raise LeafgenError(str(batch[ERROR_COLUMN][0]))
                bar.update(len(batch["id"]))
        if remote:
            run.pull(out_dir)
    return finalize(out_dir, rows)
