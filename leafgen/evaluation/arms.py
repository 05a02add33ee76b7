"""The arms of the comparison: each a recipe (``eval.arms``), trained once per seed in ``eval.seeds``.

Arms that train on real data live in the ``arms`` stage and arms that train on synthetic images in
``retrain`` (after ``mix``), so changing ``mix.synthetic_ratio`` retrains only the latter. Only the
recipe differs between arms; a seed means the same initialisation and data order in each.

Each (arm, seed) run writes under ``<stage>/<arm>/seed_<seed>/`` and finishes with ``result.json``,
holding the run's key: a hash of what it depends on (the recipe, the classifier settings at that seed,
the data and train set it reads, and the stage it reuses, if any). Both stages are incremental: on a
rerun, runs whose key matches are kept, so adding or changing one arm trains only that arm; the runs
still to train go to Ray Train as one fit (one worker group per stage), and an interrupted fit resumes.

A run whose classifier settings are exactly those of the ``classifier`` stage (the gating classifier) or
of the ``judge`` stage is not trained again: that stage's model is measured instead.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from leafgen import atomic
from leafgen.classifier.export import export_run, save_probs
from leafgen.classifier.runs import RunSpec, spec_for
from leafgen.classifier.sampling import SyntheticUse
from leafgen.classifier.stage import judge_config, recipe_config
from leafgen.classifier.training import load_classifier
from leafgen.config import ArmRecipe, PipelineConfig, fingerprint
from leafgen.evaluation.train_sets import train_set
from leafgen.stages import Stage, StageContext

RESULT_FILE = "result.json"


def arm_config(cfg: PipelineConfig, arm: ArmRecipe, seed: int) -> PipelineConfig:
    """``cfg`` with the classifier recipe of ``arm`` at ``seed``."""
    return recipe_config(cfg, arm.balance, seed)


def synthetic_use(arm: ArmRecipe) -> SyntheticUse | None:
    if not arm.synthetic:
        return None
    return SyntheticUse(arm.synthetic_mode, arm.swap_probability, arm.synthetic_loss_weight)


def run_dir_of(stage_dir: Path, arm: str, seed: int) -> Path:
    return stage_dir / arm / f"seed_{seed}"


def read_result(stage_dir: Path, arm: str, seed: int) -> dict[str, Any] | None:
    path = run_dir_of(stage_dir, arm, seed) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _reusable(cfg: PipelineConfig, ctx: StageContext) -> dict[str, tuple[Any, Path, str]]:
    """Stage name -> (classifier settings, exported model, stage key) of the upstream stages whose model
    can stand in for a real-data run with the same settings."""
    candidates = {"classifier": cfg, "judge": judge_config(cfg) if "judge" in ctx.inputs else None}
    out = {}
    for stage, stage_cfg in candidates.items():
        if stage_cfg is not None and stage in ctx.inputs:
            model = ctx.input_path(stage, "model_dir")
            out[stage] = (stage_cfg.classifier, model, ctx.run.marker(stage)["key"])  # type: ignore[index]
    return out


def _run_key(cfg: PipelineConfig, ctx: StageContext, arm: ArmRecipe, seed: int, reused: str | None) -> str:
    upstream = ("dataset", "split", "mix") if arm.synthetic else ("dataset", "split")
    return fingerprint(
        {
            "recipe": asdict(arm),
            "classifier": asdict(arm_config(cfg, arm, seed).classifier),
            "target_class": cfg.data.target_class,
            "inputs": {name: ctx.run.marker(name)["key"] for name in upstream},  # type: ignore[index]
            "reused": reused,
        }
    )


def _train_arms(cfg: PipelineConfig, ctx: StageContext, arms: list[ArmRecipe]) -> dict[str, Any]:
    from leafgen.distributed.train_classifier import prune_training, read_history, train_runs_on_ray

    reusable = _reusable(cfg, ctx)
    planned, results = [], {}
    for arm in arms:
        for seed in cfg.eval.seeds:
            settings = arm_config(cfg, arm, seed).classifier
            reuse = next(
                (name for name, (c, _, _) in reusable.items() if not arm.synthetic and c == settings), None
            )
            key = _run_key(cfg, ctx, arm, seed, reusable[reuse][2] if reuse else None)
            done = read_result(ctx.dir, arm.name, seed)
            if done is not None and done.get("key") == key:
                results[(arm.name, seed)] = done
                continue
            _clear_unless_resuming(run_dir_of(ctx.dir, arm.name, seed), key)
            planned.append((arm, seed, key, reuse))
    _remove_stale(ctx.dir, arms, cfg.eval.seeds)

    sets = {kind: train_set(cfg, ctx, kind) for kind in {a.train for a, _, _, reuse in planned if not reuse}}
    specs: dict[tuple[str, int], RunSpec] = {}
    for arm, seed, _, reuse in planned:
        if reuse is None:
            out = run_dir_of(ctx.dir, arm.name, seed)
            settings = arm_config(cfg, arm, seed).classifier
            specs[(arm.name, seed)] = spec_for(
                f"{arm.name}/seed_{seed}",
                out,
                settings,
                sets[arm.train],
                cfg.data.target_class,
                synthetic_use(arm),
            )
    if specs:
        print(f"[{ctx.dir.name}] training {', '.join(s.run_id for s in specs.values())}", flush=True)
        train_runs_on_ray(cfg, list(specs.values()), ctx.dir / "ray", run=ctx.run.storage)

    real = sets.get("real") or (train_set(cfg, ctx, "real") if any(r for *_, r in planned) else {})
    for arm, seed, key, reuse in planned:
        out = run_dir_of(ctx.dir, arm.name, seed)
        if reuse is None:
            arrays = sets[arm.train]
            metrics = export_run(specs[(arm.name, seed)], arrays, cfg.classifier.flip_tta, read_history)
            best_epoch, model_dir = metrics["best_epoch"], out / "model"
            images = len(np.load(arrays["train_labels"]))
        else:
            model_dir = reusable[reuse][1]
            save_probs(out, model_dir, real, cfg.classifier.flip_tta)
            best_epoch = load_classifier(model_dir)[1]["epoch"] + 1
            images = len(np.load(real["train_labels"]))
        result = {
            "arm": arm.name,
            "seed": seed,
            "key": key,
            "model_dir": str(model_dir.relative_to(ctx.run.root)),
            "best_epoch": best_epoch,
            "train_images": int(images),
            "reused": reuse,
        }
        atomic.write_json(out / RESULT_FILE, result)  # last: marks the run finished
        results[(arm.name, seed)] = result
    if specs and not cfg.classifier.keep_checkpoints_after_export:
        prune_training(ctx.dir / "ray", [Path(spec.out) for spec in specs.values()], ctx.run.storage)
    runs = [results[(arm.name, seed)] for arm in arms for seed in cfg.eval.seeds]
    return {
        "arms": [a.name for a in arms],
        "seeds": list(cfg.eval.seeds),
        "runs": runs,
        "trained": [s.run_id for s in specs.values()],  # by this invocation; the rest were kept or reused
    }


RUN_KEY_FILE = "run_key.json"


def _clear_unless_resuming(folder: Path, key: str) -> None:
    """Start a run's folder for ``key``: kept when an interrupted attempt at the same key left it (its
    best epoch so far and progress), emptied otherwise."""
    marker = folder / RUN_KEY_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        return
    shutil.rmtree(folder, ignore_errors=True)
    atomic.write_json(marker, {"key": key})


def _remove_stale(stage_dir: Path, arms: list[ArmRecipe], seeds: tuple[int, ...]) -> None:
    """Drop the runs of arms or seeds no longer configured, so the stage holds what its marker says."""
    wanted = {(a.name, f"seed_{s}") for a in arms for s in seeds}
    for folder in stage_dir.glob("*/seed_*"):
        if folder.is_dir() and (folder.parent.name, folder.name) not in wanted:
            shutil.rmtree(folder)
            if not any(folder.parent.iterdir()):
                folder.parent.rmdir()


def _real_arms(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    return _train_arms(cfg, ctx, [a for a in cfg.eval.arms or () if not a.synthetic])


def _synthetic_arms(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    return _train_arms(cfg, ctx, [a for a in cfg.eval.arms or () if a.synthetic])


def _summary(outputs: dict[str, Any]) -> str:
    if not outputs["arms"]:
        return "no arm of this kind"
    reused = sum(bool(r["reused"]) for r in outputs["runs"])
    trained = len(outputs["trained"])
    kept = len(outputs["runs"]) - trained - reused
    counts = f"{trained} trained, {kept} kept, {reused} reused"
    return f"{', '.join(outputs['arms'])} x seeds {outputs['seeds']} ({counts})"


_ARM_KEYS = ("classifier", "eval.seeds", "eval.arms", "data.target_class")

ARMS_STAGE = Stage(
    name="arms",
    summary=_summary,
    fn=_real_arms,
    config_keys=(*_ARM_KEYS, "eval.judge"),  # it may reuse the judge as a run
    inputs=("dataset", "split", "classifier", "judge"),
    incremental=True,
)
RETRAIN = Stage(
    name="retrain",
    summary=_summary,
    fn=_synthetic_arms,
    config_keys=_ARM_KEYS,
    inputs=("dataset", "split", "classifier", "mix"),
    incremental=True,
)
