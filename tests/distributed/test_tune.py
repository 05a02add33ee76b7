"""``leafgen tune`` on real Ray Tune: a tiny grid of 2 fine-tuning methods (DreamBooth LoRA, textual
inversion; one identifier per cluster of 2) x 2 synthetic ratios, killed after its first finished trial and
resumed by the same command. Each fine-tune runs once, no trial waits long in PENDING, every trial logs to
TensorBoard, the test split plays no part in selection, and the exported best configuration runs with
``leafgen run``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from leafgen.cli import main
from leafgen.stage_store import StageStore

from .conftest import PIPELINE, TINY_RUN, kill_once

SEARCH = [
    *PIPELINE,
    "eval.seeds=[0]",
    "dreambooth.num_workers=1",
    "classifier.num_workers=1",
    "dreambooth.clusters=2",
    "dreambooth.textual_inversion_steps=2",
    "tune.space={dreambooth.method: {choice: [dreambooth, textual_inversion]},"
    " mix.synthetic_ratio: {choice: [0.0, 1.0]}}",
    "tune.search_alg=grid",
    "tune.num_samples=1",
    "tune.max_concurrent_trials=2",
]


@pytest.fixture(scope="module")
def search(ray_cluster, model_dir, tmp_path_factory):
    """A search SIGKILLed once its first trial finished, then completed: (run_dir, args, stdout)."""
    run_dir = tmp_path_factory.mktemp("tune") / "search"
    args = [*TINY_RUN, f"run_dir={run_dir}", f"base_model.name_or_path={model_dir}", *SEARCH]
    fits = run_dir / "stages" / "trial_fit"
    env = kill_once(
        "tune", args, lambda: bool(list(fits.glob("*/_complete.json"))), "its first trial finished"
    )
    finished = {p: p.stat().st_mtime_ns for p in fits.glob("*/_complete.json")}
    assert len(finished) < 4
    resumed = subprocess.run(
        [sys.executable, "-m", "leafgen.cli", "tune", *args], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "a finished trial was redone"
    return run_dir, args, resumed.stdout


def test_the_resumed_search_finishes_every_trial(search):
    run_dir, _, out = search
    assert "[tune] resuming the search in" in out
    with open(run_dir / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"TERMINATED"}
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    grid = {(r["dreambooth.method"], float(r["mix.synthetic_ratio"])) for r in rows}
    assert grid == {(m, ratio) for m in ("dreambooth", "textual_inversion") for ratio in (0.0, 1.0)}
    assert all(r["val/target_recall"] != "" for r in rows)
    assert {int(r["synthetic_images"]) > 0 for r in rows} == {True, False}  # ratio 0 adds none


def test_dreambooth_ran_once_per_setting_and_each_stage_once_per_key(search):
    run_dir, _, _ = search
    store = StageStore(run_dir / "stages")
    for stage, times in (
        ("dreambooth", 2),
        ("generate", 2),
        ("gate", 2),
        ("trial_fit", 4),
        ("classifier", 1),
    ):
        runs = store.computed(stage)
        assert len(runs) == times, (stage, runs)
        assert len({r["key"] for r in runs}) == times
    trials = sorted((run_dir / "trials").iterdir())
    assert len(trials) == 4
    assert len({(t / "dreambooth").resolve() for t in trials}) == 2
    assert len({(t / "trial_fit").resolve() for t in trials}) == 4


def test_each_method_learned_a_token_per_cluster_and_generation_spread_rows_over_them(search):
    run_dir, _, _ = search
    for folder in {(t / "dreambooth").resolve() for t in (run_dir / "trials").iterdir()}:
        summary = json.loads((folder / "summary.json").read_text())
        model = sorted(p.name for p in (folder / "model").iterdir())
        if summary["method"] == "textual_inversion":
            assert summary["kind"] == "textual_inversion" and summary["class_images"] == 0
            assert model == ["README.md", "clusters.json", "learned_embeds.safetensors"]
        else:
            assert summary["kind"] == "lora" and "pytorch_lora_weights.safetensors" in model
        clusters = json.loads((folder / "clusters.json").read_text())
        assert summary["clusters"] == clusters["k"] == 2 and "the classifier stage" in clusters["features"]
        assert (
            sorted(clusters["assignment"]) == sorted(clusters["ids"]) and (folder / "clusters.png").is_file()
        )
    for generated in (run_dir / "stages" / "generate").glob("*/manifest.parquet"):
        rows = pq.read_table(generated).to_pylist()
        assert {r["cluster"] for r in rows} <= {0, 1}
        assert all(r["prompt"].startswith(f"<disease-leaf-{r['cluster']}>") for r in rows)
    drift = json.loads((run_dir / "best" / "drift" / "drift.json").read_text())
    assert [p["prompt"] for p in drift["prompts"][:2]] == ["<disease-leaf-0> leaf", "<disease-leaf-1> leaf"]


def test_no_trial_waited_long_and_every_trial_logged_to_tensorboard(search):
    run_dir, _, _ = search
    waited = json.loads((run_dir / "pending.json").read_text())
    assert len(waited) >= 4 and max(waited.values()) < 60, waited
    # A trial that was running when the search was killed restarts in a new folder (named
    # _trial_<experiment>_<number>_...), so folders are grouped by trial.
    folders = [p for p in (run_dir / "tune" / "search").iterdir() if p.is_dir()]
    trial_of = lambda folder: "_".join(folder.name.split("_")[2:4])  # noqa: E731
    logged = {trial_of(f) for f in folders if list(f.glob("events.out.tfevents.*"))}
    assert len({trial_of(f) for f in folders}) == 4 and len(logged) == 4, sorted(f.name for f in folders)


def test_selection_never_touches_the_test_split(search):
    run_dir, _, _ = search
    for fit in (run_dir / "stages" / "trial_fit").glob("*/"):
        assert not list(fit.rglob("test_probs.npy")), fit
        metrics = json.loads((fit / "metrics.json").read_text())
        assert metrics["val"] and not any(k.startswith("test") for k in metrics["val"])


def test_the_best_config_is_tested_over_seeds_and_runs_with_leafgen_run(search, capsys):
    run_dir, _, out = search
    best_yaml = run_dir / "best_config.yaml"
    assert str(best_yaml) in out and str(run_dir / "report" / "report.html") in out
    comparison = json.loads((run_dir / "best" / "evaluate" / "comparison.json").read_text())
    assert comparison["arms"] == ["baseline", "balanced", "augmented", "augmented_balanced"]
    assert comparison["seeds"] == [0]
    report = (run_dir / "report" / "report.md").read_text()
    assert "held-out test split" in report and "objective_vs_mix_synthetic_ratio.png" in report
    assert (run_dir / "report" / "objective_vs_dreambooth_method.png").is_file()
    capsys.readouterr()
    assert main(["run", "--config", str(best_yaml)]) == 0
    assert "[report] skipped (up to date)" in capsys.readouterr().out


def _plan(*overrides, resources):
    from leafgen.config import load_config
    from leafgen.distributed.tune import plan_trials
    from leafgen.tuning.space import parse_space
    from leafgen.tuning.trial import TRIAL_STAGES

    cfg = load_config(None, ["tune.space={mix.synthetic_ratio: {choice: [0, 1]}}", *overrides])
    return plan_trials(cfg, parse_space(cfg, TRIAL_STAGES), resources)


def test_trials_get_a_share_that_holds_their_largest_worker_group():
    assert _plan(resources={"CPU": 2}) == {"concurrent": 1, "cpus": 2, "gpus": None}
    two = _plan("tune.max_concurrent_trials=2", resources={"CPU": 4})
    assert two == {"concurrent": 2, "cpus": 2, "gpus": None}
    # On GPUs: as many trials as the largest worker group fits, each with its GPUs.
    gpus = _plan("dreambooth.num_workers=2", resources={"CPU": 16, "GPU": 8})
    assert gpus == {"concurrent": 4, "cpus": 4, "gpus": 2}


def test_a_share_too_small_for_a_trial_is_refused_before_it_could_wait_forever():
    from leafgen.errors import ConfigError

    with pytest.raises(ConfigError, match="leaves each trial 1 CPU.*2 workers.*wait forever"):
        _plan("tune.max_concurrent_trials=2", "classifier.num_workers=2", resources={"CPU": 2})


def test_searcher_and_scheduler_follow_the_config():
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from leafgen.config import load_config
    from leafgen.distributed.tune import _scheduler, _search
    from leafgen.tuning.space import parse_space
    from leafgen.tuning.trial import TRIAL_STAGES

    space = "tune.space={classifier.epochs: {choice: [4, 6]}}"
    cfg = load_config(None, [space, "tune.search_alg=optuna", "tune.scheduler=asha", "tune.grace_period=2"])
    searcher = _search(cfg, 3)
    assert isinstance(searcher, ConcurrencyLimiter) and searcher.max_concurrent == 3
    assert isinstance(searcher.searcher, OptunaSearch)
    asha = _scheduler(cfg, parse_space(cfg, TRIAL_STAGES))
    # Counted in classifier epochs, up to the largest searched epoch count.
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "epoch" and asha._max_t == 6
    assert asha._stop_last_trials is False
    basic = _search(load_config(None, [space]), 2)
    assert isinstance(basic, BasicVariantGenerator) and basic.max_concurrent == 2


def test_pending_watch_records_every_started_trial_even_one_never_seen_pending(tmp_path):
    from ray.tune.experiment import Trial

    from leafgen.distributed.tune import PendingWatch

    waited_path = tmp_path / "pending.json"
    watch = PendingWatch(waited_path)
    queued, immediate = Trial("leafgen_trial", stub=True), Trial("leafgen_trial", stub=True)
    watch.on_step_begin(0, [queued])
    watch.on_trial_start(1, [queued, immediate], immediate)  # created and started within one step
    watch.on_trial_start(1, [queued, immediate], queued)
    waited = json.loads(waited_path.read_text())
    assert set(waited) == {queued.trial_id, immediate.trial_id}
    assert waited[immediate.trial_id] == 0.0 and waited[queued.trial_id] >= 0.0
    # A resumed search keeps what was on record.
    assert PendingWatch(waited_path).waited == waited
