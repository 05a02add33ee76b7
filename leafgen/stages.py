"""The stage contract: every pipeline step writes under ``run_dir/<stage>/`` and is skipped when done.

A stage finishes by writing ``_complete.json`` holding a key: the hash of the config parts it depends on,
of its upstream stages' keys and of any input fingerprint (for example a user CSV's checksum). A rerun
whose key matches skips the stage; any other key redoes it. While a stage runs, ``_started.json`` records
the key it is working towards: a rerun with the same key keeps the stage directory so the stage can resume
from its own checkpoints, while a different key clears it, since its files belong to other settings.

The marker also lists every file the stage wrote (:mod:`leafgen.integrity.outputs`). A matching key skips
the stage only while those files are all there with their recorded sizes; otherwise the stage is redone,
and the log names the file. A downstream key includes each upstream marker's outputs digest (when the
marker records one), so a redone upstream whose files come out byte-identical leaves its dependants up to
date, and one whose files differ redoes them. Markers written before files were listed have no digest:
they give exactly the keys they gave before, and count as done.
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
from leafgen.errors import LeafgenError, StageError
from leafgen.integrity import outputs as recorded
from leafgen.run_storage import LAST as COMPLETE  # object storage uploads a stage's marker last
from leafgen.run_storage import RunStorage

STARTED = "_started.json"
# Settings that decide what is kept of a stage's working files, never what its outputs are: left out of
# stage keys, so changing them redoes nothing (and runs from before they existed keep their keys).
UNKEYED = ("classifier.keep_checkpoints_after_export", "dreambooth.keep_checkpoints_after_export")


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

    def input_path(self, stage: str, name: str) -> Path:
        """The path upstream ``stage`` recorded as its output ``name`` (relative to the run), once every
        file it names (a file, or a folder's files) matches the sizes and hashes in the upstream marker.
        A damaged one is an error naming the file and the command that repairs the run."""
        rel = Path(str(self.inputs[stage][name]))
        path = self.run.root / rel
        damaged = []
        if rel.parts[:1] == (stage,):  # a file of the stage's folder (not a user folder it points at)
            marker = self.run.marker(stage) or {}
            under = rel.relative_to(stage).as_posix()
            damaged = recorded.check(
                self.run, stage, marker, content=True, under=under, where_run_lives=False
            )
        if damaged or not path.exists():
            why = str(damaged[0]) if damaged else f"{rel} is missing"
            raise damaged_input(self.run, self.dir.name, stage, why)
        return path


def damaged_input(run: RunDir, reader: str, stage: str, why: str) -> StageError:
    """The error of a stage that finds what an upstream stage wrote damaged: the file, and the repair."""
    return StageError(
        f"{why}: stage {reader!r} cannot use what stage {stage!r} wrote; repair the run with: "
        f"leafgen verify --fix {run.storage.uri or run.root}"
    )


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
    upstream, digests = {}, {}
    for name in stage.inputs_for(cfg):
        marker = run.marker(name)
        if marker is None:
            raise StageError(
                f"stage {stage.name!r} needs stage {name!r}, which has not completed in {run.root}"
            )
        upstream[name] = marker["key"]
        if recorded.digest(marker) is not None:
            digests[name] = recorded.digest(marker)
    material = {
        "stage": stage.name,
        "version": stage.version,
        "config": {key: _keyed(cfg, key) for key in stage.config_keys},
        "inputs": upstream,
        "fingerprint": stage.fingerprint_inputs(cfg) if stage.fingerprint_inputs else None,
    }
    if digests:  # only then: markers of older runs keep giving the keys they gave
        material["outputs"] = digests
    return fingerprint(material)


def _keyed(cfg: PipelineConfig, key: str) -> Any:
    """The value at ``key`` as stage keys see it: without the ``UNKEYED`` settings below it."""
    value = select(cfg, key)
    for dotted in UNKEYED:
        if dotted.startswith(key + "."):
            *parents, leaf = dotted[len(key) + 1 :].split(".")
            node = value
            for part in parents:
                node = node[part]
            node.pop(leaf, None)
    return value


def run_stage(
    stage: Stage,
    cfg: PipelineConfig,
    run: RunDir,
    force: bool = False,
    key: str | None = None,
    log: Callable[[str], None] = print,
) -> StageResult:
    """Run ``stage`` unless its completion marker matches and its files are intact; returns what it
    produced. ``key``: the stage key when the caller already computed it (it may hash outside inputs, so
    it is computed once). ``log`` hears why a complete stage is redone."""
    key = key or stage_key(stage, cfg, run)
    directory = run.stage_dir(stage.name)
    if directory.is_symlink() and directory.resolve().name != key:
        # A link into a stage store (leafgen.stage_store) that holds another key's outputs: never write
        # through it, the store entry belongs to other runs.
        directory.unlink()
    marker = run.marker(stage.name)
    storage = run.storage
    if marker is not None and marker["key"] == key and not force:
        damaged = recorded.check(run, stage.name, marker)
        if not damaged:
            storage.pull(directory)  # a fresh mirror gets the stage's files for the stages after it
            return StageResult(stage.name, True, 0.0, marker["outputs"])
        more = f" (and {len(damaged) - 1} more file(s))" if len(damaged) > 1 else ""
        log(f"[{stage.name}] redoing: {damaged[0]}{more}")

    if stage.check is not None:
        stage.check(cfg)
    for name in stage.inputs_for(cfg):  # sizes only, before anything is cleared; readers check hashes
        damaged = recorded.check(run, name, run.marker(name) or {})
        if damaged:
            raise damaged_input(run, stage.name, name, str(damaged[0]))
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
    try:
        outputs = stage.fn(cfg, StageContext(run=run, dir=directory, inputs=inputs)) or {}
    except LeafgenError as exc:
        exc.stage = getattr(exc, "stage", None) or stage.name  # the CLI names the stage that failed
        raise
    seconds = time.perf_counter() - t0
    storage.pull(directory)  # files that workers on other nodes wrote and pushed
    marker = {"key": key, "stage": stage.name, "seconds": seconds, "outputs": outputs}
    atomic.write_json(directory / COMPLETE, {**marker, **recorded.record(directory)})
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
