"""Judge recipes on a run's own split: what each one finds of the target class, and what it over-calls.

The judge counts the target class in generated images, so it must find the class in real images (recall)
without calling other classes' images the target (for multiple_diseases: rust leaves). This trains each
recipe given (``KEY=VALUE,...`` overrides of the classifier section plus ``balance``) in one process, on
the train split of a run directory whose dataset and split stages are complete, picks the best epoch on
validation as the pipeline does, and prints its validation figures at that epoch (what a recipe may be
chosen on) beside its held-out test figures (what the report states, never a basis for choosing), per seed
and as a mean over ``--seeds``:

    leafgen run --config configs/demo.yaml --only dataset --only split
    python benchmarks/judge_recipes.py --run runs/demo --seeds 1000 1001 \
        "balance=sampling,epochs=8" "balance=loss,epochs=8"
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from leafgen.classifier.export import predict_split
from leafgen.classifier.metrics import classification_metrics
from leafgen.classifier.stage import cache_split_arrays, recipe_config
from leafgen.classifier.training import META_FILE, MODEL_FILE, SplitArrays, fit
from leafgen.config import load_config
from leafgen.report.judge import judge_quality
from leafgen.stages import RunDir, StageContext


def train_recipe(cfg, arrays: dict[str, Path], folder: Path) -> tuple[dict, float]:
    train = SplitArrays(np.load(arrays["train_images"], mmap_mode="r"), np.load(arrays["train_labels"]))
    val = SplitArrays(np.load(arrays["val_images"], mmap_mode="r"), np.load(arrays["val_labels"]))
    best = {"score": -math.inf}
    metric = cfg.classifier.checkpoint_metric

    def report(metrics: dict, checkpoint: Path | None) -> None:
        score = metrics.get(metric, -math.inf)
        if checkpoint is not None and score >= best["score"]:
            best.update(score=score, epoch=metrics["epoch"], val=metrics)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for name in (MODEL_FILE, META_FILE):
                shutil.copy2(checkpoint / name, folder / name)

    t0 = time.perf_counter()
    fit(cfg.classifier, train, val, report, target_class=cfg.data.target_class)
    probs = predict_split(folder, np.load(arrays["test_images"], mmap_mode="r"), False)
    test = classification_metrics(np.load(arrays["test_labels"]), probs, cfg.data.target_class)
    val = {k.removeprefix("val/"): v for k, v in best["val"].items() if k.startswith("val/")}
    return {"test": test, "val": val, "best_epoch": best["epoch"]}, time.perf_counter() - t0


def _line(figures: dict) -> str:
    called = " ".join(f"{c[:4]} {v:.3f}" for c, v in figures["called_target"].items())
    return f"acc {figures['accuracy']:.3f} recall {figures['target_recall']:.3f} called: {called}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", type=Path, default=Path("runs/demo"), help="run directory with dataset and split"
    )
    ap.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    ap.add_argument("recipes", nargs="+", help="comma-separated overrides, e.g. balance=sampling,epochs=8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_config(args.config, [f"run_dir={args.run}"])
    run = RunDir(base.run_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(run, Path(tmp), {n: run.marker(n)["outputs"] for n in ("dataset", "split")})
        arrays = cache_split_arrays(base, ctx)
        for recipe in args.recipes:
            settings = dict(item.split("=", 1) for item in recipe.split(","))
            balance = settings.pop("balance", "sampling")
            for seed in args.seeds:
                cfg = recipe_config(base, balance, seed)
                cfg = replace(
                    cfg, classifier=replace(cfg.classifier, **{k: _value(v) for k, v in settings.items()})
                )
                out, seconds = train_recipe(cfg, arrays, Path(tmp) / "model")
                row = {
                    "recipe": recipe,
                    "seed": seed,
                    "val": judge_quality(out["val"], base.data.target_class, base.eval.judge),
                    "test": judge_quality(out["test"], base.data.target_class, base.eval.judge),
                    "best_epoch": out["best_epoch"],
                    "seconds": seconds,
                }
                rows.append(row)
                print(
                    f"{recipe} seed {seed} (best epoch {row['best_epoch']}, {seconds:.0f}s)\n"
                    f"    val  {_line(row['val'])}\n    test {_line(row['test'])}",
                    flush=True,
                )
    print(f"\nmeans over seeds {args.seeds}:")
    for recipe in args.recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        for split in ("val", "test"):
            mean = {
                "accuracy": np.mean([r[split]["accuracy"] for r in mine]),
                "target_recall": np.mean([r[split]["target_recall"] for r in mine]),
                "called_target": {
                    c: np.mean([r[split]["called_target"][c] for r in mine])
                    for c in mine[0][split]["called_target"]
                },
            }
            print(f"{recipe:<44} {split:<4} {_line(mean)}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2, default=float))


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


if __name__ == "__main__":
    main()
