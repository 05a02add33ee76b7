"""What the classifier and DreamBooth share on Ray Train.

On the driver, ``build_trainer`` fits a ``TorchTrainer`` to the cluster: a GPU per worker (NCCL) when the
cluster has GPUs, else the node's CPUs split between the workers (gloo), with checkpoints, restarts of a
killed worker group and quiet logs; checkpoints go where the run lives (its bucket, when ``run_dir`` is
a URI). In each worker, ``worker_session`` rebuilds the typed config and yields what a library training
loop needs: its ``WorkerContext``, this node's view of the run (``RunStorage``, to pull inputs) and the
checkpoint to resume from, if any; ``reporter`` gives the loop a ``report`` that calls
``ray.train.report``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchConfig, TorchTrainer, get_device, prepare_model
from torch.utils.tensorboard import SummaryWriter

from leafgen.config import PipelineConfig, from_dict
from leafgen.distributed.errors import UserErrorsFailFast, mark, quiet_user_errors, user_error
from leafgen.distributed.quiet import ray_noise_filtered
from leafgen.distributed.runtime import job_resources, quiet_train_report_log
from leafgen.errors import LeafgenError
from leafgen.run_storage import RAY_CHECKPOINT_PREFIX, RAY_CHECKPOINT_SNAPSHOT, RunStorage
from leafgen.worker import WorkerContext

HISTORY_FILE = "history.jsonl"
# Where Ray Train logs a worker's exception with its traceback ("Error in training function").
_TRAIN_ERROR_LOGGER = "ray.train.v2._internal.util"


def read_rank_zero_history(storage: Path, key: str) -> list[dict[str, Any]]:
    """Rank 0's reports, the latest one per value of ``key`` (epoch or step), in order: a worker killed
    after reporting may report the same epoch or step again."""
    path = storage / HISTORY_FILE
    rows = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            row = json.loads(line)
            rows[row[key]] = row
    return [rows[k] for k in sorted(rows)]


class RankZeroLog(UserCallback):
    """On the driver: appends rank 0's report to ``history.jsonl`` in ``log_dir(report)`` (``storage`` unless
    a subclass routes reports, e.g. per run of a group) and hands it to ``log`` with that folder's
    TensorBoard writer. (Ray's own ``Result`` keeps the metrics of retained checkpoints only.)"""

    def __init__(self, storage: Path):
        self.storage = storage
        self.writers: dict[Path, SummaryWriter] = {}

    def log_dir(self, row: dict[str, Any]) -> Path:
        return self.storage

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None
    ) -> None:
        if not metrics:
            return
        row = metrics[0]
        folder = self.log_dir(row)
        folder.mkdir(parents=True, exist_ok=True)
        writer = self.writers.get(folder) or SummaryWriter(str(folder / "tensorboard"))
        self.writers[folder] = writer
        with open(folder / HISTORY_FILE, "a") as fh:  # one short line per report: append is safe
            fh.write(json.dumps(row, default=float) + "\n")
        self.log(row, writer)
        writer.flush()

    def log(self, row: dict[str, Any], writer: SummaryWriter) -> None:
        raise NotImplementedError


def reporter(storage: RunStorage) -> Callable[[dict[str, Any], Path | None], None]:
    """The ``report`` a library loop calls in a worker: files of the run that a metric names (a
    validation grid) are pushed first, so the driver can read them wherever this worker runs."""

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        for value in metrics.values():
            if isinstance(value, str) and storage.remote and Path(value).is_relative_to(storage.local):
                storage.push(Path(value))
        ckpt = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    return report


@contextlib.contextmanager
def worker_session(
    config: dict[str, Any],
) -> Iterator[tuple[PipelineConfig, WorkerContext, RunStorage, Path | None]]:
    """Inside a Ray Train worker: (config, worker context, this node's view of the run directory,
    checkpoint folder to resume from or None)."""
    quiet_train_report_log()
    quiet_user_errors(_TRAIN_ERROR_LOGGER)
    cfg = from_dict(PipelineConfig, config["cfg"])
    ctx = ray.train.get_context()
    device = get_device()
    if device.type == "cpu":
        # Workers share the node's cores; oversubscribed intra-op threads slow every worker down.
        torch.set_num_threads(max(1, config["cpus_per_worker"]))
    worker = WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), device, prepare_model)
    latest = ray.train.get_checkpoint()
    try:
        with latest.as_directory() if latest else contextlib.nullcontext() as resume_dir:
            yield cfg, worker, RunStorage.open(cfg.run_dir), Path(resume_dir) if resume_dir else None
    except LeafgenError as exc:
        raise mark(exc, f"Ray Train worker of rank {worker.rank}") from None


class _Trainer(TorchTrainer):
    """A TorchTrainer whose controller does not restart workers that failed with a LeafgenError.

    Ray 2.60 builds its default failure policy inside ``fit()`` and hands it to the controller through
    this method; it takes no policy from users.
    """

    def _initialize_and_run_controller(self, **kwargs: Any):
        kwargs["failure_policy"] = UserErrorsFailFast(self.run_config.failure_config)
        return super()._initialize_and_run_controller(**kwargs)


def fit_trainer(trainer: TorchTrainer) -> ray.train.Result:
    """``trainer.fit()``, Ray's known noise kept out of the output; a LeafgenError raised in a worker is
    raised here as itself (see :mod:`leafgen.distributed.errors`), anything else as Ray reports it."""
    try:
        with ray_noise_filtered():
            return trainer.fit()
    except Exception as exc:  # Ray's wrapping of what a worker raised
        error = user_error(exc)
        if error is None:
            raise
        raise error from None


def build_trainer(
    loop: Callable[[dict[str, Any]], None],
    cfg: PipelineConfig,
    loop_config: dict[str, Any],
    num_workers: int,
    storage: Path,
    name: str,
    checkpoint_config: CheckpointConfig,
    max_failures: int,
    callbacks: Sequence[UserCallback],
    run: RunStorage,
) -> TorchTrainer:
    """A TorchTrainer of ``num_workers`` DDP workers running ``loop`` with ``cfg`` and ``loop_config``.
    Ray keeps its checkpoints at ``storage``, on the run's object storage when it has one; the driver's
    callbacks write beside them in this node's mirror. ``run`` is the run's storage (``RunStorage.open``)."""
    resources = job_resources(cfg.ray)
    storage.mkdir(parents=True, exist_ok=True)
    storage_path, storage_fs = run.ray_storage(storage)
    use_gpu = resources.get("GPU", 0) >= 1
    cpus_per_worker = 1 if use_gpu else max(1, int(resources.get("CPU", 1)) // num_workers)
    return _Trainer(
        loop,
        train_loop_config={"cfg": asdict(cfg), "cpus_per_worker": cpus_per_worker, **loop_config},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker=None if use_gpu else {"CPU": cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=checkpoint_config,
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def prune_checkpoints(storage: Path, run: RunStorage) -> None:
    """Delete the checkpoints of the finished training kept at ``storage``, and Ray's list of them (a
    later fit there then starts afresh instead of restoring what is gone), here and where the run lives.
    Called once the training's output is exported: optimiser state is most of a run directory's bytes."""
    for path in sorted(storage.rglob(f"{RAY_CHECKPOINT_PREFIX}*")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name == RAY_CHECKPOINT_SNAPSHOT:
            path.unlink()
    run.delete_ray_checkpoints(storage)
