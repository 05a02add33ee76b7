"""The ``classifier`` pipeline stage: cache the split's images, train on Ray, export the best model and
measure it on the held-out test split.

Outputs under ``run_dir/classifier/``: ``model/`` (``model.safetensors`` + ``classifier.json``),
``metrics.json`` (per-epoch validation history, best epoch, test metrics), ``confusion_test.png`` and
TensorBoard logs in ``ray/tensorboard``. Ray is imported only through ``leafgen.distributed``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from leafgen import atomic
from leafgen.classifier.engine import ArrayDataset, eval_transform, predict_probs
from leafgen.classifier.metrics import classification_metrics, save_confusion_matrix
from leafgen.classifier.training import (
    META_FILE,
    MODEL_FILE,
    export_weights,
    input_size,
    load_classifier,
)
from leafgen.config import PipelineConfig
from leafgen.data.cache import ensure_cached
from leafgen.data.images import image_path
from leafgen.data.split import read_split
from leafgen.data.stages import dataset_root
from leafgen.errors import ConfigError
from leafgen.run_storage import RunStorage
from leafgen.stages import Stage, StageContext

CACHE_DIR = "cache"
TEST_PROBS = "test_probs.npy"
METRICS_FILE = "metrics.json"


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


def predict_split(model_dir: Path, images: np.ndarray, flip_tta: bool) -> np.ndarray:
    """(N, C) class probabilities of a trained classifier on cached images."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_classifier(model_dir, device)
    labels = np.zeros(len(images), dtype=np.int64)
    loader = DataLoader(ArrayDataset(images, labels, eval_transform()), batch_size=64)
    return predict_probs(model, loader, device, flip_tta)


def train_and_export(
    cfg: PipelineConfig, arrays: dict[str, Path], out: Path, run: RunStorage | None = None
) -> dict[str, Any]:
    """Train on Ray into ``out/ray`` (resuming an interrupted run there), export the best checkpoint to
    ``out/model`` and measure it on the held-out test split; writes ``metrics.json`` and the test
    probabilities (``test_probs.npy``) and returns the metrics. ``run``: the run's open storage. Then the
    Ray checkpoints are pruned (unless ``classifier.keep_checkpoints_after_export``)."""
    from leafgen.distributed.torch_trainer import prune_checkpoints
    from leafgen.distributed.train_classifier import read_history, train_on_ray

    run = run or RunStorage.open(cfg.run_dir)
    if (out / METRICS_FILE).is_file():  # exported and measured before an interruption: never train again
        if not cfg.classifier.keep_checkpoints_after_export:
            prune_checkpoints(out / "ray", run)
        return json.loads((out / METRICS_FILE).read_text())
    result = train_on_ray(cfg, arrays, out / "ray", run=run)
    best = result.get_best_checkpoint(cfg.classifier.checkpoint_metric, "max")
    model_dir = out / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    with best.as_directory() as src:
        model_dir.mkdir(parents=True)
        shutil.copy2(Path(src) / META_FILE, model_dir / META_FILE)
        export_weights(Path(src) / MODEL_FILE, model_dir / MODEL_FILE)  # float16: the test probs use them
    _, meta = load_classifier(model_dir)
    probs = predict_split(model_dir, np.load(arrays["test_images"], mmap_mode="r"), cfg.classifier.flip_tta)
    with atomic.atomic_path(out / TEST_PROBS) as tmp:
        np.save(tmp, probs)
    test = classification_metrics(np.load(arrays["test_labels"]), probs, cfg.data.target_class)
    history = read_history(out / "ray")
    metrics = {"best_epoch": meta["epoch"] + 1, "best_val": meta["metrics"], "test": test, "history": history}
    with SummaryWriter(str(out / "ray" / "tensorboard")) as writer:
        for key, value in test.items():
            if key != "confusion_matrix":
                writer.add_scalar(f"test/{key}", value, meta["epoch"] + 1)
    atomic.write_json(out / METRICS_FILE, metrics)  # last: the export is complete
    if not cfg.classifier.keep_checkpoints_after_export:
        prune_checkpoints(out / "ray", run)
    return metrics


def _run(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    metrics = train_and_export(cfg, cache_split_arrays(cfg, ctx), ctx.dir, ctx.run.storage)
    test = metrics["test"]
    save_confusion_matrix(test["confusion_matrix"], ctx.dir / "confusion_test.png", "held-out test split")
    summary = {k: v for k, v in test.items() if k != "confusion_matrix"}
    return {"model_dir": f"{ctx.dir.name}/model", "best_epoch": metrics["best_epoch"], "test": summary}


def recipe_config(cfg: PipelineConfig, balanced: bool, seed: int) -> PipelineConfig:
    """``cfg`` with the classifier at ``seed``: the plain recipe, or the class-balanced one that
    ``eval.balance`` names (balanced sampling or a class-weighted loss)."""
    c = replace(cfg.classifier, seed=seed, balanced_sampling=False, class_weighted_loss=False)
    if balanced:
        flag = "balanced_sampling" if cfg.eval.balance == "sampling" else "class_weighted_loss"
        c = replace(c, **{flag: True})
    return replace(cfg, classifier=c)


def judge_config(cfg: PipelineConfig) -> PipelineConfig:
    """The judge's recipe: the arm ``eval.judge_recipe`` names, at ``eval.judge_seed``."""
    return recipe_config(cfg, cfg.eval.judge_recipe == "balanced", cfg.eval.judge_seed)


def _check_judge(cfg: PipelineConfig) -> None:
    if cfg.eval.judge_seed == cfg.classifier.seed:
        raise ConfigError(
            f"eval.judge_seed ({cfg.eval.judge_seed}) must differ from classifier.seed: the judge must not "
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

# The independent judge (DESIGN.md): an arm's recipe (class-balanced by default) with another seed. It
# measures what generated images show; the baseline classifier gates them, so no claim is checked by the
# model that selected the images.
JUDGE = Stage(
    name="judge",
    summary=_summary,
    fn=_run_judge,
    config_keys=("classifier", "eval.judge_seed", "eval.judge_recipe", "eval.balance", "data.target_class"),
    inputs=("dataset", "split"),
    check=_check_judge,
)
