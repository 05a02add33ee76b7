"""``leafgen verify RUN_DIR [--fix]``: every complete stage's files against the hashes its marker recorded.

Each stage of the run gets one row: how many files its marker lists, how many are intact, missing or
changed, and a status:

- ``ok``: every listed file has its recorded size and hash;
- ``damaged``: some are missing or changed (each one is named below the table);
- ``broken marker``: ``_complete.json`` exists but cannot be read, so the stage counts as not done;
- ``unverified``: a marker written before markers listed their files; the stage counts as done;
- ``incomplete``: the stage started and did not finish (the next run resumes it); not an error.

The exit code is 1 when a stage is damaged or has a broken marker, else 0. For an object-store run
(``s3://...``) the bucket's copies are checked, not this machine's mirror.

``--fix`` reruns the run's own pipeline (its ``config.yaml``) over the stages it had reached, redoing the
damaged stages (a changed file of the same size included, which a rerun's size check alone would pass)
and, by the stage contract, their dependants when the redone files differ; the rest is skipped. Then the
run is verified again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from leafgen.errors import LeafgenError
from leafgen.integrity.outputs import FILES, STARTED, Problem, check
from leafgen.run_storage import LAST
from leafgen.stages import RunDir, Stage, stage_key


@dataclass
class StageStatus:
    stage: str
    status: str
    """ok, damaged, broken marker, unverified or incomplete."""
    files: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def wrong(self) -> bool:
        return self.status in ("damaged", "broken marker")

    def count(self, kind: str) -> int:
        return sum(p.kind == kind for p in self.problems)


def _stage_lists() -> tuple[Sequence[Stage], Sequence[Stage], Sequence[Stage]]:
    from leafgen.pipeline import GENERATION_STAGES, STAGES
    from leafgen.tuning.trial import TRIAL_STAGES

    return STAGES, GENERATION_STAGES, TRIAL_STAGES


def _exists(run: RunDir, path: Path) -> bool:
    return run.storage.exists(path) if run.storage.remote else path.is_file()


def stage_folders(run: RunDir) -> list[str]:
    """The run's top-level folders, where the run lives (found without importing the pipeline)."""
    if run.storage.remote:
        return run.storage.folders(run.root)
    return sorted(p.name for p in run.root.iterdir() if p.is_dir()) if run.root.is_dir() else []


def open_run(run_dir: str) -> RunDir:
    """The run at ``run_dir``; a folder leafgen did not write (no ``config.yaml``) is an error."""
    run = RunDir(run_dir)
    if not _exists(run, run.root / "config.yaml"):
        raise LeafgenError(f"{run_dir}: not a run directory (no config.yaml); give the run_dir of a run")
    return run


def verify_run(run: RunDir, progress: bool = True) -> list[StageStatus]:
    """One status per stage folder the run holds (complete, broken or started), in the order the stages
    completed (their markers' times; the others last)."""
    found: list[tuple[float, StageStatus, dict | None]] = []
    for name in stage_folders(run):
        marker = run.marker(name)
        if marker is not None:
            status = StageStatus(name, "unverified" if FILES not in marker else "ok")
            found.append(((run.stage_dir(name) / LAST).stat().st_mtime, status, marker))
        elif _exists(run, run.stage_dir(name) / LAST):
            found.append((float("inf"), StageStatus(name, "broken marker"), None))
        elif _exists(run, run.stage_dir(name) / STARTED):
            found.append((float("inf"), StageStatus(name, "incomplete"), None))
    found.sort(key=lambda item: item[0])
    total = sum(len(m.get(FILES, {})) for _, _, m in found if m)
    with tqdm(total=total, desc="verifying", unit="file", disable=not progress or None) as bar:
        for _, status, marker in found:
            if marker is None or FILES not in marker:
                continue
            status.files = len(marker[FILES])
            status.problems = check(run, status.stage, marker, content=True, progress=bar.update)
            status.status = "damaged" if status.problems else "ok"
    return [status for _, status, _ in found]


def format_table(statuses: Sequence[StageStatus]) -> str:
    header = f"{'stage':<14} {'files':>7} {'ok':>7} {'missing':>8} {'changed':>8}  status"
    lines = [header, "-" * len(header)]
    for s in statuses:
        ok = s.files - len(s.problems) if s.status in ("ok", "damaged") else "-"
        counts = (s.count("missing"), s.count("changed")) if s.files else ("-", "-")
        files = s.files if s.files else "-"
        lines.append(f"{s.stage:<14} {files:>7} {ok:>7} {counts[0]:>8} {counts[1]:>8}  {s.status}")
    for s in statuses:
        lines += [f"  {p}" for p in s.problems]
    return "\n".join(lines)


def _pipeline_of(run: RunDir, cfg, held: set[str]) -> Sequence[Stage]:
    """The stage list that wrote the run: a Tune trial's, or the pipeline's unless its ``generate``
    marker holds the key of ``leafgen generate``'s variant (images from the base model)."""
    stages, generation, trial = _stage_lists()
    if "trial_fit" in held:
        return trial
    marker = run.marker("generate")
    if marker is not None:
        for candidate in (stages, generation):
            try:
                if stage_key(next(s for s in candidate if s.name == "generate"), cfg, run) == marker["key"]:
                    return candidate
            except LeafgenError:  # an upstream marker is broken: the pipeline's list then
                break
    return stages


def fix_run(run_dir: str, overrides: Sequence[str] = (), log: Callable[[str], None] = print) -> None:
    """Rerun the run's pipeline, from its own ``config.yaml``, over the stages it had reached."""
    from leafgen.config import load_config
    from leafgen.pipeline import run_pipeline

    run = open_run(run_dir)
    config = run.root / "config.yaml"
    run.storage.pull(config)
    cfg = load_config(config, [*overrides, f"run_dir={run_dir}"])
    statuses = verify_run(run)
    held = {s.stage for s in statuses if s.status != "incomplete"}
    stages = _pipeline_of(run, cfg, held)
    names = [s.name for s in stages]
    reached = max((names.index(n) for n in held if n in names), default=-1)
    if reached < 0:
        raise LeafgenError(f"{run_dir}: no stage has completed yet; run the pipeline instead")
    # A file of the same size with other content passes a rerun's size check: such stages are forced.
    damaged = {s.stage for s in statuses if s.status == "damaged"}
    for s in statuses:
        if s.stage in damaged:
            more = f" (and {len(s.problems) - 1} more file(s))" if len(s.problems) > 1 else ""
            log(f"[{s.stage}] redoing: {s.problems[0]}{more}")
    run_pipeline(cfg, only=names[: reached + 1], stages=stages, log=log, redo=damaged)
