"""Several classifier trainings one after the other in one process group, without Ray.

A stage that trains several classifiers (an arm per seed) hands them to Ray Train as one fit, so its worker
group starts once per stage instead of once per training (about 12 s each on two cores). Each training is
a :class:`RunSpec`; the group trains every spec that has not finished, in order. Per run:

- every epoch's report is tagged with the run's id, and its checkpoint carries the id (``run.json``), so a
  restarted group resumes exactly the run it was in and skips the finished ones (``train_done.json``);
- rank 0 keeps the best epoch by the run's ``checkpoint_metric`` in ``<out>/best`` (model and metadata,
  no optimiser state), replaced atomically, so the driver exports it without Ray's checkpoint ranking
  (which would rank the epochs of every run of the fit together).

Each run is seeded from its own config alone (:func:`leafgen.classifier.training.fit`), so it trains the
same in a group of one or of many.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leafgen import atomic
from leafgen.classifier.sampling import SyntheticRows, SyntheticUse
from leafgen.classifier.training import META_FILE, MODEL_FILE, SplitArrays, fit
from leafgen.config import ClassifierConfig
from leafgen.worker import ReportFn, WorkerContext

BEST_DIR = "best"
DONE_FILE = "train_done.json"
RUN_FILE = "run.json"
POINTER_FILE = "best.json"


@dataclass(frozen=True)
class RunSpec:
    """One training of a group; plain fields, so it crosses into Ray as a dict."""

    run_id: str
    """Unique within the group, e.g. ``balanced/seed_0``; tags reports and checkpoints."""
    out: str
    """Folder of the run (absolute): ``best/``, ``train_done.json`` and, after export, ``model/``."""
    classifier: dict[str, Any]
    """The run's ``ClassifierConfig`` as a dict."""
    arrays: dict[str, str]
    """.npy paths: train/val images and labels; for a train set with synthetic rows also
    ``train_synthetic`` (bool) and ``train_sources`` (int)."""
    target_class: str
    synthetic: dict[str, Any] | None = None
    """``SyntheticUse`` as a dict, for an arm that trains on synthetic images."""

    @property
    def config(self) -> ClassifierConfig:
        return ClassifierConfig(**self.classifier)

    def done(self) -> bool:
        return (Path(self.out) / DONE_FILE).is_file()


def spec_for(
    run_id: str,
    out: Path,
    cfg: ClassifierConfig,
    arrays: dict[str, Path],
    target_class: str,
    synthetic: SyntheticUse | None = None,
) -> RunSpec:
    return RunSpec(
        run_id,
        str(Path(out).resolve()),
        asdict(cfg),
        {k: str(Path(v).resolve()) for k, v in arrays.items()},
        target_class,
        asdict(synthetic) if synthetic is not None else None,
    )


def load_splits(spec: RunSpec, localize: Callable[[str], Path] = Path) -> tuple[SplitArrays, SplitArrays]:
    """The run's train and val arrays (images memory-mapped, so the ranks of a node share them)."""
    a = {k: localize(v) for k, v in spec.arrays.items()}
    rows = None
    if "train_synthetic" in a:
        rows = SyntheticRows(np.load(a["train_synthetic"]), np.load(a["train_sources"]))
    train = SplitArrays(np.load(a["train_images"], mmap_mode="r"), np.load(a["train_labels"]), rows)
    val = SplitArrays(np.load(a["val_images"], mmap_mode="r"), np.load(a["val_labels"]))
    return train, val


class BestKeeper:
    """Rank 0's copy of a run's best epoch so far: ``<folder>/epoch_<n>/`` (model and metadata) and
    ``<folder>/best.json`` naming it, written last, so a kill at any moment leaves the pointer on a
    complete copy, which a resumed run keeps competing against."""

    def __init__(self, folder: Path, metric: str, persist: Callable[[Path], None]):
        self.folder, self.metric, self.persist = folder, metric, persist
        current = best_copy(folder)
        self.best = (
            _score(json.loads((current / META_FILE).read_text())["metrics"], metric) if current else -math.inf
        )

    def offer(self, metrics: dict[str, Any], checkpoint: Path) -> None:
        score = _score(metrics, self.metric)
        if score < self.best:
            return  # ties go to the later epoch: it has trained longer for the same validation score
        self.best = score
        old = best_copy(self.folder)
        copy = self.folder / f"epoch_{int(metrics['epoch']):04d}"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir(parents=True)
        for name in (MODEL_FILE, META_FILE):
            shutil.copy2(checkpoint / name, copy / name)
        self.persist(copy)
        atomic.write_json(self.folder / POINTER_FILE, {"copy": copy.name, "score": score})
        self.persist(self.folder / POINTER_FILE)
        if old is not None and old != copy:
            shutil.rmtree(old, ignore_errors=True)


def marker_history(out: Path) -> list[dict[str, Any]]:
    """Every epoch's report of a finished run as rank 0 recorded it (its done marker); [] before the end."""
    marker = out / DONE_FILE
    return json.loads(marker.read_text()).get("history", []) if marker.is_file() else []


def best_copy(folder: Path) -> Path | None:
    """The folder of a run's best epoch, as its pointer names it; None before the first epoch."""
    pointer = folder / POINTER_FILE
    return folder / json.loads(pointer.read_text())["copy"] if pointer.is_file() else None


def _score(metrics: dict[str, Any], metric: str) -> float:
    value = metrics.get(metric, math.nan)
    return -math.inf if value is None or math.isnan(value) else float(value)


def train_runs(
    specs: Sequence[RunSpec],
    report: ReportFn,
    worker: WorkerContext | None = None,
    resume_from: Path | None = None,
    amp_dtype: torch.dtype | None = None,
    localize: Callable[[str], Path] = Path,
    persist: Callable[[Path], None] = lambda path: None,
) -> None:
    """Train every unfinished spec in order (see the module docstring). ``resume_from``: the group's latest
    checkpoint; ``localize`` maps a run path onto this node (pulling it when the run lives on object
    storage) and ``persist`` pushes what rank 0 writes (both no-ops on a shared disk)."""
    worker = worker or WorkerContext()
    resumed = json.loads((resume_from / RUN_FILE).read_text()) if resume_from else {}
    for spec in specs:
        out = localize(spec.out)  # this node's copy of the run's folder (pulled when the run is remote)
        if (out / DONE_FILE).is_file():
            continue
        cfg = spec.config
        keeper = BestKeeper(out / BEST_DIR, cfg.checkpoint_metric, persist) if worker.rank == 0 else None
        own = resumed.get("run_id") == spec.run_id
        # Rank 0's own record of the run's epochs, carried by every checkpoint and the done marker: the
        # driver logs a report only after the worker made it, so a driver killed in between would
        # otherwise find the run done with its last epochs missing from its history.
        history: list[dict[str, Any]] = list(resumed.get("history", [])) if own else []

        def tagged(
            metrics: dict[str, Any], checkpoint: Path | None, spec=spec, keeper=keeper, history=history
        ):
            metrics = {**metrics, "run": spec.run_id}
            if checkpoint is not None:
                history.append(metrics)
                (checkpoint / RUN_FILE).write_text(
                    json.dumps({"run_id": spec.run_id, "history": history}, default=float)
                )
                if keeper is not None:
                    keeper.offer(metrics, checkpoint)
            report(metrics, checkpoint)

        train, val = load_splits(spec, localize)
        fit(
            cfg,
            train,
            val,
            tagged,
            target_class=spec.target_class,
            worker=worker,
            resume_from=resume_from if own else None,
            amp_dtype=amp_dtype,
            synthetic=SyntheticUse(**spec.synthetic) if spec.synthetic else None,
        )
        if worker.rank == 0:
            atomic.write_json(
                out / DONE_FILE, {"run_id": spec.run_id, "epochs": cfg.epochs, "history": history}
            )
            persist(out / DONE_FILE)
