"""Plain-text summaries printed at the end of commands."""

from __future__ import annotations

import json
from pathlib import Path

from leafgen.data.split import SPLITS
from leafgen.labels import CLASSES


def format_counts(columns: dict[str, dict[str, int]]) -> str:
    """A class-by-column table of image counts with a total row."""
    names = list(columns)
    width = max(len(c) for c in (*CLASSES, "total"))
    lines = [f"{'class':<{width}}  " + "  ".join(f"{n:>9}" for n in names)]
    for c in CLASSES:
        lines.append(f"{c:<{width}}  " + "  ".join(f"{columns[n].get(c, 0):>9}" for n in names))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{sum(columns[n].values()):>9}" for n in names))
    return "\n".join(lines)


def print_data_summary(run_dir: Path) -> None:
    """Class counts of the dataset and of each split of a run, if those stages are complete."""
    dataset, split = run_dir / "dataset" / "summary.json", run_dir / "split" / "summary.json"
    if not dataset.is_file():
        return
    info = json.loads(dataset.read_text())
    columns = {"train.csv": info["counts"]}
    if split.is_file():
        per_split = json.loads(split.read_text())
        columns.update({name: per_split[name] for name in SPLITS})
    print(
        f"dataset: {info['root']} ({info['train_images']} labelled, "
        f"{info['test_images']} unlabelled test images)"
    )
    if info["skipped"]:
        print(f"skipped {len(info['skipped'])} bad image(s); see {dataset}")
    print(format_counts(columns))


def format_per_class(test: dict[str, float]) -> str:
    """Recall and ROC AUC per class, then overall accuracy and the Kaggle metric (mean column-wise AUC)."""
    lines = [f"{'class':<18} {'recall':>7} {'ROC AUC':>8}"]
    lines += [f"{c:<18} {test[f'recall/{c}']:>7.3f} {test[f'auc/{c}']:>8.3f}" for c in CLASSES]
    lines.append(f"{'accuracy':<18} {test['accuracy']:>7.3f}")
    lines.append(f"{'mean column AUC':<18} {'':>7} {test['mean_auc']:>8.3f}")
    return "\n".join(lines)


def print_classifier_summary(run_dir: Path) -> None:
    """The classifier's held-out test metrics, if that stage is complete."""
    marker = run_dir / "classifier" / "_complete.json"
    if not marker.is_file():
        return
    outputs = json.loads(marker.read_text())["outputs"]
    print(f"classifier (best epoch {outputs['best_epoch']}) on the held-out test split:")
    print(format_per_class(outputs["test"]))


def print_generation_summary(run_dir: Path) -> None:
    """Images generated (with their model time) and what the quality gate kept, if those stages ran."""
    generate, gate = run_dir / "generate" / "_complete.json", run_dir / "gate" / "summary.json"
    if generate.is_file():
        out = json.loads(generate.read_text())
        print(
            f"generated {out['outputs']['images']} images in {out['seconds']:.0f}s "
            f"({out['outputs']['model_seconds']:.1f}s of pipeline time): {run_dir / 'generate'}"
        )
    if gate.is_file():
        info = json.loads(gate.read_text())
        reasons = ", ".join(f"{n} {why}" for why, n in info["rejected_by_reason"].items()) or "none rejected"
        print(
            f"quality gate kept {info['accepted']} of {info['images']} "
            f"({info['acceptance_rate']:.1%}; threshold {info['threshold']}): {reasons}"
        )


def print_dreambooth_summary(run_dir: Path) -> None:
    """Where the DreamBooth output, its validation grids and logs are, and its final losses."""
    summary = run_dir / "dreambooth" / "summary.json"
    if not summary.is_file():
        return
    info = json.loads(summary.read_text())
    loss = info["final_loss"]
    print(
        f"dreambooth ({info['kind']}, {info['steps']} steps, {info['instance_images']} instance and "
        f"{info['class_images']} class images): loss {loss['loss']:.4f} "
        f"(instance {loss['loss/instance']:.4f}, prior {loss['loss/prior']:.4f})"
    )
    print(f"  output: {run_dir / info['model_dir']}")
    print(
        f"  validation grids: {run_dir / 'dreambooth' / 'validation'} ({len(info['validation_grids'])} steps)"
    )
    print(f"  tensorboard --logdir {run_dir / 'dreambooth' / 'ray' / 'tensorboard'}")


def print_comparison_summary(run_dir: Path) -> None:
    """The target class's test recall per arm with each arm's difference from each reference arm, and the
    report's path."""
    evaluate, report = run_dir / "evaluate" / "_complete.json", run_dir / "report" / "_complete.json"
    if evaluate.is_file():
        out = json.loads(evaluate.read_text())["outputs"]
        arms = ", ".join(f"{arm} {value:.3f}" for arm, value in out["target_recall"])
        print(f"target-class recall on the held-out test split (mean over seeds): {arms}")
        for d in out["target_delta"]:
            low, high = d["ci95"]
            print(
                f"  {d['arm']} - {d['reference']}: {d['mean']:+.3f} [{low:+.3f}, {high:+.3f}] {d['verdict']}"
            )
        for warning in out["warnings"]:
            print(f"  warning: {warning}")
    if report.is_file():
        print(f"report: {run_dir / json.loads(report.read_text())['outputs']['html']}")
