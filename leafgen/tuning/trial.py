"""What one Tune trial runs: the pipeline up to the mixed training set, then one classifier on it,
scored on the validation split only.

The trial's classifier is the recipe of the arm ``tune.arm`` names (the augmented arm by default) at
``classifier.seed``; its per-epoch validation
metrics go to Tune while it trains (through the callbacks of ``leafgen.distributed.tune``), which is what
ASHA stops weak trials on. No test image is predicted: selection never sees the held-out split, which
only the final evaluation of the best configuration uses.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from leafgen import atomic
from leafgen.classifier.export import LOG_DIR
from leafgen.classifier.runs import spec_for
from leafgen.classifier.stage import CLASSIFIER
from leafgen.config import PipelineConfig
from leafgen.data.stages import DATASET, SPLIT
from leafgen.diffusion.finetune.stages import CLASS_IMAGES, DREAMBOOTH_AFTER_CLASSIFIER
from leafgen.diffusion.generation.stages import GATE, GENERATE_FINETUNED
from leafgen.evaluation.arms import arm_config, synthetic_use
from leafgen.evaluation.mix_stage import MIX
from leafgen.evaluation.train_sets import train_set
from leafgen.stages import Stage, StageContext
from leafgen.tuning.space import trial_arm

METRICS_FILE = "metrics.json"


def _fit(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    from leafgen.distributed.train_classifier import prune_training, read_history, train_runs_on_ray
    from leafgen.distributed.trial_context import trial_callbacks

    keep = cfg.classifier.keep_checkpoints_after_export
    if (ctx.dir / METRICS_FILE).is_file():  # finished before an interruption: never train again
        if not keep:
            prune_training(ctx.dir / LOG_DIR, [ctx.dir], ctx.run.storage)
        return {k: v for k, v in json.loads((ctx.dir / METRICS_FILE).read_text()).items() if k != "history"}
    arm = trial_arm(cfg)
    arrays = train_set(cfg, ctx, arm.train)
    settings = arm_config(cfg, arm, cfg.classifier.seed).classifier
    spec = spec_for(f"{arm.name}/trial", ctx.dir, settings, arrays, cfg.data.target_class, synthetic_use(arm))
    train_runs_on_ray(cfg, [spec], ctx.dir / LOG_DIR, callbacks=trial_callbacks(), run=ctx.run.storage)
    history = read_history(ctx.dir / LOG_DIR)
    final = {k: v for k, v in history[-1].items() if k.startswith("val/") and isinstance(v, (int, float))}
    labels = np.load(arrays["train_labels"])
    outputs = {
        "arm": arm.name,
        "val": final,
        "epochs": len(history),
        "train_images": int(len(labels)),
        "history": [
            {k: v for k, v in row.items() if k.startswith("val/") or k == "epoch"} for row in history
        ],
    }
    atomic.write_json(ctx.dir / METRICS_FILE, outputs)
    if not keep:
        prune_training(ctx.dir / LOG_DIR, [ctx.dir], ctx.run.storage)
    return {k: v for k, v in outputs.items() if k != "history"}


TRIAL_FIT = Stage(
    name="trial_fit",
    summary=lambda o: ", ".join(f"{k} {v:.3f}" for k, v in o["val"].items() if k.count("/") == 1),
    fn=_fit,
    config_keys=("classifier", "data.target_class", "tune.arm", "eval.arms"),
    inputs=("dataset", "split", "classifier", "mix"),
)

# One trial, in order. Stages whose settings the search leaves alone have the same key in every trial,
# so the stage store runs them once for the whole search.
TRIAL_STAGES: tuple[Stage, ...] = (
    DATASET,
    SPLIT,
    CLASSIFIER,
    CLASS_IMAGES,
    DREAMBOOTH_AFTER_CLASSIFIER,
    GENERATE_FINETUNED,
    GATE,
    MIX,
    TRIAL_FIT,
)
