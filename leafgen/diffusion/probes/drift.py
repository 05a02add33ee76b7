"""The language-drift probe: what did fine-tuning do to prompts other than the instance prompt?

Both models draw the same prompts with the same seeds (sample i of every prompt uses seed i), so any
difference comes from the fine-tune. Per prompt, the independent judge (never the gating classifier) gives
the share of samples in the target class before and after, and the mean cosine distance between each
before/after pair in the judge's feature space (0: the fine-tune left that prompt's images alone). Grids
put the before row above the after row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from leafgen import atomic
from leafgen.classifier.training import input_size, load_classifier
from leafgen.config import PipelineConfig
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.probes.evaluate import classifier_features, classifier_probs, generate, prompt_slug
from leafgen.errors import StageError
from leafgen.labels import CLASSES
from leafgen.stages import RunDir, Stage, StageContext

# The prompts of the DreamBooth paper's drift check, plus the class words of this task.
DRIFT_PROMPTS = (
    "a photo of a leaf",
    "leaf",
    "a photo",
    "photo",
    "cat",
    "sea",
    "pirate",
    "illustration",
    "animation",
    "wallpaper",
)
RESULT_FILE = "drift.json"
GRID_SAMPLES = 8


@dataclass
class DriftSettings:
    samples: int = 128
    """Samples per prompt and model."""
    steps: int = 20
    """Sampler steps."""
    guidance: float = 3.0
    """Classifier-free guidance scale."""
    batch: int = 32
    """Images per pipeline call."""


def probe_prompts(instance_prompt: str, extra: Sequence[str] = ()) -> list[str]:
    """The instance prompt first (the fine-tune's intended effect), then the drift prompts, deduplicated."""
    return list(dict.fromkeys([instance_prompt, *DRIFT_PROMPTS, *extra]))


def probe_drift(
    before: Any,
    after: Any,
    judge: nn.Module,
    judge_size: tuple[int, int],
    prompts: Sequence[str],
    target_class: str,
    size: tuple[int, int],
    out: Path,
    settings: DriftSettings | None = None,
) -> dict[str, Any]:
    """Sample every prompt from both pipelines, judge them, write grids and ``drift.json`` to ``out``."""
    settings = settings or DriftSettings()
    out.mkdir(parents=True, exist_ok=True)
    target = CLASSES.index(target_class)
    # A list, not a dict: the JSON is written with sorted keys, and the order of prompts means something.
    result: dict[str, Any] = {"target_class": target_class, "settings": asdict(settings), "prompts": []}
    rows, k = [], min(GRID_SAMPLES, settings.samples)
    for prompt in tqdm(prompts, desc="drift probe", unit="prompt"):
        images = {
            name: generate(
                pipe, prompt, settings.samples, 0, settings.batch, settings.steps, settings.guidance, size
            )
            for name, pipe in (("before", before), ("after", after))
        }
        shares = {
            name: float((classifier_probs(judge, x, judge_size).argmax(1) == target).mean())
            for name, x in images.items()
        }
        feats = {name: classifier_features(judge, x, judge_size) for name, x in images.items()}
        distance = (1 - F.cosine_similarity(feats["before"], feats["after"], dim=1)).mean().item()
        result["prompts"].append(
            {
                "prompt": prompt,
                "target_share_before": shares["before"],
                "target_share_after": shares["after"],
                "feature_distance": distance,
            }
        )
        pair = torch.cat([images["before"][:k], images["after"][:k]])
        save_image(make_grid(pair, nrow=k, padding=1), out / f"drift_{prompt_slug(prompt)}.png")
        rows.append(pair)
    save_image(make_grid(torch.cat(rows), nrow=k, padding=1), out / "drift_grid.png")
    atomic.write_json(out / RESULT_FILE, result)
    return result


def probe_run(
    cfg: PipelineConfig, before: str, after: str, out: Path, settings: DriftSettings | None = None
) -> dict[str, Any]:
    """The probe for a run: ``before`` a base model, ``after`` a DreamBooth output (a pipeline folder, or
    LoRA weights / learned embeddings applied to ``before``), judged by the run's ``judge`` stage."""
    run = RunDir(cfg.run_dir)
    marker = run.marker("judge")
    if marker is None:
        raise StageError(f"{run.root}: the judge stage has not completed; run: leafgen run --only judge")
    judge, _ = load_classifier(run.root / marker["outputs"]["model_dir"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    revision = cfg.base_model.revision
    pipes = [
        load_generation_pipeline(EngineSettings(before, revision), device),
        load_generation_pipeline(EngineSettings(before, revision, adapter=after), device),
    ]
    size = (cfg.base_model.resolution, cfg.base_model.width or cfg.base_model.resolution)
    prompts = probe_prompts(cfg.dreambooth.instance_prompt, cfg.dreambooth.drift_prompts)
    result = probe_drift(
        *pipes, judge, input_size(cfg.classifier), prompts, cfg.data.target_class, size, out, settings
    )
    result.update(before=before, after=after)
    atomic.write_json(out / RESULT_FILE, result)
    return result


def format_drift(result: dict[str, Any]) -> str:
    target = result["target_class"]
    lines = [f"{'prompt':<28} {target + ' before':>24} {'after':>8} {'feature distance':>17}"]
    for row in result["prompts"]:
        lines.append(
            f"{row['prompt']!r:<28} {row['target_share_before']:>24.3f} {row['target_share_after']:>8.3f} "
            f"{row['feature_distance']:>17.4f}"
        )
    return "\n".join(lines)


def _drift(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    from leafgen.diffusion.components import absolute_if_local

    g = cfg.generate
    settings = DriftSettings(
        samples=cfg.eval.drift_samples, steps=g.num_inference_steps, guidance=g.guidance_scale
    )
    after = ctx.input_path("dreambooth", "model_dir")
    ctx.input_path("judge", "model_dir")  # checked here; probe_run loads it
    result = probe_run(cfg, absolute_if_local(cfg.base_model.name_or_path), str(after), ctx.dir, settings)
    instance = result["prompts"][0]
    return {
        "result": f"{ctx.dir.name}/{RESULT_FILE}",
        "instance_prompt": instance["prompt"],
        "target_share_before": instance["target_share_before"],
        "target_share_after": instance["target_share_after"],
    }


# The pipeline's probe: the base model against this run's DreamBooth output, judged by the run's judge.
DRIFT = Stage(
    name="drift",
    summary=lambda o: (
        f"{o['instance_prompt']!r} judged target {o['target_share_before']:.1%} before, "
        f"{o['target_share_after']:.1%} after"
    ),
    fn=_drift,
    config_keys=(
        "base_model",
        "eval.drift_samples",
        "generate.num_inference_steps",
        "generate.guidance_scale",
        "dreambooth.instance_prompt",
        "dreambooth.drift_prompts",
        "data.target_class",
    ),
    inputs=("judge", "dreambooth"),
)
