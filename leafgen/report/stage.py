"""The ``report`` stage: ``run_dir/report/`` gets ``report.html`` (self-contained), ``report.md`` and
``metrics.json`` with every figure the run produced, from the comparison of the arms to the stage times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from leafgen import atomic
from leafgen.classifier.training import input_size
from leafgen.config import PipelineConfig
from leafgen.data.images import image_path
from leafgen.data.split import read_split, split_counts
from leafgen.data.stages import dataset_root
from leafgen.evaluation.arms import TEST_PROBS
from leafgen.evaluation.stage import arm_probabilities
from leafgen.labels import CLASSES
from leafgen.report import plots
from leafgen.report.document import Figure, Section, Table, write_report
from leafgen.stages import COMPLETE, Stage, StageContext

GRID_IMAGES = 16
MAX_VALIDATION_GRIDS = 6


def _read(ctx: StageContext, stage: str, name: str) -> dict[str, Any]:
    return json.loads((ctx.run.root / stage / name).read_text())


def _cell(stat: dict[str, Any]) -> str:
    spread = f" ± {stat['std']:.3f}" if stat["std"] is not None else ""
    return f"{stat['mean']:.3f}{spread}"


def _delta(d: dict[str, Any]) -> str:
    low, high = d["ci95"]
    return f"{d['mean']:+.3f} [{low:+.3f}, {high:+.3f}] {d['verdict']}"


def comparison_section(comparison: dict[str, Any], figures: list[Figure]) -> Section:
    arms, target = comparison["arms"], comparison["target_class"]
    others = [a for a in arms if a != "baseline"]
    header = ["metric", *arms, *(f"{a} − baseline (95% interval)" for a in others)]
    rows = []
    for name in [*(f"recall/{c}" for c in CLASSES), "accuracy", "mean_auc"]:
        label = name.replace("recall/", "") + (" (target)" if name == f"recall/{target}" else "")
        rows.append(
            [
                label,
                *(_cell(comparison["test"][a][name]) for a in arms),
                *(_delta(comparison["deltas"][a][name]) for a in others),
            ]
        )
    seeds = comparison["seeds"]
    paired = [
        [f"{a}: {n.replace('recall/', '')}", *(f"{v:+.3f}" for v in comparison["deltas"][a][n]["per_seed"])]
        for a in others
        for n in (f"recall/{target}", "accuracy", "mean_auc")
    ]
    val_vs_test = [
        [
            f"{a}: {c}",
            f"{comparison['deltas'][a][f'recall/{c}']['val_mean']:+.3f}",
            _delta(comparison["deltas"][a][f"recall/{c}"]),
        ]
        for a in others
        for c in CLASSES
    ]
    counts = ", ".join(f"{c} {n}" for c, n in comparison["test_counts"].items())
    return Section(
        "Baseline vs balanced vs augmented on the held-out test split",
        paragraphs=[
            f"Recall per class (per-class accuracy), accuracy and mean column-wise ROC AUC; mean ± standard "
            f"deviation over seeds {seeds}. Differences are paired by seed; the interval is a 95% percentile "
            f"bootstrap over test images ({comparison['bootstrap_samples']} resamples). "
            f"Test images: {counts}. "
            "'better' or 'worse' only when the whole interval and every seed's difference are on one side "
            "of zero; a class with too few test images gets no verdict.",
        ],
        tables=[
            Table(header, rows),
            Table(["difference per seed", *(f"seed {s}" for s in seeds)], paired),
            Table(["recall difference", "on validation", "on the held-out test split"], val_vs_test),
        ],
        figures=figures,
        warnings=comparison["warnings"],
    )


def _synthetic_section(
    cfg: PipelineConfig, ctx: StageContext, train: list[tuple[str, int]], gate: dict, mix: dict
) -> Section:
    root = dataset_root(cfg, ctx.inputs["dataset"], ctx.run.root) / "images"
    target = CLASSES.index(cfg.data.target_class)
    real = [image_path(root, i) for i, y in train if y == target][:GRID_IMAGES]
    size = (cfg.base_model.resolution, cfg.base_model.width or cfg.base_model.resolution)
    figures = []
    grid = plots.image_grid(real, ctx.dir / "real_target.png", size, cfg.data.max_image_pixels)
    if grid:
        figures.append(Figure(grid, f"real {cfg.data.target_class} train images"))
    for name, caption in (("accepted", "accepted by the gate"), ("rejected", "rejected by the gate")):
        path = ctx.run.root / "gate" / f"{name}.png"
        if path.is_file():
            figures.append(Figure(path, f"synthetic images {caption}"))
    reasons = ", ".join(f"{n} {why}" for why, n in gate["rejected_by_reason"].items()) or "none"
    return Section(
        "Synthetic images and the quality gate",
        paragraphs=[
            f"Generated {gate['images']}; the gate (baseline classifier's {cfg.data.target_class} "
            f"probability >= {gate['threshold']}, no pHash within {gate['near_duplicate_distance']} bits of "
            f"a real image) accepted {gate['accepted']} ({gate['acceptance_rate']:.1%}). "
            f"Rejected: {reasons}.",
            f"Mix: ratio {mix['synthetic_ratio']} asks for {mix['requested']} synthetic images per "
            f"{mix['real_target_images']} real ones; {mix['synthetic']} used"
            + (f" ({mix['shortfall']} short: the gate accepted too few)" if mix["shortfall"] else "")
            + f". The augmented arm trains on {mix['train_images']} images; val and test stay real.",
        ],
        figures=figures,
    )


def _dreambooth_section(ctx: StageContext, info: dict) -> Section:
    grids = info["validation_grids"]
    picks = sorted(
        {grids[round(i)] for i in np.linspace(0, len(grids) - 1, min(len(grids), MAX_VALIDATION_GRIDS))}
    )
    loss = info["final_loss"]
    return Section(
        "DreamBooth",
        paragraphs=[
            f"{info['kind']} fine-tune, {info['steps']} steps on {info['instance_images']} instance and "
            f"{info['class_images']} class images; final loss {loss['loss']:.4f} (instance "
            f"{loss['loss/instance']:.4f}, prior {loss['loss/prior']:.4f}). Validation grids over steps "
            "(rows: validation prompts):",
        ],
        figures=[
            Figure(ctx.run.root / "dreambooth" / "validation" / g, g.removesuffix(".png")) for g in picks
        ],
    )


def _drift_section(ctx: StageContext, drift: dict) -> Section:
    target = drift["target_class"]
    rows = [
        [
            repr(r["prompt"]),
            f"{r['target_share_before']:.3f}",
            f"{r['target_share_after']:.3f}",
            f"{r['feature_distance']:.4f}",
        ]
        for r in drift["prompts"]
    ]
    return Section(
        "Language drift",
        paragraphs=[
            f"The same prompts and seeds before and after the fine-tune ({drift['settings']['samples']} "
            f"samples each), judged by the independent judge classifier. The first prompt is the instance "
            "prompt: its share should rise; the others' should not move.",
        ],
        tables=[Table(["prompt", f"{target} before", f"{target} after", "feature distance"], rows)],
        figures=[
            Figure(ctx.run.root / "drift" / "drift_grid.png", "per prompt: before (top), after (bottom)")
        ],
    )


def stage_seconds(run_root: Path) -> dict[str, float]:
    out = {}
    for marker in sorted(run_root.glob(f"*/{COMPLETE}")):
        info = json.loads(marker.read_text())
        out[info["stage"]] = float(info["seconds"])
    return out


def _report(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    comparison = _read(ctx, "evaluate", "comparison.json")
    gate, mix = _read(ctx, "gate", "summary.json"), _read(ctx, "mix", "summary.json")
    dreambooth, drift = _read(ctx, "dreambooth", "summary.json"), _read(ctx, "drift", "drift.json")
    split = read_split(ctx.run.root / ctx.inputs["split"]["split_csv"])
    y_test = np.asarray([y for _, y in split["test"]])
    probs = arm_probabilities(ctx, TEST_PROBS)
    drawn = (
        ("recall.png", plots.recall_bars(comparison), "test recall per class (error bars: seeds)"),
        ("confusion.png", plots.confusion_matrices(y_test, probs), "confusion matrices"),
        ("roc.png", plots.roc_curves(y_test, probs), "ROC curves, one line per seed"),
    )
    figures = [Figure(plots.save(fig, ctx.dir / name), caption) for name, fig, caption in drawn]
    seconds = stage_seconds(ctx.run.root)
    counts = split_counts(split)
    sections = [
        Section(
            "Run",
            paragraphs=[
                f"Run directory {ctx.run.root}; target class {cfg.data.target_class}; base model "
                f"{cfg.base_model.name_or_path}; classifier {cfg.classifier.arch} at "
                f"{'x'.join(map(str, input_size(cfg.classifier)))}, {cfg.classifier.epochs} epochs.",
            ],
            tables=[
                Table(["split", *CLASSES], [[s, *(str(c[k]) for k in CLASSES)] for s, c in counts.items()])
            ],
        ),
        comparison_section(comparison, figures),
        _synthetic_section(cfg, ctx, split["train"], gate, mix),
        _dreambooth_section(ctx, dreambooth),
        _drift_section(ctx, drift),
        Section(
            "Stage times",
            paragraphs=["Seconds each stage took when it last ran (a skipped stage keeps its earlier time)."],
            tables=[Table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in seconds.items()])],
        ),
    ]
    md, html = write_report(f"leafgen report: {cfg.data.target_class}", sections, ctx.dir)
    metrics = {
        "comparison": comparison,
        "gate": gate,
        "mix": mix,
        "dreambooth": dreambooth,
        "drift": drift,
        "stage_seconds": seconds,
    }
    atomic.write_json(ctx.dir / "metrics.json", metrics)
    return {
        "html": f"{ctx.dir.name}/{html.name}",
        "markdown": f"{ctx.dir.name}/{md.name}",
        "metrics": f"{ctx.dir.name}/metrics.json",
    }


REPORT = Stage(
    name="report",
    summary=lambda o: o["html"],
    fn=_report,
    config_keys=("data.target_class",),
    inputs=("dataset", "split", "dreambooth", "drift", "gate", "mix", "arms", "retrain", "evaluate"),
)
