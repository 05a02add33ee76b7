"""The ``classifier`` pipeline stage: cache the split's images, train on Ray, export the best model and
measure it on the held-out test split.

Outputs under ``run_dir/classifier/``: ``model/`` (``model.safetensors`` + ``classifier.json``),
``metrics.json`` (per-epoch validation history, best epoch, test metrics), ``confusion_test.png`` and
TensorBoard logs in ``ray/tensorboard``. Ray is imported only through ``leafgen.distributed``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from leafgen import atomic
from leafgen.classifier.export import LOG_DIR, export_run
from leafgen.classifier.metrics import save_confusion_matrix
from leafgen.classifier.runs import spec_for
from leafgen.classifier.training import input_size
from leafgen.config import PipelineConfig
from leafgen.data.cache import ensure_cached
from leafgen.data.images import image_path
from leafgen.data.split import read_split
from leafgen.data.stages import dataset_root
from leafgen.errors import ConfigError
from leafgen.run_storage import RunStorage
from leafgen.stages import Stage, StageContext

CACHE_DIR = "cache"


def cache_split_arrays(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Path]:
    """Decode each split once into the run's cache; labels go beside the stage. Returns .npy paths."""
    root = dataset_root(cfg, ctx.inputs["dataset"], ctx.run.root)
    split = read_split(ctx.input_path("split", "split_csv"))
    arrays: dict[str, Path] = {}
    for name in ("train", "val", "test"):
        ids, labels = zip(*split[name])
        paths = [image_path(root / "images", i) for i in ids]
        arrays[f"{name}_images"] = ensure_cached(
            paths,
            input_size(cfg.classifier),
            ctx.run.root / CACHE_DIR,
            cfg.data.max_image_pixels,
            cfg.data.decode_workers,
        )
        arrays[f"{name}_labels"] = ctx.dir / "arrays" / f"{name}_labels.npy"
        arrays[f"{name}_labels"].parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(arrays[f"{name}_labels"]) as tmp:
            np.save(tmp, np.asarray(labels, dtype=np.int64))
    return arrays


def train_and_export(
    cfg: PipelineConfig, arrays: dict[str, Path], out: Path, run: RunStorage | None = None
) -> dict[str, Any]:
    """One training on Ray into ``out`` (resuming an interrupted one there), exported: ``out/model``, the
    val and test probabilities and ``metrics.json``; returns the metrics. Then the training's checkpoints
    are pruned (unless ``classifier.keep_checkpoints_after_export``). ``run``: the run's open storage."""
    from leafgen.distributed.train_classifier import prune_training, read_history, train_runs_on_ray

    run = run or RunStorage.open(cfg.run_dir)
    spec = spec_for(out.name, out, cfg.classifier, arrays, cfg.data.target_class)
    train_runs_on_ray(cfg, [spec], out / LOG_DIR, run=run)
    metrics = export_run(spec, arrays, cfg.classifier.flip_tta, read_history)
    if not cfg.classifier.keep_checkpoints_after_export:
        prune_training(out / LOG_DIR, [out], run)
    return metrics


def _run(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    metrics = train_and_export(cfg, cache_split_arrays(cfg, ctx), ctx.dir, ctx.run.storage)
    test = metrics["test"]
    save_confusion_matrix(test["confusion_matrix"], ctx.dir / "confusion_test.png", "held-out test split")
    summary = {k: v for k, v in test.items() if k != "confusion_matrix"}
    return {"model_dir": f"{ctx.dir.name}/model", "best_epoch": metrics["best_epoch"], "test": summary}


def recipe_config(cfg: PipelineConfig, balance: str, seed: int) -> PipelineConfig:
    """``cfg`` with the classifier at ``seed`` and the rebalancing ``balance`` names: none, class-balanced
    sampling or a class-weighted loss."""
    c = replace(
        cfg.classifier,
        seed=seed,
        balanced_sampling=balance == "sampling",
        class_weighted_loss=balance == "loss",
    )
    return replace(cfg, classifier=c)


def judge_config(cfg: PipelineConfig) -> PipelineConfig:
    """The judge's own recipe (``eval.judge``): its seed, rebalancing, epochs and worker count; unset
    fields are the classifier's."""
    j = cfg.eval.judge
    out = recipe_config(cfg, j.balance, j.seed)
    given = {
        "learning_rate": j.learning_rate,
        "label_smoothing": j.label_smoothing,
        "checkpoint_metric": j.checkpoint_metric,
        "num_workers": j.num_workers,
    }
    c = replace(out.classifier, epochs=j.epochs, **{k: v for k, v in given.items() if v is not None})
    return replace(out, classifier=c)


def _check_judge(cfg: PipelineConfig) -> None:
    # A pipeline rule, not a config one: recipes derived from the config (an arm at seed n) may share it.
    if cfg.eval.judge.seed == cfg.classifier.seed:
        raise ConfigError(
            f"eval.judge.seed ({cfg.eval.judge.seed}) must differ from classifier.seed: the judge must not "
            "be the model that gates generated images"
        )


def _run_judge(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    return _run(judge_config(cfg), ctx)


def _summary(outputs: dict[str, Any]) -> str:
    test = outputs["test"]
    return f"test accuracy {test['accuracy']:.3f}, target recall {test['target_recall']:.3f}"


CLASSIFIER = Stage(
    name="classifier",
    summary=_summary,
    fn=_run,
    config_keys=("classifier", "data.target_class"),
    inputs=("dataset", "split"),
)

# The independent judge (DESIGN.md): its own recipe (eval.judge: class-balanced by default, more epochs)
# with another seed. It measures what generated images show; the baseline classifier gates them, so no
# claim is checked by the model that selected the images.
JUDGE = Stage(
    name="judge",
    summary=_summary,
    fn=_run_judge,
    config_keys=(
        "classifier",
        "eval.judge.seed",
        "eval.judge.balance",
        "eval.judge.epochs",
        "eval.judge.learning_rate",
        "eval.judge.label_smoothing",
        "eval.judge.checkpoint_metric",
        "eval.judge.num_workers",
        "data.target_class",
    ),
    inputs=("dataset", "split"),
    check=_check_judge,
)
