"""The search report (``<run_dir>/report/``): what was searched, every trial, the objective against each
searched setting, the best configuration and how it did on the held-out test split."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from leafgen.config import PipelineConfig
from leafgen.report import plots
from leafgen.report.document import Figure, Section, Table, write_report
from leafgen.report.stage import comparison_section
from leafgen.tuning.results import TrialRow, objective_plot
from leafgen.tuning.space import Param


def _fmt(value: object) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_search_report(
    cfg: PipelineConfig,
    params: Sequence[Param],
    rows: Sequence[TrialRow],
    header: list[str],
    ranked: list[list],
    best: TrialRow,
    root: Path,
) -> Path:
    folder = root / "report"
    folder.mkdir(parents=True, exist_ok=True)
    t = cfg.tune
    figures = [
        Figure(
            plots.save(objective_plot(rows, p, t), folder / f"objective_vs_{p.key.replace('.', '_')}.png"),
            f"{t.metric} against {p.key}",
        )
        for p in params
    ]
    space = [[p.key, p.kind, ", ".join(map(_fmt, p.args))] for p in params]
    sections = [
        Section(
            "Search",
            paragraphs=[
                f"{len(rows)} trials; search algorithm {t.search_alg}, scheduler {t.scheduler}. Objective: "
                f"{t.metric} ({t.mode}) on the validation split"
                + (f", ties broken by {t.tie_breaker}" if t.tie_breaker else "")
                + ". The held-out test split is used only below, for the best configuration.",
                "Trials with equal DreamBooth settings share one fine-tune and one set of generated images "
                "(the dreambooth_key column).",
            ],
            tables=[Table(["setting", "domain", "values"], space)],
        ),
        Section(
            "Trials",
            paragraphs=["Best first; the same table is results.csv beside the report."],
            tables=[Table(header, [[_fmt(v) for v in row] for row in ranked])],
            figures=figures,
        ),
        Section(
            "Best configuration",
            paragraphs=[
                f"Trial {best.trial_id}: "
                + ", ".join(f"{k} = {_fmt(v)}" for k, v in best.values.items())
                + f". Exported as {root / 'best_config.yaml'} (run it with leafgen run --config).",
            ],
        ),
    ]
    comparison = root / "best" / "evaluate" / "comparison.json"
    if comparison.is_file():
        section = comparison_section(json.loads(comparison.read_text()), [])
        section.title = f"The best configuration on the held-out test split: {section.title.lower()}"
        section.paragraphs.append(f"The whole run's report: {root / 'best' / 'report' / 'report.html'}.")
        sections.append(section)
    _, html = write_report(f"leafgen search: {cfg.data.target_class}", sections, folder)
    return html
