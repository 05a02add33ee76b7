"""What one Tune trial runs: the pipeline up to the mixed training set, then one classifier on it,
scored on the validation split only.

The trial's classifier is the augmented arm's recipe at ``classifier.seed``; its per-epoch validation
metrics go to Tune while it trains (through the callbacks of ``leafgen.distributed.tune``), which is what
ASHA stops weak trials on. No test image is predicted: selection never sees the held-out split, which
only the final evaluation of the best configuration uses.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from leafgen import atomic
from leafgen.classifier.stage import CLASSIFIER
from leafgen.config import PipelineConfig
from leafgen.data.stages import DATASET, SPLIT
from leafgen.diffusion.finetune.stages import CLASS_IMAGES, DREAMBOOTH
from leafgen.diffusion.generation.stages import GATE, GENERATE_FINETUNED
from leafgen.evaluation.arms import arm_config, mixed_arrays
from leafgen.evaluation.mix_stage import MIX
from leafgen.stages import Stage, StageContext

METRICS_FILE = "metrics.json"


def _fit(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    from leafgen.distributed.torch_trainer import prune_checkpoints
    from leafgen.distributed.train_classifier import read_history, train_on_ray
    from leafgen.distributed.trial_context import trial_callbacks

    keep = cfg.classifier.keep_checkpoints_after_export
    if (ctx.dir / METRICS_FILE).is_file():  # finished before an interruption: never train again
        if not keep:
            prune_checkpoints(ctx.dir / "ray", ctx.run.storage)
        return {k: v for k, v in json.loads((ctx.dir / METRICS_FILE).read_text()).items() if k != "history"}
    arrays = mixed_arrays(cfg, ctx)
    arm_cfg = arm_config(cfg, "augmented", cfg.classifier.seed)
    train_on_ray(arm_cfg, arrays, ctx.dir / "ray", callbacks=trial_callbacks(), run=ctx.run.storage)
    history = read_history(ctx.dir / "ray")
    final = {k: v for k, v in history[-1].items() if k.startswith("val/") and isinstance(v, (int, float))}
    labels = np.load(arrays["train_labels"])
    outputs = {
        "val": final,
        "epochs": len(history),
        "train_images": int(len(labels)),
        "history": [
            {k: v for k, v in row.items() if k.startswith("val/") or k == "epoch"} for row in history
        ],
    }
    atomic.write_json(ctx.dir / METRICS_FILE, outputs)
    if not keep:
        prune_checkpoints(ctx.dir / "ray", ctx.run.storage)
    return {k: v for k, v in outputs.items() if k != "history"}


TRIAL_FIT = Stage(
    name="trial_fit",
    summary=lambda o: ", ".join(f"{k} {v:.3f}" for k, v in o["val"].items() if k.count("/") == 1),
    fn=_fit,
    config_keys=("classifier", "data.target_class"),
    inputs=("dataset", "split", "classifier", "mix"),
)

# One trial, in order. Stages whose settings the search leaves alone have the same key in every trial,
# so the stage store runs them once for the whole search.
TRIAL_STAGES: tuple[Stage, ...] = (
    DATASET,
    SPLIT,
    CLASSIFIER,
    CLASS_IMAGES,
    DREAMBOOTH,
    GENERATE_FINETUNED,
    GATE,
    MIX,
    TRIAL_FIT,
)
