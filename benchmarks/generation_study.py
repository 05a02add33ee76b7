"""Ways of making synthetic images, measured against each other on the held-out test split.

A study file (``benchmarks/generation_study.yaml``) names a pipeline config, overrides every method shares
(seeds, arms) and, per method, its own overrides. Each method is a whole ``leafgen run`` in its own run
directory; all of them go through one stage store (the mechanism ``leafgen tune`` uses), so what methods
have in common (data, split, classifiers, judge, the real-data arms, a shared fine-tune) is computed once.
At the end it writes a Markdown table: per method and arm, the target class's test recall and its
difference from each reference arm (95% interval, verdict), the other classes' recall and accuracy
differences, and beside them the generated set's figures (accepted images, the judge's share of the
class, KID against the real class, distance to the nearest real image) and the method's time.

    python benchmarks/generation_study.py benchmarks/generation_study.yaml --out docs/generation_study.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from leafgen.config import load_config
from leafgen.labels import CLASSES
from leafgen.pipeline import run_pipeline
from leafgen.stage_store import StageStore


def run_methods(study: dict[str, Any], root: Path, only: list[str]) -> dict[str, float]:
    store = StageStore(root / "stages")
    seconds = {}
    for name, overrides in study["methods"].items():
        if only and name not in only:
            continue
        cfg = load_config(
            study["config"], [*study.get("overrides", []), *overrides, f"run_dir={root / name}"]
        )
        print(f"== {name}: {' '.join(overrides) or '(the base config)'}", flush=True)
        t0 = time.perf_counter()
        run_pipeline(cfg, store=store)
        seconds[name] = time.perf_counter() - t0
    return seconds


def _d(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{entry['mean']:+.3f} [{low:+.3f}, {high:+.3f}] {entry['verdict']}"


def table(root: Path, methods: list[str], seconds: dict[str, float]) -> str:
    rows, target = [], None
    for name in methods:
        run = root / name
        comparison = json.loads((run / "evaluate" / "comparison.json").read_text())
        measured = json.loads((run / "measure" / "metrics.json").read_text())
        gate = json.loads((run / "gate" / "summary.json").read_text())
        target = comparison["target_class"]
        key = f"recall/{target}"
        kid = measured["kid"]
        share = measured["judge_share"]["accepted"]["share"]
        generated = (
            f"{gate['accepted']}/{gate['images']} accepted; judge {share:.2f}; "
            + (f"KID {kid['mean']:.3f}; " if kid else "")
            + f"nearest real {measured['nearest_real']['median_distance']:.3f}"
        )
        for arm in comparison["arms"]:
            if arm in comparison["references"]:
                continue
            cells = [name, arm, f"{comparison['test'][arm][key]['mean']:.3f}"]
            cells += [_d(comparison["deltas"][ref][arm][key]) for ref in comparison["references"]]
            others = [c for c in CLASSES if c != target]
            cells += [
                " / ".join(
                    f"{comparison['deltas']['baseline'][arm][f'recall/{c}']['mean']:+.3f}" for c in others
                ),
                f"{comparison['deltas']['baseline'][arm]['accuracy']['mean']:+.3f}",
                generated,
                f"{seconds.get(name, float('nan')) / 60:.1f}",
            ]
            rows.append(cells)
    refs = json.loads((root / methods[0] / "evaluate" / "comparison.json").read_text())["references"]
    header = [
        "method",
        "arm",
        f"{target} recall",
        *(f"vs {r} (95% interval)" for r in refs),
        "other classes vs baseline (" + " / ".join(c for c in CLASSES if c != target) + ")",
        "accuracy vs baseline",
        "generated set",
        "minutes",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    base = json.loads((root / methods[0] / "evaluate" / "comparison.json").read_text())
    lines += [
        "",
        "References: "
        + ", ".join(f"{r} {base['test'][r][f'recall/{target}']['mean']:.3f}" for r in base["references"])
        + f" ({target} test recall, seeds {base['seeds']}, {base['test_counts'][target]} test images).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", type=Path)
    ap.add_argument("--only", action="append", default=[], help="run only this method (repeatable)")
    ap.add_argument("--out", type=Path, help="write the Markdown table here too")
    args = ap.parse_args()
    study = yaml.safe_load(args.study.read_text())
    study["config"] = str((args.study.parent / study["config"]).resolve())
    root = Path(study["run_root"]).expanduser()
    seconds_file = root / "seconds.json"
    seconds = json.loads(seconds_file.read_text()) if seconds_file.is_file() else {}
    fresh = run_methods(study, root, args.only)
    seconds.update(
        {k: v for k, v in fresh.items() if v > 60 or k not in seconds}
    )  # a rerun that skipped keeps the first time
    seconds_file.write_text(json.dumps(seconds, indent=2))
    done = [m for m in study["methods"] if (root / m / "evaluate" / "comparison.json").is_file()]
    text = table(root, done, seconds)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
