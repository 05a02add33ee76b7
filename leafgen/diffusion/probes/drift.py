"""The language-drift probe: what did fine-tuning do to the instance prompt, and to every other prompt?

Both models draw the same prompts with the same seeds (sample i of every prompt uses seed i), so any
difference comes from the fine-tune. Two kinds of prompt:

- leaf prompts (the instance and class prompts, and any prompt that names a leaf): the independent judge
  (never the gating classifier) gives the share of samples in the target class before and after, each
  with a 95% Wilson interval, and the change with a 95% paired-bootstrap interval over the samples (same
  seed before and after). The instance and class prompts get the most samples (``samples``); the rest
  get ``other_samples``, so their intervals are wider, as they say;
- other prompts (cat, sea, pirate, ...): a four-class leaf classifier has no right answer for them, so
  only the mean cosine distance between each before/after pair in the judge's feature space is reported
  (0: the fine-tune left that prompt's images alone). Leaf prompts get that distance too.

Grids show each prompt as one labelled row, before and after side by side.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binomtest
from torch import nn
from tqdm.auto import tqdm

from leafgen import atomic
from leafgen.classifier.training import input_size, load_classifier
from leafgen.config import PipelineConfig
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.finetune.clusters import instance_prompts
from leafgen.diffusion.probes.evaluate import classifier_features, classifier_probs, generate, prompt_slug
from leafgen.errors import StageError
from leafgen.labels import CLASSES
from leafgen.report.grids import GridRow, labelled_grid, save_grid
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
GRID_SAMPLES = 6
BOOTSTRAP = 2000


@dataclass
class DriftSettings:
    samples: int = 128
    """Samples per model of the measured prompts (the instance and class prompts)."""
    other_samples: int = 8
    """Samples per model of every other prompt: judged shares (wide intervals) for those naming a leaf,
    feature distance only for the rest."""
    steps: int = 20
    """Sampler steps."""
    guidance: float = 3.0
    """Classifier-free guidance scale."""
    batch: int = 32
    """Images per pipeline call."""


def probe_prompts(
    instance_prompt: str | Sequence[str], class_prompt: str = "leaf", extra: Sequence[str] = ()
) -> list[str]:
    """The instance prompt first (the fine-tune's intended effect; one per cluster token of a clustered
    fine-tune), the class prompt next (what prior preservation protects), then the drift prompts and any
    configured ones, deduplicated."""
    instance = [instance_prompt] if isinstance(instance_prompt, str) else list(instance_prompt)
    return list(dict.fromkeys([*instance, class_prompt, *DRIFT_PROMPTS, *extra]))


def is_leaf_prompt(prompt: str, measured: Sequence[str] = ()) -> bool:
    """Whether the judge's shares mean something for ``prompt``: it is one of ``measured`` (the instance
    and class prompts) or names a leaf."""
    return prompt in measured or re.search(r"\bleaf\b", prompt.lower()) is not None


def instance_and_class(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rows of the (first) instance prompt and of the class prompt in a ``drift.json``: the class prompt
    is the last measured one (a clustered fine-tune measures one instance prompt per cluster first)."""
    rows = {row["prompt"]: row for row in result["prompts"]}
    class_prompt = result["measured"][-1] if result.get("measured") else result["prompts"][1]["prompt"]
    return result["prompts"][0], rows[class_prompt]


def wilson(hits: int, n: int) -> list[float]:
    """95% Wilson score interval of a share of ``hits`` in ``n``."""
    ci = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def paired_change(before: np.ndarray, after: np.ndarray, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of mean(after) - mean(before) over paired samples."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(before), size=(BOOTSTRAP, len(before)))
    diffs = after[idx].mean(1) - before[idx].mean(1)
    return [float(v) for v in np.percentile(diffs, [2.5, 97.5])]


def _measure(judge, judge_size, images: dict[str, torch.Tensor], target: int, leaf: bool) -> dict[str, Any]:
    feats = {name: classifier_features(judge, x, judge_size) for name, x in images.items()}
    row: dict[str, Any] = {
        "kind": "leaf" if leaf else "other",
        "samples": len(images["before"]),
        # Clamped: identical pairs come out a rounding error below zero.
        "feature_distance": max(
            0.0, (1 - F.cosine_similarity(feats["before"], feats["after"], dim=1)).mean().item()
        ),
    }
    if not leaf:
        return row
    hits = {
        name: (classifier_probs(judge, x, judge_size).argmax(1) == target).astype(float)
        for name, x in images.items()
    }
    n = len(hits["before"])
    for name in ("before", "after"):
        row[f"target_share_{name}"] = float(hits[name].mean())
        row[f"{name}_ci95"] = wilson(int(hits[name].sum()), n)
    row["change"] = row["target_share_after"] - row["target_share_before"]
    row["change_ci95"] = paired_change(hits["before"], hits["after"])
    return row


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
    measured: Sequence[str] = (),
) -> dict[str, Any]:
    """Sample every prompt from both pipelines, judge them, write grids and ``drift.json`` to ``out``.
    ``measured``: prompts whose shares are measured whatever their words (the instance and class prompts)."""
    settings = settings or DriftSettings()
    out.mkdir(parents=True, exist_ok=True)
    target = CLASSES.index(target_class)
    # A list, not a dict: the JSON is written with sorted keys, and the order of prompts means something.
    result: dict[str, Any] = {
        "target_class": target_class,
        "settings": asdict(settings),
        "measured": list(measured),
        "prompts": [],
    }
    rows = []
    for prompt in tqdm(prompts, desc="drift probe", unit="prompt"):
        leaf = is_leaf_prompt(prompt, measured)
        n = settings.samples if prompt in measured else settings.other_samples
        images = {
            name: generate(pipe, prompt, n, 0, settings.batch, settings.steps, settings.guidance, size)
            for name, pipe in (("before", before), ("after", after))
        }
        result["prompts"].append({"prompt": prompt, **_measure(judge, judge_size, images, target, leaf)})
        k = min(GRID_SAMPLES, n)
        row = GridRow(prompt, [images["before"][:k], images["after"][:k]])
        save_grid(
            labelled_grid([row], block_titles=("before", "after")), out / f"drift_{prompt_slug(prompt)}.png"
        )
        rows.append(row)
    title = (
        f"the same seeds before and after the fine-tune (first {min(GRID_SAMPLES, settings.samples)} samples)"
    )
    save_grid(labelled_grid(rows, title, ("before", "after")), out / "drift_grid.png")
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
    db = cfg.dreambooth
    instance = instance_prompts(db.instance_prompt, db.identifier_token, after)  # one per cluster token
    prompts = probe_prompts(instance, db.class_prompt, db.drift_prompts)
    result = probe_drift(
        *pipes,
        judge,
        input_size(cfg.classifier),
        prompts,
        cfg.data.target_class,
        size,
        out,
        settings,
        measured=(*instance, db.class_prompt),
    )
    result.update(before=before, after=after)
    atomic.write_json(out / RESULT_FILE, result)
    return result


def format_drift(result: dict[str, Any]) -> str:
    target = result["target_class"]
    lines = [f"{'prompt':<28} {target + ' before':>30} {'after':>22} {'change':>24} {'feature distance':>17}"]
    for row in result["prompts"]:
        if row["kind"] == "leaf":
            cells = (
                f"{_share(row['target_share_before'], row['before_ci95']):>30} "
                f"{_share(row['target_share_after'], row['after_ci95']):>22} "
                f"{_share(row['change'], row['change_ci95'], signed=True):>24}"
            )
        else:
            cells = f"{'(not a leaf: not judged)':>30} {'':>22} {'':>24}"
        lines.append(f"{row['prompt']!r:<28} {cells} {row['feature_distance']:>17.4f}")
    return "\n".join(lines)


def _share(value: float, ci: Sequence[float], signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"{fmt.format(value)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _drift(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    from leafgen.diffusion.components import absolute_if_local

    g = cfg.generate
    settings = DriftSettings(
        samples=cfg.eval.drift_samples,
        other_samples=cfg.eval.drift_other_samples,
        steps=g.num_inference_steps,
        guidance=g.guidance_scale,
    )
    after = ctx.input_path("dreambooth", "model_dir")
    ctx.input_path("judge", "model_dir")  # checked here; probe_run loads it
    result = probe_run(cfg, absolute_if_local(cfg.base_model.name_or_path), str(after), ctx.dir, settings)
    instance, cls = instance_and_class(result)
    keys = ("prompt", "target_share_before", "target_share_after", "change", "change_ci95")
    return {
        "result": f"{ctx.dir.name}/{RESULT_FILE}",
        "instance": {k: instance[k] for k in keys},
        "class": {k: cls[k] for k in keys},
    }


def _summary(o: dict[str, Any]) -> str:
    i, c = o["instance"], o["class"]
    return (
        f"{i['prompt']!r} judged target {i['target_share_before']:.1%} -> {i['target_share_after']:.1%} "
        f"({_share(i['change'], i['change_ci95'], signed=True)}); {c['prompt']!r} "
        f"{c['target_share_before']:.1%} -> {c['target_share_after']:.1%}"
    )


# The pipeline's probe: the base model against this run's DreamBooth output, judged by the run's judge.
DRIFT = Stage(
    name="drift",
    summary=_summary,
    fn=_drift,
    config_keys=(
        "base_model",
        "eval.drift_samples",
        "eval.drift_other_samples",
        "dreambooth.class_prompt",
        "generate.num_inference_steps",
        "generate.guidance_scale",
        "dreambooth.instance_prompt",
        "dreambooth.drift_prompts",
        "data.target_class",
    ),
    inputs=("judge", "dreambooth"),
)
