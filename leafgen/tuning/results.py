"""A finished search, as data: one row per trial, the best one, its config, the table and the plots.

Ray-free: ``leafgen.distributed.tune`` turns Tune's result grid into :class:`TrialRow` s and everything
here works on those, so a notebook can rebuild the same table from ``results.csv``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from leafgen import atomic
from leafgen.config import PipelineConfig, TuneConfig, dump_yaml
from leafgen.errors import LeafgenError
from leafgen.tuning.space import Param, apply_values


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    status: str
    """Tune's final status: TERMINATED (finished or stopped early by the scheduler) or ERROR."""
    values: dict[str, Any]
    """The searched settings, by dotted key."""
    metrics: dict[str, Any]
    """The trial's last report (validation metrics, epochs run, synthetic images used)."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rank_trials(rows: Sequence[TrialRow], tune: TuneConfig) -> list[TrialRow]:
    """Trials that ended without error and reported the objective (stopped early by ASHA counts), best
    first: by ``tune.metric``, then ``tune.tie_breaker``."""
    sign = -1.0 if tune.mode == "max" else 1.0
    scored = [r for r in rows if r.status != "ERROR" and _finite(r.metrics.get(tune.metric))]

    def order(row: TrialRow) -> tuple[float, float]:
        tie = row.metrics.get(tune.tie_breaker) if tune.tie_breaker else None
        return sign * row.metrics[tune.metric], sign * tie if _finite(tie) else math.inf

    return sorted(scored, key=order)


def best_trial(rows: Sequence[TrialRow], tune: TuneConfig) -> TrialRow:
    ranked = rank_trials(rows, tune)
    if not ranked:
        errors = sum(r.status == "ERROR" for r in rows)
        raise LeafgenError(
            f"no trial reported {tune.metric!r} ({len(rows)} trials, {errors} failed); see the trial logs "
            "under the Tune experiment folder"
        )
    return ranked[0]


def best_config(cfg: PipelineConfig, best: TrialRow, run_dir: str) -> PipelineConfig:
    """The search's config with the best trial's values, as a plain pipeline config for ``run_dir``."""
    chosen = apply_values(cfg, best.values, where=f"best trial {best.trial_id}")
    return replace(chosen, run_dir=run_dir, tune=TuneConfig())


def write_best_config(cfg: PipelineConfig, best: TrialRow, path: Path) -> Path:
    header = (
        f"# The best configuration of a leafgen tune search (trial {best.trial_id}):\n"
        + "".join(f"#   {k}: {v!r}\n" for k, v in best.values.items())
        + f"# Run it with: leafgen run --config {path.name}\n"
    )
    atomic.write_text(path, header + dump_yaml(cfg))
    return path


def table(
    rows: Sequence[TrialRow], params: Sequence[Param], tune: TuneConfig
) -> tuple[list[str], list[list]]:
    """Header and rows (best first, then trials without the objective) of the results table."""
    metrics = [tune.metric, *([tune.tie_breaker] if tune.tie_breaker else [])]
    extra = ["epochs", "synthetic_images", "dreambooth_key"]
    header = ["rank", "trial", "status", *(p.key for p in params), *metrics, *extra]
    ranked = rank_trials(rows, tune)
    rest = [r for r in rows if r not in ranked]
    out = []
    for i, row in enumerate([*ranked, *rest]):
        rank = i + 1 if i < len(ranked) else ""
        out.append(
            [rank, row.trial_id, row.status, *(row.values.get(p.key) for p in params)]
            + [row.metrics.get(m) for m in metrics]
            + [row.metrics.get(m) for m in extra]
        )
    return header, out


def write_csv(header: list[str], rows: list[list], path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    atomic.write_text(path, buf.getvalue())
    return path


def objective_plot(rows: Sequence[TrialRow], param: Param, tune: TuneConfig):
    """The objective of every trial against one searched setting (log axis for loguniform ranges)."""
    import matplotlib.pyplot as plt

    points = [(r.values[param.key], r.metrics[tune.metric]) for r in rank_trials(rows, tune)]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    categorical = param.kind == "choice" and not all(_finite(v) for v in param.args)
    if categorical:
        labels = [str(v) for v in param.args]
        xs = [labels.index(str(x)) for x, _ in points]
        ax.set_xticks(range(len(labels)), labels)
    else:
        xs = [float(x) for x, _ in points]
    ax.scatter(xs, [y for _, y in points], color="tab:green", alpha=0.8)
    if param.kind == "loguniform" or (param.kind == "choice" and not categorical and _spans_decades(xs)):
        ax.set_xscale("log")
    ax.set_xlabel(param.key)
    ax.set_ylabel(tune.metric)
    ax.set_title(f"{tune.metric} per trial ({tune.mode})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _spans_decades(xs: Sequence[float]) -> bool:
    positive = [x for x in xs if x > 0]
    return len(positive) == len(xs) and len(xs) > 1 and max(positive) / min(positive) >= 100
