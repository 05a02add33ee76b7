"""The ``class_images`` and ``dreambooth`` pipeline stages.

``class_images`` renders ``dreambooth.num_class_images`` images of the class prompt with the base model
through the generation engine (Ray Data), with the sampler settings of ``generate``; it is its own stage so
DreamBooth settings can change without regenerating them. ``dreambooth`` fine-tunes on the train split's
target-class images on Ray Train and exports the output to ``run_dir/dreambooth/model`` (LoRA weights and
learned embeddings, or a pipeline folder), with validation grids per step in ``validation/``, losses in
``ray/history.jsonl`` and TensorBoard logs in ``ray/tensorboard``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leafgen import atomic
from leafgen.config import PipelineConfig
from leafgen.diffusion.components import absolute_if_local
from leafgen.diffusion.generation.manifest import MANIFEST_FILE, read_manifest
from leafgen.diffusion.generation.prompt_table import prompt_table
from leafgen.diffusion.generation.stages import (
    engine_settings,
    render_into_stage,
    table_spec,
    train_sources,
)
from leafgen.stages import Stage, StageContext

MODEL_DIR = "model"
SUMMARY_FILE = "summary.json"


def _class_images(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    db = cfg.dreambooth
    if db.num_class_images == 0:
        return {"manifest": None, "images": 0}
    spec = table_spec(
        cfg,
        num_images=db.num_class_images,
        prompts=(db.class_prompt,),
        seed=db.seed,
        mode="txt2img",
        strength=1.0,
        prefix="class",
    )
    table = render_into_stage(cfg, ctx, prompt_table(spec), engine_settings(cfg))
    return {"manifest": f"{ctx.dir.name}/{MANIFEST_FILE}", "images": table.num_rows}


def _dreambooth(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    from leafgen.diffusion.finetune.train import export_checkpoint
    from leafgen.distributed.torch_trainer import prune_checkpoints
    from leafgen.distributed.train_dreambooth import read_history, train_dreambooth_on_ray

    keep = cfg.dreambooth.keep_checkpoints_after_export
    if (ctx.dir / SUMMARY_FILE).is_file():  # exported before an interruption: never train again
        if not keep:
            prune_checkpoints(ctx.dir / "ray", ctx.run.storage)
        return json.loads((ctx.dir / SUMMARY_FILE).read_text())
    instance = [path for _, path in train_sources(cfg, ctx)]
    classes = []
    if ctx.inputs["class_images"]["manifest"]:  # rows name files relative to the manifest's folder
        manifest = ctx.input_path("class_images", "manifest")
        classes = [manifest.parent / row["file"] for row in read_manifest(manifest)]
    base = absolute_if_local(cfg.base_model.name_or_path)
    result = train_dreambooth_on_ray(
        cfg, base, instance, classes, ctx.dir / "ray", ctx.dir / "validation", run=ctx.run.storage
    )
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as checkpoint:
        export_checkpoint(
            cfg.dreambooth, base, Path(checkpoint), ctx.dir / MODEL_DIR, cfg.base_model.revision
        )
    history = read_history(ctx.dir / "ray")
    last = history[-1]
    summary = {
        "model_dir": f"{ctx.dir.name}/{MODEL_DIR}",
        "kind": "lora" if cfg.dreambooth.lora_rank else "full",
        "instance_images": len(instance),
        "class_images": len(classes),
        "steps": int(last["step"]),
        "final_loss": {k: last[k] for k in ("loss", "loss/instance", "loss/prior")},
        "validation_grids": sorted(p.name for p in (ctx.dir / "validation").glob("step_*.png")),
    }
    atomic.write_json(ctx.dir / SUMMARY_FILE, summary)  # last: the export is complete
    if not keep:
        prune_checkpoints(ctx.dir / "ray", ctx.run.storage)
    return summary


CLASS_IMAGES = Stage(
    name="class_images",
    summary=lambda o: f"{o['images']} class images",
    fn=_class_images,
    config_keys=(
        "base_model",
        "dreambooth.class_prompt",
        "dreambooth.num_class_images",
        "dreambooth.seed",
        "generate.negative_prompt",
        "generate.num_inference_steps",
        "generate.guidance_scale",
        "generate.scheduler",
        "generate.dtype",
    ),
)
DREAMBOOTH = Stage(
    name="dreambooth",
    summary=lambda o: f"{o['kind']}, {o['steps']} steps, final loss {o['final_loss']['loss']:.4f}",
    fn=_dreambooth,
    config_keys=("base_model", "dreambooth", "data.target_class"),
    inputs=("dataset", "split", "class_images"),
)
