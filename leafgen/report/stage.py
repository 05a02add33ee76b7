"""The ``report`` stage: ``run_dir/report/`` gets ``report.html`` (self-contained), ``report.md`` and
``metrics.json`` with every figure the run produced: first what happened, in words from the numbers, then
the comparison of the arms, the synthetic images and the gate, DreamBooth and the drift probe with the
judge that measured it, and the stage times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from leafgen import atomic
from leafgen.classifier.export import TEST_PROBS
from leafgen.classifier.training import input_size
from leafgen.config import PipelineConfig
from leafgen.data.images import image_path
from leafgen.data.split import read_split, split_counts
from leafgen.data.stages import dataset_root
from leafgen.evaluation.stage import arm_probabilities
from leafgen.labels import CLASSES
from leafgen.report import plots
from leafgen.report.comparison import comparison_section
from leafgen.report.document import Figure, Section, Table, write_report
from leafgen.report.judge import judge_quality
from leafgen.report.overview import overview
from leafgen.report.sections import dreambooth_section, drift_section, gate_section
from leafgen.stages import COMPLETE, Stage, StageContext

GRID_IMAGES = 16


def _read(ctx: StageContext, stage: str, name: str) -> dict[str, Any]:
    return json.loads((ctx.run.root / stage / name).read_text())


def _synthetic_figures(cfg: PipelineConfig, ctx: StageContext, train: list[tuple[str, int]]) -> list[Figure]:
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
    return figures


def _comparison_figures(cfg: PipelineConfig, ctx: StageContext, comparison: dict, y_test) -> list[Figure]:
    probs = arm_probabilities(cfg, ctx, TEST_PROBS)
    drawn = (
        (
            "tradeoff.png",
            plots.tradeoff_scatter(comparison),
            f"{cfg.data.target_class} recall against the other classes' mean recall: small points are "
            "seeds, large points the arms' means",
        ),
        ("recall.png", plots.recall_bars(comparison), "test recall per class (error bars: seeds)"),
        ("confusion.png", plots.confusion_matrices(y_test, probs), "confusion matrices"),
        ("roc.png", plots.roc_curves(y_test, probs), "ROC curves, one line per seed"),
    )
    return [Figure(plots.save(fig, ctx.dir / name), caption) for name, fig, caption in drawn]


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
    judge = _read(ctx, "judge", "metrics.json")["test"]
    measured = _read(ctx, "measure", "metrics.json")
    allocation_file = ctx.run.root / "generate" / "allocation.json"
    allocation = json.loads(allocation_file.read_text()) if allocation_file.is_file() else None
    quality = judge_quality(judge, cfg.data.target_class, cfg.eval.judge)
    split = read_split(ctx.run.root / ctx.inputs["split"]["split_csv"])
    y_test = np.asarray([y for _, y in split["test"]])
    seconds = stage_seconds(ctx.run.root)
    counts = split_counts(split)
    j = cfg.eval.judge
    sections = [
        Section("What happened", paragraphs=overview(comparison, drift, quality)),
        comparison_section(comparison, _comparison_figures(cfg, ctx, comparison, y_test)),
        gate_section(
            gate,
            mix,
            measured,
            allocation,
            cfg.data.target_class,
            _synthetic_figures(cfg, ctx, split["train"]),
        ),
        dreambooth_section(ctx.run.root / "dreambooth", dreambooth),
        drift_section(ctx.run.root / "drift", drift, quality, ctx.run.root / "judge" / "confusion_test.png"),
        Section(
            "Run",
            paragraphs=[
                f"Run directory {ctx.run.root}; target class {cfg.data.target_class}; base model "
                f"{cfg.base_model.name_or_path}; classifier {cfg.classifier.arch} at "
                f"{'x'.join(map(str, input_size(cfg.classifier)))}, {cfg.classifier.epochs} epochs; judge "
                f"{j.epochs} epochs, seed {j.seed}, balance {j.balance}.",
                "Seconds each stage took when it last ran (a skipped stage keeps its earlier time).",
            ],
            tables=[
                Table(["split", *CLASSES], [[s, *(str(c[k]) for k in CLASSES)] for s, c in counts.items()]),
                Table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in seconds.items()]),
            ],
        ),
    ]
    md, html = write_report(f"leafgen report: {cfg.data.target_class}", sections, ctx.dir)
    metrics = {
        "comparison": comparison,
        "gate": gate,
        "mix": mix,
        "dreambooth": dreambooth,
        "drift": drift,
        "judge": {"test": judge, **quality},
        "generated_set": measured,
        "allocation": allocation,
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
    config_keys=("data.target_class", "eval.judge"),
    inputs=(
        "dataset",
        "split",
        "judge",
        "dreambooth",
        "drift",
        "generate",
        "gate",
        "measure",
        "mix",
        "arms",
        "retrain",
        "evaluate",
    ),
)
