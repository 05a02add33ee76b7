"""How much a fine-tune's measured effect depends on the judge that measures it.

A judge is one classifier trained on a few dozen leaves of the class. This benchmark trains ``--judges``
of them with the demo's judge recipe (configs/demo.yaml, ``eval.judge``: class-balanced sampling, 8
epochs, the epoch of best validation accuracy) that differ only in their seed, on ``--world``'s leaves
(the demo's data and split, as tests/diffusion/finetune/test_dreambooth_effect.py uses, or procedural
leaves of another seed), and measures the same samples with every one of them:

- DreamBooth LoRA (the demo's ``dreambooth`` section, with its prior and without) and textual inversion
  (its own learning rate and steps): the share of ``<disease-leaf> leaf`` and ``leaf`` samples judged
  multiple_diseases, base model and fine-tune, per judge, and the mean absolute pixel change of each
  fine-tune's ``leaf`` samples from the base model's (same seeds; no judge involved);
- one identifier per cluster (textual inversion, ``clusters: 2``) on 32 leaves of the class painted in
  two kinds (many rust spots and one scab blotch, or one rust spot and many scab blotches): for each
  cluster token, the share of its samples nearer each cluster's centroid in each judge's feature space,
  the clusters being k-means' on the first judge's features.

Every model draws ``--samples`` images per prompt with seeds 0..n-1 (20 DPM-Solver++ steps, guidance 3),
once; only the judging repeats. Each judge's validation accuracy and multiple_diseases recall are printed
beside its figures, and the panel's mean change per fine-tune and prompt with a 95% paired bootstrap
interval over the samples. The JSON goes to ``--out``.

    python benchmarks/finetune_judges.py --work runs/judges --judges 5 --out docs/finetune_judges/demo.json
    python benchmarks/finetune_judges.py --world other-seed --work runs/judges_seed11 --judges 5 \
        --out docs/finetune_judges/other_seed.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from leafgen.classifier.stage import judge_config
from leafgen.classifier.training import SplitArrays, fit, load_classifier
from leafgen.config import load_config
from leafgen.data.cache import ensure_cached
from leafgen.data.images import image_path
from leafgen.data.leaf_painter import paint_kinds
from leafgen.data.procedural import ProceduralSpec, make_dataset
from leafgen.data.split import stratified_split
from leafgen.diffusion.components import EMBEDDED_NAME
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.finetune.clusters import cluster_images, image_features, nearest_cluster
from leafgen.diffusion.finetune.identifier import identifier_prompts
from leafgen.diffusion.finetune.train import export_checkpoint, fit_dreambooth
from leafgen.diffusion.probes.drift import paired_change
from leafgen.diffusion.probes.evaluate import classifier_features, classifier_probs, generate
from leafgen.labels import CLASSES

SIZE = (64, 96)
TARGET = CLASSES.index("multiple_diseases")


def keep_best(folder: Path, metric: str | None, seen: list[dict]):
    """A ``report`` callable keeping the checkpoint with the best ``metric`` (None: the latest)."""
    best = -float("inf")

    def report(metrics, checkpoint=None):
        nonlocal best
        seen.append(dict(metrics))
        if checkpoint is not None and (metric is None or metrics[metric] > best):
            best = metrics[metric] if metric else best
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(checkpoint, folder)

    return report


def load_world(work: Path, name: str):
    """The leaves of world ``name`` at the model's size: (images, labels, files) and the (judges' train,
    judges' validation, fine-tunes' instance pool) masks. 'demo': the demo's leaves and split
    (configs/demo.yaml ``data``; the fine-tunes learn from the train split, as the pipeline's and the effect
    test's do); 'other-seed': leaves of seed 11 at 30% of Kaggle's size, every fifth leaf validating and
    the fine-tunes learning from every leaf of the class."""
    data = load_config("configs/demo.yaml").data
    demo = data.procedural
    spec = (
        ProceduralSpec(scale=0.3, size=192, seed=11, test_fraction=0.0)
        if name == "other-seed"
        else ProceduralSpec(scale=demo.scale, size=demo.size, seed=demo.seed, test_fraction=0.0)
    )
    root = make_dataset(work / "leaves", spec, workers=2, progress=False)
    labels = np.array([CLASSES.index(c) for c in spec.labels("train")])
    ids = [f"Train_{i}" for i in range(len(labels))]
    paths = [image_path(root / "images", i) for i in ids]
    images = np.load(ensure_cached(paths, SIZE, root / "cache"))
    if name == "other-seed":
        val = np.arange(len(labels)) % 5 == 0
        return (images, labels, paths), (~val, val, np.ones_like(val))
    part = stratified_split(ids, labels, tuple(data.split), data.split_seed)
    split = np.array([part[i] for i in ids])
    return (images, labels, paths), (split == "train", split == "val", split == "train")


def nearest_group(
    judge, paths: list[Path], groups: np.ndarray, samples: list[torch.Tensor]
) -> list[np.ndarray]:
    """For each image of each batch in ``samples``, the group of ``paths`` whose mean feature is nearer
    (cosine) in ``judge``'s penultimate features, as k-means compared them."""
    feats = image_features(paths, judge, SIZE)
    queries = [classifier_features(judge, x, SIZE).float().numpy() for x in samples]
    return [nearest_cluster(feats, groups, q) for q in queries]


def train_judges(work: Path, seeds: list[int], images, labels, train, val) -> list[dict]:
    recipe = judge_config(load_config("configs/demo.yaml")).classifier
    judges = []
    for seed in seeds:
        folder, seen = work / f"judge_{seed}", []
        if not (folder / "done.json").exists():
            cfg = replace(recipe, seed=seed)
            fitted, held = SplitArrays(images[train], labels[train]), SplitArrays(images[val], labels[val])
            fit(cfg, fitted, held, keep_best(folder / "model", cfg.checkpoint_metric, seen))
            best = max(seen, key=lambda m: m[cfg.checkpoint_metric])
            figures = {k: best[k] for k in ("val/accuracy", "val/recall/multiple_diseases")}
            (folder / "done.json").write_text(json.dumps(figures))
        figures = json.loads((folder / "done.json").read_text())
        judges.append({"seed": seed, **figures, "model": load_classifier(folder / "model")[0]})
        print(f"judge {seed}: {figures}", flush=True)
    return judges


def fine_tune(cfg, instance, classes, out: Path, clusters=None) -> str:
    if not (out / "model").exists():
        t = time.time()
        fit_dreambooth(
            cfg, EMBEDDED_NAME, instance, classes, SIZE, keep_best(out / "ckpt", None, []), out / "grids",
            instance_clusters=clusters,
        )  # fmt: skip
        export_checkpoint(cfg, EMBEDDED_NAME, out / "ckpt", out / "model")
        print(f"{out.name}: trained in {time.time() - t:.0f} s", flush=True)
    return str(out / "model")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/finetune_judges"))
    parser.add_argument("--judges", type=int, default=5, help="judge seeds 1000, 1001, ...")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument(
        "--world", choices=("demo", "other-seed"), default="demo",
        help="the demo's leaves and split (configs/demo.yaml), or leaves of seed 11 at 30%% of Kaggle's size",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    start = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    (images, labels, paths), (train, val, taught) = load_world(args.work, args.world)
    judges = train_judges(args.work, list(range(1000, 1000 + args.judges)), images, labels, train, val)

    db = replace(load_config("configs/demo.yaml").dreambooth, validation_steps=1000, checkpointing_steps=1000)
    cpu = torch.device("cpu")
    base = load_generation_pipeline(EngineSettings(EMBEDDED_NAME), cpu)

    def draw(pipe, prompt: str) -> torch.Tensor:
        return generate(pipe, prompt, args.samples, 0, 32, 20, 3.0, SIZE)

    class_dir = args.work / "class"
    if not class_dir.exists():
        class_dir.with_suffix(".tmp").mkdir(exist_ok=True)
        for i, image in enumerate(
            generate(base, db.class_prompt, db.num_class_images, 10_000, 32, 20, 3.0, SIZE)
        ):
            save_image(image, class_dir.with_suffix(".tmp") / f"{i}.png")
        class_dir.with_suffix(".tmp").rename(class_dir)
    instance = [p for p, label, pool in zip(paths, labels, taught) if label == TARGET and pool]
    models = {
        "base": base,
        "dreambooth": fine_tune(db, instance, sorted(class_dir.glob("*.png")), args.work / "dreambooth"),
        "dreambooth_no_prior": fine_tune(replace(db, prior_loss_weight=0.0), instance, [], args.work / "db0"),
        "textual_inversion": fine_tune(
            replace(db, method="textual_inversion"), instance, [], args.work / "ti"
        ),
    }
    prompts = (db.instance_prompt, db.class_prompt)
    samples = {}
    for name, model in models.items():
        pipe = (
            model
            if name == "base"
            else load_generation_pipeline(EngineSettings(EMBEDDED_NAME, adapter=model), cpu)
        )
        samples[name] = {p: draw(pipe, p) for p in prompts}

    leaf_change = {
        name: float((samples[name][db.class_prompt] - samples["base"][db.class_prompt]).abs().mean())
        for name in models
    }
    print("leaf samples' mean absolute pixel change from the base model's:", leaf_change, flush=True)
    # hits[key]: (judges, samples), whether each judge calls each sample the class.
    hits = {
        f"{name} | {p}": np.stack(
            [classifier_probs(j["model"], samples[name][p], SIZE).argmax(1) == TARGET for j in judges]
        ).astype(float)
        for name in models
        for p in prompts
    }
    shares = []
    for i, judge in enumerate(judges):
        row = {k: v for k, v in judge.items() if k != "model"}
        row.update({key: float(h[i].mean()) for key, h in hits.items()})
        shares.append(row)
        print(row, flush=True)
    # The panel's change per fine-tune and prompt, with a 95% paired bootstrap over the samples (sample i of
    # the base model and of the fine-tune share seed i; each sample's hit is the judges' mean).
    panel = {}
    for key, h in hits.items():
        name, prompt = key.split(" | ")
        before = hits[f"base | {prompt}"].mean(0)
        if name != "base":
            after = h.mean(0)
            change = float(after.mean() - before.mean())
            panel[key] = {
                "share": float(after.mean()),
                "change": change,
                "change_ci95": paired_change(before, after),
            }
    print("panel:", json.dumps(panel), flush=True)

    # Two kinds of the class, clustered on the first judge's features, one token each.
    kind_paths, kinds = paint_kinds(args.work / "kinds")
    feats0 = image_features(kind_paths, judges[0]["model"], SIZE)
    clustering = cluster_images([p.stem for p in kind_paths], feats0, 2, 2, 0, db.identifier_token, "judge")
    cl = np.asarray(clustering.labels)
    cfg = replace(db, method="textual_inversion", clusters=2)
    tuned = fine_tune(cfg, kind_paths, [], args.work / "ti_clusters", clusters=clustering.labels)
    pipe = load_generation_pipeline(EngineSettings(EMBEDDED_NAME, adapter=tuned), cpu)
    token_samples = [
        draw(pipe, p) for p in identifier_prompts(db.instance_prompt, db.identifier_token, clustering.tokens)
    ]
    token_samples.append(samples["base"][db.instance_prompt])
    cluster_rows = []
    for judge in judges:
        nearest = nearest_group(judge["model"], kind_paths, cl, token_samples)
        nearer0 = [float((groups == 0).mean()) for groups in nearest]
        cluster_rows.append(
            {"seed": judge["seed"], "nearer_cluster0": dict(zip(["token0", "token1", "base"], nearer0))}
        )
        print(cluster_rows[-1], flush=True)
    purity = float(max((cl == kinds).mean(), (cl != kinds).mean()))
    kind_of = [int(np.bincount(kinds[cl == c], minlength=2).argmax()) for c in (0, 1)]

    result = {
        "judges": shares,
        "panel": panel,
        "leaf_pixel_change": leaf_change,
        "clusters": {
            "sizes": clustering.sizes,
            "purity": purity,
            "kind_of_cluster": kind_of,
            "by_judge": cluster_rows,
        },
        "samples": args.samples,
        "world": args.world,
        "seconds": round(time.time() - start),
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "judges"}, indent=1))


if __name__ == "__main__":
    main()
