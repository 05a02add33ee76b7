"""The ``evaluate`` stage: every arm's saved probabilities on the held-out test split (and on val)
compared per class and overall; writes ``run_dir/evaluate/comparison.json``.

The test split is only ever measured here and in the per-run metrics: nothing selects on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from leafgen import atomic
from leafgen.config import PipelineConfig
from leafgen.data.split import read_split
from leafgen.errors import StageError
from leafgen.evaluation.arms import TEST_PROBS, VAL_PROBS, run_dir_of
from leafgen.evaluation.comparison import compare_arms
from leafgen.stages import Stage, StageContext

COMPARISON_FILE = "comparison.json"


def load_arm_probs(run_root: Path, stage: str, arm: str, seeds: list[int], name: str) -> list[np.ndarray]:
    probs = []
    for seed in seeds:
        path = run_dir_of(run_root / stage, arm, seed) / name
        if not path.is_file():
            raise StageError(f"{path} is missing: rerun the {stage!r} stage (leafgen run --only {stage})")
        probs.append(np.load(path))
    return probs


def arm_probabilities(ctx: StageContext, name: str) -> dict[str, list[np.ndarray]]:
    """Arm -> per-seed probabilities (``name``: the val or test file), from the arms and retrain stages."""
    out = {}
    for stage in ("arms", "retrain"):
        info = ctx.inputs[stage]
        for arm in info["arms"]:
            out[arm] = load_arm_probs(ctx.run.root, stage, arm, info["seeds"], name)
    return out


def _evaluate(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    split = read_split(ctx.input_path("split", "split_csv"))
    labels = {name: np.asarray([y for _, y in split[name]], dtype=np.int64) for name in ("val", "test")}
    result = compare_arms(
        labels["test"],
        arm_probabilities(ctx, TEST_PROBS),
        labels["val"],
        arm_probabilities(ctx, VAL_PROBS),
        list(cfg.eval.seeds),
        cfg.data.target_class,
        cfg.eval.bootstrap_samples,
    )
    atomic.write_json(ctx.dir / COMPARISON_FILE, result)
    target = f"recall/{cfg.data.target_class}"
    return {
        "comparison": f"{ctx.dir.name}/{COMPARISON_FILE}",
        "target_recall": {arm: result["test"][arm][target]["mean"] for arm in result["arms"]},
        "target_delta": {arm: d[target] for arm, d in result["deltas"].items()},
        "warnings": result["warnings"],
    }


EVALUATE = Stage(
    name="evaluate",
    summary=lambda o: "target recall " + ", ".join(f"{a} {v:.3f}" for a, v in o["target_recall"].items()),
    fn=_evaluate,
    config_keys=("eval.seeds", "eval.bootstrap_samples", "data.target_class"),
    inputs=("split", "arms", "retrain"),
)
