"""``leafgen tune``: search DreamBooth and mixing settings on validation, then test the best once.

Layout of ``run_dir`` for a search:

- ``stages/<stage>/<key>/``: the stage store every trial's outputs live in (``leafgen.stage_store``);
- ``trials/<trial_id>/``: each trial's run directory, its stage folders linking into the store;
- ``tune/<tune.name>/``: the Tune experiment (unless ``tune.storage_path``), with TensorBoard logs per trial;
- ``results.csv``, ``best_config.yaml`` and ``report/`` (table, plots, the best config's test results);
- ``best/``: the best configuration's whole pipeline (all arms over ``eval.seeds`` on the held-out test
  split), sharing the trials' stage outputs.

The same command resumes an interrupted search (``Tuner.restore``); settings that would change the search
itself must not change in between, so they are fingerprinted in ``search.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from leafgen import atomic
from leafgen.config import PipelineConfig, fingerprint, to_dict
from leafgen.errors import ConfigError
from leafgen.integrity.preflight import preflight
from leafgen.pipeline import run_pipeline
from leafgen.run_storage import is_uri
from leafgen.stage_store import StageStore
from leafgen.stages import RunDir, Stage
from leafgen.tuning.report import write_search_report
from leafgen.tuning.results import best_config, best_trial, table, write_best_config, write_csv
from leafgen.tuning.space import Param, parse_space
from leafgen.tuning.trial import TRIAL_STAGES

SEARCH_FILE = "search.json"


@dataclass(frozen=True)
class SearchOutcome:
    best_config: Path
    results_csv: Path
    report: Path
    best_run: Path


def shared_prefix(stages: Sequence[Stage], params: Sequence[Param]) -> list[Stage]:
    """The leading stages no searched key reaches (directly or through an input): the same in every trial."""

    def touched(stage: Stage) -> bool:
        return any(
            p.key == k or p.key.startswith(k + ".") or k.startswith(p.key + ".")
            for p in params
            for k in stage.config_keys
        )

    prefix: list[Stage] = []
    for stage in stages:
        if touched(stage) or any(i not in {s.name for s in prefix} for i in stage.inputs):
            break
        prefix.append(stage)
    return prefix


def _check_same_search(cfg: PipelineConfig, root: Path) -> None:
    # Everything but the Ray section and the concurrency, which a resumed search may change.
    settings = to_dict(replace(cfg, tune=replace(cfg.tune, max_concurrent_trials=None)))
    settings.pop("ray")
    key = fingerprint(settings)
    path = root / SEARCH_FILE
    if path.is_file() and json.loads(path.read_text())["key"] != key:
        raise ConfigError(
            f"{root} holds a search started with other settings; resume it with the same config, or give "
            "this one its own run_dir (or tune.name and run_dir)"
        )
    root.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, {"key": key})


def run_search(
    cfg: PipelineConfig, argv: list[str] | None = None, log: Callable[[str], None] = print
) -> SearchOutcome:
    from leafgen.distributed.tune import run_tuner

    params = parse_space(cfg, TRIAL_STAGES)
    if is_uri(cfg.run_dir):
        raise ConfigError(
            f"run_dir {cfg.run_dir!r}: a search shares stage outputs between trials through file locks and "
            "links, which object storage lacks; give it a path every node mounts (NFS, EFS, Filestore) "
            "and put tune.storage_path on object storage if you like"
        )
    preflight(cfg, TRIAL_STAGES)  # every trial's checks and outside inputs, before the shared stages run
    root = RunDir(cfg.run_dir).root
    _check_same_search(cfg, root)
    store = StageStore(root / "stages")
    prefix = shared_prefix(TRIAL_STAGES, params)
    log(f"[tune] shared by every trial, run once: {', '.join(s.name for s in prefix) or 'nothing'}")
    run_pipeline(replace(cfg, run_dir=str(root / "shared")), stages=prefix, store=store, log=log, argv=argv)

    storage = cfg.tune.storage_path or str(root / "tune")
    rows = run_tuner(cfg, params, root, storage)
    log(f"[tune] every trial's curves: tensorboard --logdir {storage.rstrip('/')}/{cfg.tune.name}")
    best = best_trial(rows, cfg.tune)
    header, ranked = table(rows, params, cfg.tune)
    results_csv = write_csv(header, ranked, root / "results.csv")
    chosen = best_config(cfg, best, str(root / "best"))
    best_yaml = write_best_config(chosen, best, root / "best_config.yaml")
    values = ", ".join(f"{k}={v!r}" for k, v in best.values.items())
    log(
        f"[tune] best trial {best.trial_id}: {values} ({cfg.tune.metric} {best.metrics[cfg.tune.metric]:.3f})"
    )
    log(f"[tune] testing the best configuration over seeds {list(cfg.eval.seeds)} on the held-out split")
    run_pipeline(chosen, store=store, log=log, argv=argv)
    report = write_search_report(cfg, params, rows, header, ranked, best, root)
    return SearchOutcome(best_yaml, results_csv, report, root / "best")
