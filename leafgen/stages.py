"""The stage contract: every pipeline step writes under ``run_dir/<stage>/`` and is skipped when done.

A stage finishes by writing ``_complete.json`` holding a key: the hash of the config parts it depends on,
of its upstream stages' keys and of any input fingerprint (for example a user CSV's checksum). A rerun
whose key matches skips the stage; any other key redoes it. While a stage runs, ``_started.json`` records
the key it is working towards: a rerun with the same key keeps the stage directory so the stage can resume
from its own checkpoints, while a different key clears it, since its files belong to other settings.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leafgen import atomic, provenance
from leafgen.config import PipelineConfig, dump_yaml, fingerprint, select
from leafgen.errors import StageError
from leafgen.run_storage import LAST as COMPLETE  # object storage uploads a stage's marker last
from leafgen.run_storage import RunStorage

STARTED = "_started.json"


@dataclass(frozen=True)
class Stage:
    """One pipeline step: ``fn(cfg, ctx)`` writes into ``ctx.dir`` and returns JSON-able outputs."""

    name: str
    fn: Callable[[PipelineConfig, StageContext], dict[str, Any] | None]
    config_keys: tuple[str, ...]
    """Dotted config keys whose values the outputs depend on."""
    inputs: tuple[str, ...] = ()
    """Upstream stages that must be complete first."""
    inputs_when: Callable[[PipelineConfig], tuple[str, ...]] | None = None
    """Upstream stages only some settings read (DreamBooth's clustering reads the classifier): with those
    settings they count as ``inputs``, key included; with others the stage neither needs nor is keyed on
    them."""
    fingerprint_inputs: Callable[[PipelineConfig], Any] | None = None
    """Extra key material computed before running, e.g. checksums of files outside the run directory."""
    version: int = 1
    """Bump when the stage's code changes what it writes, so old outputs are redone."""
    check: Callable[[PipelineConfig], None] | None = None
    """Refuses a config the stage cannot run (raises ConfigError) before any old output is cleared."""
    summary: Callable[[dict[str, Any]], str] | None = None
    """One line about the stage's outputs for the pipeline's log."""
    incremental: bool = False
    """The stage keeps its folder when its key changes and reconciles it itself: each item it makes is
    keyed on its own settings (the arms: one classifier per arm and seed), so a changed key redoes only
    the items whose settings changed."""

    def inputs_for(self, cfg: PipelineConfig) -> tuple[str, ...]:
        """The upstream stages this config needs: ``inputs`` plus what ``inputs_when`` names."""
        return self.inputs + (self.inputs_when(cfg) if self.inputs_when else ())


@dataclass
class StageContext:
    run: RunDir
    dir: Path
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Outputs of each upstream stage, as recorded in its completion marker."""


@dataclass(frozen=True)
class StageResult:
    name: str
    skipped: bool
    seconds: float
    outputs: dict[str, Any]


class RunDir:
    """A run directory: one folder per stage, plus ``config.yaml`` and ``provenance.json``. When the run
    lives on object storage, ``root`` is this node's mirror of it (see :mod:`leafgen.run_storage`)."""

    def __init__(self, root: str | Path):
        self.storage = RunStorage.open(str(root))
        # Absolute, since Ray workers run in other working directories.
        self.root = self.storage.local

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def marker(self, name: str) -> dict[str, Any] | None:
        path = self.stage_dir(name) / COMPLETE
        if self.storage.remote:
            # The run's copy decides: a marker only this mirror holds was never pushed, so is not done.
            if not self.storage.exists(path):
                path.unlink(missing_ok=True)
            self.storage.pull(path)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # markers are written atomically; unreadable means foreign, so redo

    def start(self, cfg: PipelineConfig, argv: list[str] | None = None) -> None:
        """Record the resolved config and the provenance of this invocation."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.root / "config.yaml", dump_yaml(cfg))
        atomic.write_json(self.root / "provenance.json", provenance.collect(argv))
        for name in ("config.yaml", "provenance.json"):
            self.storage.push(self.root / name)


def stage_key(stage: Stage, cfg: PipelineConfig, run: RunDir) -> str:
    upstream = {}
    for name in stage.inputs_for(cfg):
        marker = run.marker(name)
        if marker is None:
            raise StageError(
                f"stage {stage.name!r} needs stage {name!r}, which has not completed in {run.root}"
            )
        upstream[name] = marker["key"]
    return fingerprint(
        {
            "stage": stage.name,
            "version": stage.version,
            "config": {key: select(cfg, key) for key in stage.config_keys},
            "inputs": upstream,
            "fingerprint": stage.fingerprint_inputs(cfg) if stage.fingerprint_inputs else None,
        }
    )


def run_stage(
    stage: Stage, cfg: PipelineConfig, run: RunDir, force: bool = False, key: str | None = None
) -> StageResult:
    """Run ``stage`` unless its completion marker matches; returns what it produced. ``key``: the stage
    key when the caller already computed it (it may hash outside inputs, so it is computed once)."""
    key = key or stage_key(stage, cfg, run)
    directory = run.stage_dir(stage.name)
    if directory.is_symlink() and directory.resolve().name != key:
        # A link into a stage store (leafgen.stage_store) that holds another key's outputs: never write
        # through it, the store entry belongs to other runs.
        directory.unlink()
    marker = run.marker(stage.name)
    storage = run.storage
    if marker is not None and marker["key"] == key and not force:
        storage.pull(directory)  # a fresh mirror gets the stage's files for the stages after it
        return StageResult(stage.name, True, 0.0, marker["outputs"])

    if stage.check is not None:
        stage.check(cfg)
    started = directory / STARTED
    storage.pull(started)
    resumable = started.is_file() and json.loads(started.read_text()).get("key") == key and not force
    keep = resumable or (stage.incremental and not force)
    if directory.exists() and not keep:
        _empty(directory)
    if keep:
        storage.pull(directory)  # what the interrupted attempt kept: checkpoints, finished images
    else:
        storage.delete(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic.write_json(started, {"key": key})
    storage.push(started)
    for name in stage.inputs_for(cfg):
        storage.pull(run.stage_dir(name))

    inputs = {name: run.marker(name)["outputs"] for name in stage.inputs_for(cfg)}  # type: ignore[index]
    t0 = time.perf_counter()
    outputs = stage.fn(cfg, StageContext(run=run, dir=directory, inputs=inputs)) or {}
    seconds = time.perf_counter() - t0
    storage.pull(directory)  # files that workers on other nodes wrote and pushed
    atomic.write_json(
        directory / COMPLETE, {"key": key, "stage": stage.name, "seconds": seconds, "outputs": outputs}
    )
    started.unlink(missing_ok=True)
    storage.push(directory, exact=True)
    return StageResult(stage.name, False, seconds, outputs)


def _empty(directory: Path) -> None:
    """Remove what ``directory`` holds but keep it: it may be a link into a shared stage store."""
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
