"""Does a base model know leaves? Two measured answers, written with grids for a person to look at.

1. Autoencoder round-trips of the run's held-out test images, classified by the baseline classifier:
   if lesions do not survive encoding, no classifier-based check of generated images means anything.
2. Samples per prompt, classified by the independent judge (another seed than the gating classifier):
   the share put in each class, against the class the prompt asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from leafgen import atomic
from leafgen.classifier.training import input_size, load_classifier
from leafgen.config import PipelineConfig
from leafgen.data.cache import ensure_cached
from leafgen.data.images import image_path
from leafgen.data.split import read_split
from leafgen.data.stages import dataset_root
from leafgen.diffusion.components import load_pipeline
from leafgen.diffusion.probes.evaluate import (
    class_shares,
    classifier_probs,
    generate,
    per_class_accuracy,
    prompt_slug,
    resize_images,
    roundtrip,
    to_unit_float,
)
from leafgen.errors import StageError
from leafgen.labels import CLASSES
from leafgen.stages import RunDir

# Prompt -> the class its samples should show (None: any non-minority leaf).
PROMPTS: dict[str, str | None] = {
    "leaf": None,
    "a photo of a leaf": None,
    "healthy leaf": "healthy",
    "leaf with rust": "rust",
    "leaf with scab": "scab",
}
RESULT_FILE = "base_model_check.json"


@dataclass
class CheckSettings:
    samples: int = 128
    """Samples per prompt."""
    steps: int = 20
    """Sampler steps (the model's own scheduler)."""
    guidance: float = 3.0
    """Classifier-free guidance scale."""
    seed: int = 0
    """Sample i of every prompt uses seed ``seed + i``."""
    batch: int = 64
    """Images per pipeline call."""


def check_base_model(
    cfg: PipelineConfig, out: str | Path, settings: CheckSettings | None = None
) -> dict[str, Any]:
    """Measure ``cfg.base_model`` against the run's classifier and judge; writes grids and a JSON to ``out``.

    The run directory must hold the ``classifier`` and ``judge`` stages (``leafgen run --only ...``).
    """
    settings = settings or CheckSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(cfg.run_dir)
    size = (cfg.base_model.resolution, cfg.base_model.width or cfg.base_model.resolution)
    pipe = load_pipeline(cfg.base_model.name_or_path, cfg.base_model.revision)
    pipe.set_progress_bar_config(disable=True)
    baseline, _ = load_classifier(run.root / _outputs(run, "classifier")["model_dir"])
    judge, _ = load_classifier(run.root / _outputs(run, "judge")["model_dir"])
    clf_size = input_size(cfg.classifier)

    split = read_split(run.root / "split" / "split.csv")
    ids, labels = zip(*split["test"])
    root = dataset_root(cfg, _outputs(run, "dataset"), run.root)
    pixels = np.load(
        ensure_cached([image_path(root / "images", i) for i in ids], clf_size, run.root / "cache"),
        mmap_mode="r",
    )
    originals = to_unit_float(pixels)
    trips = roundtrip(pipe.vae, pixels, size)
    result: dict[str, Any] = {
        "model": cfg.base_model.name_or_path,
        "size": list(size),
        "settings": settings.__dict__,
        "roundtrip_accuracy": per_class_accuracy(
            classifier_probs(baseline, trips, clf_size), labels, CLASSES
        ),
        "original_accuracy": per_class_accuracy(
            classifier_probs(baseline, originals, clf_size), labels, CLASSES
        ),
        "prompts": {},
    }
    save_image(
        torch.cat([resize_images(originals[:8], size), trips[:8]]), out / "roundtrip.png", nrow=8, padding=1
    )
    for prompt, expected in tqdm(PROMPTS.items(), desc="sampling per prompt", unit="prompt"):
        images = generate(
            pipe,
            prompt,
            settings.samples,
            settings.seed,
            settings.batch,
            settings.steps,
            settings.guidance,
            size,
        )
        shares = class_shares(classifier_probs(judge, images, clf_size), CLASSES)
        result["prompts"][prompt] = {"expected": expected, "judge_shares": shares}
        save_image(make_grid(images[:32], nrow=8, padding=1), out / f"samples_{prompt_slug(prompt)}.png")
    atomic.write_json(out / RESULT_FILE, result)
    return result


def _outputs(run: RunDir, stage: str) -> dict[str, Any]:
    marker = run.marker(stage)
    if marker is None:
        raise StageError(f"{run.root}: stage {stage!r} has not completed; run: leafgen run --only {stage}")
    return marker["outputs"]


def format_check(result: dict[str, Any]) -> str:
    """Plain-text table of a check result."""
    lines = ["autoencoder round-trips, baseline classifier accuracy (original -> round-trip):"]
    for c, acc in result["roundtrip_accuracy"].items():
        lines.append(f"  {c:<18} {result['original_accuracy'][c]:.3f} -> {acc:.3f}")
    lines.append(f"samples per prompt ({result['settings']['samples']}), judge's class shares:")
    lines.append("  " + f"{'prompt':<22}" + "".join(f"{c:>19}" for c in CLASSES))
    for prompt, row in result["prompts"].items():
        lines.append("  " + f"{prompt!r:<22}" + "".join(f"{row['judge_shares'][c]:>19.3f}" for c in CLASSES))
    return "\n".join(lines)
