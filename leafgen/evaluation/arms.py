"""The classifier arms of the comparison, each trained once per seed in ``eval.seeds``.

- ``baseline``: the real train split, the classifier recipe as configured (without any balancing);
- ``balanced``: the same with class-balanced sampling or a class-weighted loss (``eval.balance``), the
  cheap fix any user tries first, so synthetic data has to beat it, not just the baseline;
- ``augmented``: the mixed train set of the ``mix`` stage (real + accepted synthetic images).

Only the arm's change differs between arms; a seed means the same initialisation and data order in each.
The two real-data arms live in the ``arms`` stage and the augmented arm in ``retrain``, so changing
``mix.synthetic_ratio`` retrains only the augmented arm. Each (arm, seed) run writes under
``<stage>/<arm>/seed_<seed>/`` and finishes with ``result.json``; a rerun skips finished runs and resumes
an interrupted one from its Ray checkpoints. The baseline run at ``classifier.seed`` is the ``classifier``
stage itself, and the run of the ``eval.judge_recipe`` arm at ``eval.judge_seed`` is the ``judge`` stage
(the same recipe and seed): both are reused, not retrained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leafgen import atomic
from leafgen.classifier.stage import (
    CACHE_DIR,
    TEST_PROBS,
    cache_split_arrays,
    predict_split,
    recipe_config,
    train_and_export,
)
from leafgen.classifier.training import input_size, load_classifier
from leafgen.config import PipelineConfig
from leafgen.data.cache import ensure_cached
from leafgen.data.mixing import read_mix
from leafgen.stages import Stage, StageContext

ARMS = ("baseline", "balanced", "augmented")
RESULT_FILE = "result.json"
VAL_PROBS = "val_probs.npy"


def arm_config(cfg: PipelineConfig, arm: str, seed: int) -> PipelineConfig:
    """``cfg`` with the classifier recipe of ``arm`` at ``seed``."""
    return recipe_config(cfg, arm == "balanced", seed)


def run_dir_of(stage_dir: Path, arm: str, seed: int) -> Path:
    return stage_dir / arm / f"seed_{seed}"


def read_result(stage_dir: Path, arm: str, seed: int) -> dict[str, Any] | None:
    path = run_dir_of(stage_dir, arm, seed) / RESULT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _save_probs(out: Path, model_dir: Path, arrays: dict[str, Path], flip_tta: bool) -> None:
    """Val and test probabilities into ``out``, unless there already (a run trained here wrote its test
    probabilities while measuring itself; the stage directory holds one model per run)."""
    for split, name in (("val", VAL_PROBS), ("test", TEST_PROBS)):
        if (out / name).is_file():
            continue
        probs = predict_split(model_dir, np.load(arrays[f"{split}_images"], mmap_mode="r"), flip_tta)
        with atomic.atomic_path(out / name) as tmp:
            np.save(tmp, probs)


def train_arm(
    cfg: PipelineConfig,
    arm: str,
    seed: int,
    arrays: dict[str, Path],
    ctx: StageContext,
    reuse: Path | None = None,
) -> dict[str, Any]:
    """One (arm, seed) run in the stage's folder, or its recorded result when it already finished.
    ``reuse``: an exported model trained with exactly this arm's recipe and seed, measured instead of
    trained again."""
    stage_dir = ctx.dir
    out = run_dir_of(stage_dir, arm, seed)
    done = read_result(stage_dir, arm, seed)
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    arm_cfg = arm_config(cfg, arm, seed)
    print(f"[{stage_dir.name}] training the {arm} arm, seed {seed}", flush=True)
    if reuse is None:
        model_dir = out / "model"
        best_epoch = train_and_export(arm_cfg, arrays, out, ctx.run.storage)["best_epoch"]
    else:
        model_dir, best_epoch = reuse, load_classifier(reuse)[1]["epoch"] + 1
    _save_probs(out, model_dir, arrays, cfg.classifier.flip_tta)
    result = {
        "arm": arm,
        "seed": seed,
        "model_dir": str(model_dir.relative_to(stage_dir.parent)),
        "best_epoch": best_epoch,
        "train_images": int(len(np.load(arrays["train_labels"]))),
        "reused": reuse is not None,
    }
    atomic.write_json(out / RESULT_FILE, result)  # last: marks the run finished
    return result


def _trained_elsewhere(cfg: PipelineConfig, ctx: StageContext) -> dict[tuple[str, int], Path]:
    """(arm, seed) -> exported model of a stage that already trained that arm's recipe with that seed:
    the gating classifier (baseline, ``classifier.seed``) and the judge (``eval.judge_recipe``,
    ``eval.judge_seed``)."""
    path = {stage: ctx.input_path(stage, "model_dir") for stage in ("classifier", "judge")}
    reusable = {(cfg.eval.judge_recipe, cfg.eval.judge_seed): path["judge"]}
    if not (cfg.classifier.balanced_sampling or cfg.classifier.class_weighted_loss):
        reusable[("baseline", cfg.classifier.seed)] = path["classifier"]  # else another recipe
    return reusable


def _train_arms(cfg: PipelineConfig, ctx: StageContext, arms: Sequence[str], arrays: dict[str, Path]) -> dict:
    reusable = _trained_elsewhere(cfg, ctx) if "judge" in ctx.inputs else {}
    runs = [
        train_arm(cfg, arm, seed, arrays, ctx, reusable.get((arm, seed)))
        for arm in arms
        for seed in cfg.eval.seeds
    ]
    return {"arms": list(arms), "seeds": list(cfg.eval.seeds), "runs": runs}


def _real_arms(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    return _train_arms(cfg, ctx, ("baseline", "balanced"), cache_split_arrays(cfg, ctx))


def mixed_arrays(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Path]:
    """The split's cached arrays with the train set replaced by the ``mix`` stage's real + synthetic set."""
    arrays = cache_split_arrays(cfg, ctx)
    mixed = read_mix(ctx.input_path("mix", "mix_csv"))
    arrays["train_images"] = ensure_cached(
        [path for *_, path in mixed],
        input_size(cfg.classifier),
        ctx.run.root / CACHE_DIR,
        cfg.data.max_image_pixels,
        cfg.data.decode_workers,
    )
    with atomic.atomic_path(arrays["train_labels"]) as tmp:
        np.save(tmp, np.asarray([label for _, label, _, _ in mixed], dtype=np.int64))
    return arrays


def _augmented_arm(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    return _train_arms(cfg, ctx, ("augmented",), mixed_arrays(cfg, ctx))


_ARM_KEYS = ("classifier", "eval.seeds", "eval.balance", "data.target_class")


def _summary(outputs: dict[str, Any]) -> str:
    trained = sum(not r["reused"] for r in outputs["runs"])
    return f"{', '.join(outputs['arms'])} x seeds {outputs['seeds']} ({trained} trained)"


ARMS_STAGE = Stage(
    name="arms",
    summary=_summary,
    fn=_real_arms,
    config_keys=(*_ARM_KEYS, "eval.judge_seed", "eval.judge_recipe"),  # it reuses the judge as an arm's run
    inputs=("dataset", "split", "classifier", "judge"),
)
RETRAIN = Stage(
    name="retrain",
    summary=_summary,
    fn=_augmented_arm,
    config_keys=_ARM_KEYS,
    inputs=("dataset", "split", "classifier", "mix"),
)
