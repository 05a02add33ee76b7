"""Which fine-tune teaches one token per kind of the class: chosen on some judges, measured on others.

Two kinds of multiple_diseases leaf are painted (leafgen/data/leaf_painter.py's ``KINDS``: many rust spots
and one scab blotch, or the reverse; 16 each) and each kind is given its own token, the kinds standing in
for clusters (the question here is only whether the tokens learn their kind). Candidate fine-tunes
(two-token textual inversion at 400 and 1200 steps, DreamBooth LoRA with two tokens and no prior) draw
``--samples``
images per token; every sample is assigned to the nearer kind centroid (cosine) in a judge's features.

Judges are the demo's recipe on the demo's leaves, trained as finetune_judges.py trains them (and reused
from its ``--work`` when given the same one): seeds 1005-1007 *select* (the candidate whose smaller
own-kind share is highest on their mean), seeds 1000-1004 *measure* the selected one, so the setting is
not picked on the figures that report it.

With ``--gate-seeds`` it measures what the effect test asserts instead: the leaves clustered as the
pipeline clusters them (``clusters: 2``, k-means on the features of the demo's gating classifier, its
``classifier`` section trained with each given seed), the chosen fine-tune trained on those clusters, and
each token's share of samples nearer its own cluster under judges 1000-1004, beside the base model's.

    python benchmarks/finetune_judges.py --work runs/judges --judges 5
    python benchmarks/cluster_tokens.py --work runs/judges --out docs/finetune_judges/cluster_tokens.json
    python benchmarks/cluster_tokens.py --work runs/judges --gate-seeds 0 1 2 3 \
        --grids docs/finetune_methods --out docs/finetune_judges/cluster_gate.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from finetune_judges import SIZE, fine_tune, keep_best, load_world, nearest_group, train_judges
from torchvision.utils import save_image

from leafgen import atomic
from leafgen.classifier.training import SplitArrays, fit, load_classifier
from leafgen.config import load_config
from leafgen.data.leaf_painter import paint_kinds
from leafgen.diffusion.components import EMBEDDED_NAME
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.finetune.clusters import (
    cluster_images,
    clusters_grid,
    image_features,
    real_images_per_cluster,
)
from leafgen.diffusion.finetune.identifier import cluster_tokens, identifier_prompts
from leafgen.diffusion.probes.drift import paired_change
from leafgen.diffusion.probes.evaluate import generate


def own_kind_shares(judge, kind_paths, kinds, samples) -> list[float]:
    """Per token, the share of its samples nearer its own kind's centroid in ``judge``'s features."""
    nearest = nearest_group(judge, kind_paths, kinds, samples)
    return [float((groups == kind).mean()) for kind, groups in enumerate(nearest)]


def gate(work: Path, seed: int, images, labels, train, val):
    """The demo's gating classifier (its ``classifier`` section) with ``seed``, trained on the judges' train
    split and kept at its best validation epoch, as the effect test trains it."""
    recipe = replace(load_config("configs/demo.yaml").classifier, seed=seed)
    folder = work / f"gate_{seed}"
    if not (folder / "model").exists():
        fitted, held = SplitArrays(images[train], labels[train]), SplitArrays(images[val], labels[val])
        fit(recipe, fitted, held, keep_best(folder / "model", recipe.checkpoint_metric, []))
    return load_classifier(folder / "model")[0]


def clusters_of_the_gate(args, db, judges, world, kind_paths, kinds) -> dict:
    """``clusters: 2`` as the pipeline clusters: k-means on each gate seed's features, then the chosen
    fine-tune (two-token textual inversion, 1200 steps) on those clusters, measured on every judge: each
    token's share of samples nearer its own cluster, and the base model's share nearer each cluster."""
    base_model = load_generation_pipeline(EngineSettings(EMBEDDED_NAME), torch.device("cpu"))
    untaught = generate(base_model, db.instance_prompt, args.samples, 0, 32, 20, 3.0, SIZE)
    cfg = replace(db, method="textual_inversion", textual_inversion_steps=1200)
    result = {}
    for seed in args.gate_seeds:
        model = gate(args.work, seed, *world)
        clustering = cluster_images(
            [p.stem for p in kind_paths], image_features(kind_paths, model, SIZE), 2, 2, db.seed,
            db.identifier_token, "gate",
        )  # fmt: skip
        clusters = np.asarray(clustering.labels)
        tuned = fine_tune(cfg, kind_paths, [], args.work / f"clusters_gate{seed}", clusters=clustering.labels)
        pipe = load_generation_pipeline(EngineSettings(EMBEDDED_NAME, adapter=tuned), torch.device("cpu"))
        prompts = identifier_prompts(db.instance_prompt, db.identifier_token, clustering.tokens)
        samples = [generate(pipe, p, args.samples, 0, 32, 20, 3.0, SIZE) for p in prompts]
        if args.grids:  # each cluster's painted leaves (up to 8), then 8 samples of its token
            real = real_images_per_cluster(kind_paths, clusters, 2, SIZE, 8)
            args.grids.mkdir(parents=True, exist_ok=True)
            with atomic.atomic_path(args.grids / f"clusters_gate{seed}.png") as tmp:
                save_image(clusters_grid(real, samples, SIZE, 8), tmp, format="png")
        # own[c]: (judges, samples), whether each judge places token c's sample i nearer cluster c; base[c]:
        # the same for the base model's sample i (same seed), measured against cluster c.
        own = np.stack([nearest_group(j["model"], kind_paths, clusters, samples) for j in judges])
        base = np.stack([nearest_group(j["model"], kind_paths, clusters, [untaught] * 2) for j in judges])
        own, base = own == np.arange(2)[None, :, None], base == np.arange(2)[None, :, None]
        # 95% bootstrap over the samples of each sample's hit averaged over the judges: for the share, and
        # for its change from the base model's paired sample.
        hits, base_hits = own.mean(0), base.mean(0)
        result[str(seed)] = {
            "kinds_per_cluster": [np.bincount(kinds[clusters == c], minlength=2).tolist() for c in (0, 1)],
            "purity": float(max((clusters == kinds).mean(), (clusters != kinds).mean())),
            "by_judge": [
                {"seed": j["seed"], "own_cluster": o.mean(1).tolist(), "base_model": b.mean(1).tolist()}
                for j, o, b in zip(judges, own, base)
            ],
            "panel_own_cluster": hits.mean(1).tolist(),
            "panel_own_cluster_ci95": [paired_change(np.zeros_like(h), h) for h in hits],
            "panel_base_model": base_hits.mean(1).tolist(),
            "panel_change_ci95": [paired_change(b, h) for b, h in zip(base_hits, hits)],
        }
        print(f"gate seed {seed}:", json.dumps(result[str(seed)]), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/judges"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--grids", type=Path, default=None, help="with --gate-seeds: a grid per gate here")
    parser.add_argument(
        "--gate-seeds", type=int, nargs="*", default=None,
        help="instead of choosing: cluster with the demo's gating classifier of these seeds (k-means, as "
        "the pipeline does) and measure the chosen fine-tune on those clusters",
    )  # fmt: skip
    args = parser.parse_args(argv)
    cfg = load_config("configs/demo.yaml")
    (images, labels, _), (train, val, _) = load_world(args.work, "demo")
    measurers = train_judges(args.work, [1000, 1001, 1002, 1003, 1004], images, labels, train, val)
    kind_paths, kinds = paint_kinds(args.work / "kinds")

    db = replace(cfg.dreambooth, validation_steps=10**6, checkpointing_steps=10**6, clusters=2)
    if args.gate_seeds is not None:
        world = (images, labels, train, val)
        gates = clusters_of_the_gate(args, db, measurers, world, kind_paths, kinds)
        if args.out:
            args.out.write_text(json.dumps({"samples": args.samples, "gate_seeds": gates}, indent=2) + "\n")
        return
    selectors = train_judges(args.work, [1005, 1006, 1007], images, labels, train, val)  # choosing only
    candidates = {
        "textual_inversion_400": replace(db, method="textual_inversion"),
        "textual_inversion_1200": replace(db, method="textual_inversion", textual_inversion_steps=1200),
        "dreambooth_lora_no_prior": replace(db, prior_loss_weight=0.0),
    }
    prompts = identifier_prompts(
        db.instance_prompt, db.identifier_token, cluster_tokens(db.identifier_token, 2)
    )
    result = {}
    for name, candidate in candidates.items():
        model = fine_tune(candidate, kind_paths, [], args.work / f"tokens_{name}", clusters=kinds.tolist())
        pipe = load_generation_pipeline(EngineSettings(EMBEDDED_NAME, adapter=model), torch.device("cpu"))
        samples = [generate(pipe, p, args.samples, 0, 32, 20, 3.0, SIZE) for p in prompts]
        select = [own_kind_shares(j["model"], kind_paths, kinds, samples) for j in selectors]
        result[name] = {
            "select": select,
            "score": float(np.mean([min(s) for s in select])),
            "measure": [own_kind_shares(j["model"], kind_paths, kinds, samples) for j in measurers],
        }
        print(name, json.dumps(result[name]), flush=True)
    chosen = max(result, key=lambda n: result[n]["score"])
    print(f"chosen on judges 1005-1007: {chosen}; measured on 1000-1004: {result[chosen]['measure']}")
    if args.out:
        args.out.write_text(json.dumps({"chosen": chosen, "candidates": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
