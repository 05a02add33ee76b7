"""Stage outputs shared between run directories, addressed by their stage key.

A Tune search runs many small pipelines that differ in a few settings. Through a :class:`StageStore`,
each run directory's ``<stage>`` entry is a link to ``<store>/<stage>/<key>``, so runs whose stage keys
match (the same config parts and the same upstream outputs) share one output: trials with the same
DreamBooth settings fine-tune once and generate once, whatever their synthetic ratio. A file lock per key
makes concurrent runs wait for each other instead of doing the same work twice; the lock is the
operating system's (``flock``), so a killed holder releases it and the next run resumes from the stage's
own checkpoints. Every run directory stays complete and readable on its own.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from leafgen.config import PipelineConfig
from leafgen.errors import StageError
from leafgen.stages import RunDir, Stage, StageResult, run_stage, stage_key

RUNS_LOG = "runs.jsonl"
SHARED_ENTRIES = ("cache",)
"""Run-level folders (not stages) shared as a whole: the decoded-image cache is keyed by content."""


class StageStore:
    """A folder of stage outputs, ``<root>/<stage>/<key>/``, linked into run directories."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def attach(self, run: RunDir) -> None:
        """Link the run-level shared folders into ``run``."""
        run.root.mkdir(parents=True, exist_ok=True)
        for name in SHARED_ENTRIES:
            (self.root / name).mkdir(parents=True, exist_ok=True)
            _link(run.root / name, self.root / name)

    def run(
        self,
        stage: Stage,
        cfg: PipelineConfig,
        run: RunDir,
        force: bool = False,
        log: Callable[[str], None] = print,
    ) -> StageResult:
        """Run ``stage`` for ``run`` in the store: skipped when any run already completed the same key
        (and its files are intact), waited for while another run holds it."""
        key = stage_key(stage, cfg, run)
        target = self.path(stage.name, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target.parent / f"{key}.lock")):
            target.mkdir(exist_ok=True)
            _link(run.stage_dir(stage.name), target)
            result = run_stage(stage, cfg, run, force=force, key=key, log=log)
            if not result.skipped:
                # Which run computed which key, one short line each: the audit of what was shared.
                with open(target.parent / RUNS_LOG, "a") as fh:
                    fh.write(json.dumps({"key": key, "run": str(run.root), "seconds": result.seconds}) + "\n")
            return result

    def computed(self, stage: str) -> list[dict]:
        """Every time ``stage`` actually ran in the store (not skipped), oldest first."""
        path = self.root / stage / RUNS_LOG
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target``, replacing an older link atomically (rename over it)."""
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
    elif link.exists():
        raise StageError(
            f"{link} is a folder of its own, not a link into the stage store {target.parent.parent}; "
            "use another run_dir for the search or remove it"
        )
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}")
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)
