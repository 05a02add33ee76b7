"""The ``class_images`` and ``dreambooth`` pipeline stages.

``class_images`` renders ``dreambooth.num_class_images`` images of the class prompt with the base model
through the generation engine (Ray Data), with the sampler settings of ``generate``; it is its own stage so
DreamBooth settings can change without regenerating them. ``dreambooth`` fine-tunes (``dreambooth.method``:
DreamBooth or textual inversion) on the train split's target-class images on Ray Train and exports the
output to ``run_dir/dreambooth/model`` (LoRA weights and learned embeddings, a pipeline folder, or learned
embeddings alone), with validation grids per step in ``validation/``, losses in ``ray/history.jsonl`` and
TensorBoard logs in ``ray/tensorboard``. With ``dreambooth.clusters`` it first clusters the images
(``clusters.json``, copied into the model folder) and draws ``clusters.png``: each cluster's real images
beside samples of its prompt.

The clustering embeds images with the run's gating classifier where the stage list has the ``classifier``
stage (the pipeline and Tune: ``DREAMBOOTH_AFTER_CLASSIFIER``, keyed on it only when clustering), else
with the committed backbone (``leafgen dreambooth``: ``DREAMBOOTH``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from leafgen import atomic
from leafgen.classifier.backbone import BackboneRecipe
from leafgen.classifier.model import build_classifier
from leafgen.classifier.training import input_size, load_classifier
from leafgen.config import PipelineConfig
from leafgen.data.split import read_split
from leafgen.diffusion.components import absolute_if_local, load_tokenizer
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.finetune.clusters import (
    CLUSTERS_FILE,
    GRID_FILE,
    Clustering,
    check_cluster_count,
    cluster_images,
    clusters_grid,
    describe,
    image_features,
    real_images_per_cluster,
    write_clusters,
)
from leafgen.diffusion.finetune.identifier import check_new_tokens, cluster_tokens, single_token_id
from leafgen.diffusion.finetune.output import output_kind
from leafgen.diffusion.generation.manifest import MANIFEST_FILE, read_manifest
from leafgen.diffusion.generation.prompt_table import prompt_table
from leafgen.diffusion.generation.stages import (
    engine_settings,
    render_into_stage,
    table_spec,
    train_sources,
)
from leafgen.diffusion.probes.evaluate import generate
from leafgen.errors import ConfigError, LeafgenError
from leafgen.labels import CLASSES
from leafgen.stages import RunDir, Stage, StageContext

MODEL_DIR = "model"
GRID_PER_CLUSTER = 4
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


def _target_train_images(cfg: PipelineConfig) -> int | None:
    """How many target-class train images the run's split holds; None before the split exists."""
    run = RunDir(cfg.run_dir)
    marker = run.marker("split")
    if marker is None:
        return None
    path = run.root / marker["outputs"]["split_csv"]
    run.storage.pull(path)
    if not path.is_file():  # damaged: the split is redone before this stage runs, and checked again then
        return None
    target = CLASSES.index(cfg.data.target_class)
    return sum(label == target for _, label in read_split(path)["train"])


def _check_dreambooth(cfg: PipelineConfig) -> None:
    """Identifier tokens against the base model's vocabulary, and the cluster count against the split's
    target-class images: refused naming the key, before the stage clears its old outputs."""
    db = cfg.dreambooth
    tokenizer = load_tokenizer(cfg.base_model.name_or_path, cfg.base_model.revision)
    if db.new_token:
        most = db.max_clusters if db.clusters == "auto" else int(db.clusters)
        check_new_tokens(tokenizer, [db.identifier_token, *cluster_tokens(db.identifier_token, most)])
    else:
        try:
            single_token_id(tokenizer, db.identifier_token, "dreambooth.identifier_token")
        except LeafgenError as exc:
            raise ConfigError(str(exc)) from None
    images = _target_train_images(cfg)
    if images is not None and db.clusters != 1:
        check_cluster_count(db.clusters, images, cfg.data.target_class)


def _feature_model(cfg: PipelineConfig, ctx: StageContext) -> tuple[torch.nn.Module, tuple[int, int], str]:
    """What embeds images for clustering: the run's gating classifier when this stage list has one, else
    the committed backbone (pretrained without the target class)."""
    if "classifier" in ctx.inputs:
        model, meta = load_classifier(ctx.run.root / ctx.inputs["classifier"]["model_dir"])
        return model, (meta["image_size"], round(meta["image_size"] * 3 / 2)), "the classifier stage's model"
    recipe = BackboneRecipe().classifier
    model = build_classifier(recipe.arch, "embedded").eval()
    return model, input_size(recipe), "the embedded backbone (leafgen/assets/leaf-resnet18)"


def _cluster(cfg: PipelineConfig, ctx: StageContext, sources: list[tuple[str, Path]]) -> Clustering:
    db = cfg.dreambooth
    model, size, described = _feature_model(cfg, ctx)
    features = image_features([p for _, p in sources], model, size)
    clustering = cluster_images(
        [i for i, _ in sources],
        features,
        db.clusters,
        db.max_clusters,
        db.seed,
        db.identifier_token,
        described,
    )
    write_clusters(clustering, ctx.dir / CLUSTERS_FILE)
    print(f"[dreambooth] {describe(clustering)}", flush=True)
    return clustering


def _draw_clusters_grid(
    cfg: PipelineConfig, base: str, model_dir: Path, clustering: Clustering, sources: list, out: Path
) -> None:
    """Each cluster's real train images beside samples of its prompt from the exported fine-tune."""
    b, g = cfg.base_model, cfg.generate
    size = (b.resolution, b.width or b.resolution)
    pipe = load_generation_pipeline(EngineSettings(base, b.revision, str(model_dir)), torch.device("cpu"))
    paths = [p for _, p in sources]
    real = real_images_per_cluster(paths, clustering.labels, clustering.k, size, GRID_PER_CLUSTER)
    samples = []
    for token in clustering.tokens:
        prompt = cfg.dreambooth.instance_prompt.replace(cfg.dreambooth.identifier_token, token)
        samples.append(
            generate(
                pipe,
                prompt,
                GRID_PER_CLUSTER,
                0,
                GRID_PER_CLUSTER,
                g.num_inference_steps,
                g.guidance_scale,
                size,
            )
        )
    with atomic.atomic_path(out) as tmp:
        save_image(clusters_grid(real, samples, size, GRID_PER_CLUSTER), tmp)


def _dreambooth(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    from leafgen.diffusion.finetune.train import export_checkpoint
    from leafgen.distributed.torch_trainer import prune_checkpoints
    from leafgen.distributed.train_dreambooth import read_history, train_dreambooth_on_ray

    db = cfg.dreambooth
    keep = db.keep_checkpoints_after_export
    if (ctx.dir / SUMMARY_FILE).is_file():  # exported before an interruption: never train again
        if not keep:
            prune_checkpoints(ctx.dir / "ray", ctx.run.storage)
        return json.loads((ctx.dir / SUMMARY_FILE).read_text())
    sources = train_sources(cfg, ctx)
    instance = [path for _, path in sources]
    classes = []
    if db.method == "textual_inversion" and db.prior_loss_weight > 0:
        print(
            "[dreambooth] note: textual inversion trains no UNet weights, so prior preservation "
            f"(dreambooth.prior_loss_weight={db.prior_loss_weight}) does not apply; class images unused",
            flush=True,
        )
    elif ctx.inputs["class_images"]["manifest"]:  # rows name files relative to the manifest's folder
        manifest = ctx.input_path("class_images", "manifest")
        classes = [manifest.parent / row["file"] for row in read_manifest(manifest)]
    clustering = _cluster(cfg, ctx, sources) if db.clusters != 1 else None
    # Workers and the export see the number of clusters found, never "auto".
    resolved = replace(db, clusters=clustering.k if clustering else 1)
    base = absolute_if_local(cfg.base_model.name_or_path)
    result = train_dreambooth_on_ray(
        replace(cfg, dreambooth=resolved),
        base,
        instance,
        classes,
        ctx.dir / "ray",
        ctx.dir / "validation",
        run=ctx.run.storage,
        instance_clusters=clustering.labels if clustering else None,
    )
    if result.error is not None:
        raise result.error
    model_dir = ctx.dir / MODEL_DIR
    extras = [ctx.dir / CLUSTERS_FILE] if clustering else []
    with result.checkpoint.as_directory() as checkpoint:
        export_checkpoint(resolved, base, Path(checkpoint), model_dir, cfg.base_model.revision, extras)
    if clustering:
        _draw_clusters_grid(cfg, base, model_dir, clustering, sources, ctx.dir / GRID_FILE)
    history = read_history(ctx.dir / "ray")
    last = history[-1]
    summary = {
        "model_dir": f"{ctx.dir.name}/{MODEL_DIR}",
        "kind": output_kind(db),
        "method": db.method,
        "clusters": clustering.k if clustering else 1,
        "tokens": clustering.tokens if clustering else [db.identifier_token],
        "instance_images": len(instance),
        "class_images": len(classes),
        "steps": int(last["step"]),
        "final_loss": {k: last[k] for k in ("loss", "loss/instance", "loss/prior")},
        "validation_grids": sorted(p.name for p in (ctx.dir / "validation").glob("step_*.png")),
    }
    if clustering:
        summary.update(
            clusters_file=f"{ctx.dir.name}/{CLUSTERS_FILE}",
            clusters_grid=f"{ctx.dir.name}/{GRID_FILE}",
            cluster_sizes=clustering.sizes,
            silhouette=clustering.silhouette,
            single_image_clusters=clustering.singletons,
        )
    atomic.write_json(ctx.dir / SUMMARY_FILE, summary)  # last: the export is complete
    if not keep:
        prune_checkpoints(ctx.dir / "ray", ctx.run.storage)
    return summary


def _dreambooth_line(o: dict[str, Any]) -> str:
    clusters = f", {o['clusters']} clusters {o['cluster_sizes']}" if o.get("clusters", 1) > 1 else ""
    return f"{o['kind']}{clusters}, {o['steps']} steps, final loss {o['final_loss']['loss']:.4f}"


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
# ``leafgen dreambooth``: clusters (if asked for) on the committed backbone's features.
DREAMBOOTH = Stage(
    name="dreambooth",
    summary=_dreambooth_line,
    fn=_dreambooth,
    config_keys=("base_model", "dreambooth", "data.target_class"),
    inputs=("dataset", "split", "class_images"),
    check=_check_dreambooth,
)
# The pipeline's and Tune's: clusters on the gating classifier's features, so keyed on the classifier
# stage, but only when clustering (one identifier stays the same stage as ``leafgen dreambooth``'s).
DREAMBOOTH_AFTER_CLASSIFIER = replace(
    DREAMBOOTH, inputs_when=lambda cfg: ("classifier",) if cfg.dreambooth.clusters != 1 else ()
)
