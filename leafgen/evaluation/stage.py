"""The ``evaluate`` stage: every arm's saved probabilities on the held-out test split (and on val)
compared per class and overall; writes ``run_dir/evaluate/comparison.json``.

The test split is only ever measured here and in the per-run metrics: nothing selects on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from leafgen import atomic
from leafgen.classifier.export import TEST_PROBS, VAL_PROBS
from leafgen.config import PipelineConfig
from leafgen.data.split import read_split
from leafgen.errors import StageError
from leafgen.evaluation.arms import run_dir_of
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


def arm_probabilities(cfg: PipelineConfig, ctx: StageContext, name: str) -> dict[str, list[np.ndarray]]:
    """Arm -> per-seed probabilities (``name``: the val or test file), from the arms and retrain stages."""
    found = {}
    for stage in ("arms", "retrain"):
        info = ctx.inputs[stage]
        for arm in info["arms"]:
            found[arm] = load_arm_probs(ctx.run.root, stage, arm, info["seeds"], name)
    # In the configured order of the arms (the report's columns), whichever stage trained them.
    order = [a.name for a in cfg.eval.arms or ()]
    return {arm: found[arm] for arm in order if arm in found}


def _evaluate(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    split = read_split(ctx.input_path("split", "split_csv"))
    labels = {name: np.asarray([y for _, y in split[name]], dtype=np.int64) for name in ("val", "test")}
    result = compare_arms(
        labels["test"],
        arm_probabilities(cfg, ctx, TEST_PROBS),
        labels["val"],
        arm_probabilities(cfg, ctx, VAL_PROBS),
        list(cfg.eval.seeds),
        cfg.data.target_class,
        cfg.eval.bootstrap_samples,
        references=cfg.eval.references,
    )
    atomic.write_json(ctx.dir / COMPARISON_FILE, result)
    target = f"recall/{cfg.data.target_class}"
    return {
        "comparison": f"{ctx.dir.name}/{COMPARISON_FILE}",
        "target_recall": [[arm, result["test"][arm][target]["mean"]] for arm in result["arms"]],
        # Lists, not mappings: markers are written with sorted keys, and the order of arms means something.
        "target_delta": [
            {"reference": ref, "arm": arm, **result["deltas"][ref][arm][target]}
            for ref in result["references"]
            for arm in result["arms"]
            if arm != ref
        ],
        "warnings": result["warnings"],
    }


EVALUATE = Stage(
    name="evaluate",
    summary=lambda o: "target recall " + ", ".join(f"{a} {v:.3f}" for a, v in o["target_recall"]),
    fn=_evaluate,
    config_keys=("eval.seeds", "eval.bootstrap_samples", "eval.references", "eval.arms", "data.target_class"),
    inputs=("split", "arms", "retrain"),
    version=2,  # outputs list arms in their configured order
)
