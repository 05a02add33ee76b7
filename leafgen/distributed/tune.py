"""Ray Tune over the pipeline: the trainable, its resources, the searcher and scheduler, restore.

A trial runs ``leafgen.tuning.trial.TRIAL_STAGES`` in its own run directory whose stage folders link into
one stage store, so trials with the same DreamBooth settings fine-tune and generate once (a lock per
stage key). Train runs inside Tune the Ray 2.60 way: the trial function calls ``trainer.fit()`` and
``TuneReportCallback`` forwards each classifier epoch's validation metrics, which ASHA stops trials on.

Resources: a trial process reserves no CPU (only a little memory), since the trainers and generation
actors it launches ask for their own; each trial's share of the cluster (``ray.job_cpus`` /
``ray.job_gpus``) is fixed before the search and checked to hold the largest worker group, so a trial
never waits for CPUs that another part of itself holds.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from leafgen import atomic
from leafgen.config import PipelineConfig, from_dict, to_dict
from leafgen.distributed.quiet import ray_noise_filtered
from leafgen.distributed.runtime import ensure_ray
from leafgen.distributed.trial_context import trial_running
from leafgen.errors import ConfigError, LeafgenError
from leafgen.pipeline import run_pipeline
from leafgen.stage_store import StageStore
from leafgen.tuning.results import TrialRow
from leafgen.tuning.space import Param, apply_values
from leafgen.tuning.trial import TRIAL_STAGES

# What the trial process itself holds: it scores and mixes images between the trainers it launches.
TRIAL_MEMORY = 512 * 1024**2
PENDING_FILE = "pending.json"
# A trial's LeafgenError, in its run directory, for the driver to raise.
USER_ERROR_FILE = "leafgen_error.json"


def _trial(values: dict[str, Any], base: dict, store: str, trials: str, job: dict[str, int | None]) -> None:
    cfg = apply_values(from_dict(PipelineConfig, base), values)
    run_dir = Path(trials) / tune.get_context().get_trial_id()
    cfg = replace(cfg, run_dir=str(run_dir), ray=replace(cfg.ray, job_cpus=job["cpus"], job_gpus=job["gpus"]))
    (run_dir / USER_ERROR_FILE).unlink(missing_ok=True)
    with trial_running():
        try:
            results = {r.name: r for r in run_pipeline(cfg, stages=TRIAL_STAGES, store=StageStore(store))}
        except LeafgenError as exc:
            # The user's to fix, and the same on every retry: recorded for the driver, which raises it
            # once; the trial ends without a result, so Tune neither retries it nor prints its traceback.
            error = {
                "message": str(exc),
                "stage": getattr(exc, "stage", None),
                "where": getattr(exc, "where", None),
            }
            atomic.write_json(run_dir / USER_ERROR_FILE, error)
            return
    fit = results["trial_fit"].outputs
    # One last report with the whole trial's outcome (also the only one when the fit was already done).
    tune.report(
        {
            **fit["val"],
            "epochs": fit["epochs"],
            "synthetic_images": results["mix"].outputs["synthetic"],
            "gate_accepted": results["gate"].outputs["accepted"],
            "dreambooth_key": (run_dir / "dreambooth").resolve().name,
        }
    )


def plan_trials(
    cfg: PipelineConfig, params: list[Param], resources: dict[str, float]
) -> dict[str, int | None]:
    """Concurrent trials and each one's share of the cluster; refuses shares too small to run."""
    workers = max(cfg.dreambooth.num_workers, cfg.classifier.num_workers)
    for p in params:
        if p.key.endswith(".num_workers"):
            workers = max(workers, *(int(v) for v in p.values))
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    asked = cfg.tune.max_concurrent_trials
    if gpus:
        concurrent = asked or max(1, gpus // workers)
        share = {"cpus": max(1, cpus // concurrent), "gpus": gpus // concurrent}
        have, unit = share["gpus"], "GPU"
    else:
        concurrent = asked or 1  # trials on the same cores only split them
        share = {"cpus": cpus // concurrent, "gpus": None}
        have, unit = share["cpus"], "CPU"
    if have < workers:
        raise ConfigError(
            f"tune.max_concurrent_trials={concurrent} leaves each trial {have} {unit}(s) of this cluster's "
            f"{gpus if gpus else cpus}, but a trial trains with {workers} workers of one {unit} each and "
            "would wait forever; lower tune.max_concurrent_trials or dreambooth/classifier.num_workers"
        )
    return {"concurrent": concurrent, **share}


def _domain(p: Param, grid: bool):
    if p.kind == "choice":
        return tune.grid_search(list(p.args)) if grid else tune.choice(list(p.args))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[p.kind](*p.args)


def _search(cfg: PipelineConfig, concurrent: int):
    """The search algorithm, limited to ``concurrent`` live trials: the generator creates no trial that
    could not run, so none waits PENDING behind the others."""
    t = cfg.tune
    if t.search_alg == "optuna":
        return ConcurrencyLimiter(OptunaSearch(metric=t.metric, mode=t.mode, seed=t.seed), concurrent)
    return BasicVariantGenerator(max_concurrent=concurrent, random_state=t.seed)


def _scheduler(cfg: PipelineConfig, params: list[Param]):
    if cfg.tune.scheduler == "fifo":
        return FIFOScheduler()
    searched = [v for p in params if p.key == "classifier.epochs" for v in p.values]
    epochs = max(searched) if searched else cfg.classifier.epochs
    # "epoch" is the classifier's 1-based epoch; the trial's closing report has none, so ASHA ignores it
    # and never stops a trial that is only writing its summary.
    return ASHAScheduler(
        time_attr="epoch",
        max_t=epochs,
        grace_period=min(cfg.tune.grace_period, epochs),
        reduction_factor=2,
        stop_last_trials=False,
    )


class PendingWatch(tune.Callback):
    """Records how long each trial waited in PENDING (``pending.json``) and warns past ``limit_s``: a
    long wait means the trials ask for more than the cluster has."""

    def __init__(self, path: Path, limit_s: float = 60.0):
        self.path, self.limit_s = path, limit_s
        self.first_seen: dict[str, float] = {}
        self.waited: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        self.warned: set[str] = set()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        for trial in trials:
            if trial.status != "PENDING":
                continue
            waited = now - self.first_seen.setdefault(trial.trial_id, now)
            if waited > self.limit_s and trial.trial_id not in self.warned:
                self.warned.add(trial.trial_id)
                print(
                    f"[tune] trial {trial.trial_id} has waited {waited:.0f}s for resources; lower "
                    "tune.max_concurrent_trials or the workers per stage",
                    flush=True,
                )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # A trial can be created and started within one step, never seen PENDING: it waited ~0 s, and
        # it must still be on record. A restarted trial keeps its longest wait.
        now = time.monotonic()
        waited = now - self.first_seen.pop(trial.trial_id, now)
        self.waited[trial.trial_id] = max(waited, self.waited.get(trial.trial_id, 0.0))
        atomic.write_json(self.path, self.waited)


def run_tuner(cfg: PipelineConfig, params: list[Param], root: Path, storage: str) -> list[TrialRow]:
    """Run (or resume) the search and return one row per trial."""
    plan = plan_trials(cfg, params, ensure_ray(cfg.ray))
    print(
        f"[tune] {plan['concurrent']} trial(s) at a time, each with {plan['cpus']} CPU(s)"
        + (f" and {plan['gpus']} GPU(s)" if plan["gpus"] else ""),
        flush=True,
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            base=to_dict(cfg),
            store=str(root / "stages"),
            trials=str(root / "trials"),
            job={"cpus": plan["cpus"], "gpus": plan["gpus"]},
        ),
        {"cpu": 0, "memory": TRIAL_MEMORY},
    )
    path = f"{storage.rstrip('/')}/{cfg.tune.name}"
    if tune.Tuner.can_restore(path):
        print(f"[tune] resuming the search in {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
    else:
        grid = cfg.tune.search_alg == "grid"
        tuner = tune.Tuner(
            trainable,
            param_space={p.key: _domain(p, grid) for p in params},
            tune_config=tune.TuneConfig(
                metric=cfg.tune.metric,
                mode=cfg.tune.mode,
                search_alg=_search(cfg, plan["concurrent"]),
                scheduler=_scheduler(cfg, params),
                num_samples=cfg.tune.num_samples,
            ),
            run_config=tune.RunConfig(
                name=cfg.tune.name,
                storage_path=storage,
                callbacks=[PendingWatch(root / PENDING_FILE)],
                failure_config=tune.FailureConfig(max_failures=cfg.classifier.max_failures),
            ),
        )
    with ray_noise_filtered():
        results = list(tuner.fit())
    _raise_user_error(root)
    return [
        TrialRow(
            trial_id=(r.metrics or {}).get("trial_id") or Path(r.path).name,
            status="ERROR" if r.error else "TERMINATED",
            values={p.key: r.config.get(p.key) for p in params},
            metrics=dict(r.metrics or {}),
        )
        for r in results
    ]


def _raise_user_error(root: Path) -> None:
    """Raise the LeafgenError a trial recorded (the first; how many trials failed is said)."""
    failed = sorted((root / "trials").glob(f"*/{USER_ERROR_FILE}"))
    if not failed:
        return
    first = json.loads(failed[0].read_text())
    error = LeafgenError(
        f"{first['message']} (Tune trial {failed[0].parent.name}"
        + (f", one of {len(failed)} trials that failed" if len(failed) > 1 else "")
        + f"; its run directory: {failed[0].parent})"
    )
    error.stage, error.where = first["stage"], first["where"]
    raise error
