"""The fine-tuning methods compared on the demo data: what each teaches the base model, judged.

Runs ``leafgen dreambooth`` (Ray Train, the demo's settings) once per variant, each in its own run
directory under ``--work`` sharing the dataset, split and class images:

- ``dreambooth_lora``: configs/demo.yaml as it is (LoRA rank 16, one identifier);
- ``textual_inversion``: ``dreambooth.method=textual_inversion`` (its own learning rate and steps);
- ``dreambooth_lora_clusters_auto``: ``dreambooth.clusters=auto`` (one identifier per cluster of the train
  images, k by silhouette; ``leafgen dreambooth`` clusters on the embedded backbone's features).

A judge is trained as docs/pipeline_demo.md describes (the balanced recipe from the embedded backbone,
seed 1000, 8 epochs; the ``judge`` stage with those settings). Every model (and the base model) draws
``--samples`` images per prompt with seeds 0..n-1 through the probe's own functions (20 DPM-Solver++ steps,
guidance 3), for its instance prompt(s) and ``leaf``; the judge's share of the target class per prompt is
printed with its 95% Wilson interval. The clustered variant also gets the share of its prompts mixed as
generation mixes them (in proportion to cluster size). Grids of the first 8 samples per prompt and the
numbers go to ``--docs``.

    python benchmarks/finetune_methods.py --work runs/methods --docs docs/finetune_methods [--samples 128]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from leafgen.classifier.training import input_size, load_classifier
from leafgen.cli import main
from leafgen.config import load_config
from leafgen.diffusion.components import absolute_if_local
from leafgen.diffusion.finetune.adapters import EngineSettings, load_generation_pipeline
from leafgen.diffusion.finetune.clusters import instance_prompts, read_clusters
from leafgen.diffusion.probes.evaluate import classifier_probs, generate
from leafgen.labels import CLASSES

VARIANTS = {
    "dreambooth_lora": [],
    "textual_inversion": ["dreambooth.method=textual_inversion"],
    "dreambooth_lora_clusters_auto": ["dreambooth.clusters=auto"],
}
SHARED = ("dataset", "split", "class_images")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def fine_tune(config: str, work: Path, name: str, overrides: list[str]) -> dict:
    run_dir = work / name
    base = work / "base"
    for stage in SHARED:  # the same keys: copied, then skipped
        if not (run_dir / stage).exists() and (base / stage).exists():
            shutil.copytree(base / stage, run_dir / stage, symlinks=True)
    t0 = time.perf_counter()
    assert main(["dreambooth", "--config", config, f"run_dir={run_dir}", *overrides]) == 0
    marker = json.loads((run_dir / "dreambooth" / "_complete.json").read_text())
    return {"run_dir": str(run_dir), "stage_seconds": marker["seconds"], "wall": time.perf_counter() - t0}


def judge_shares(pipe, judge, size, judge_size, prompt: str, n: int, target: int, grid: list) -> dict:
    images = generate(pipe, prompt, n, 0, 32, 20, 3.0, size)
    calls = classifier_probs(judge, images, judge_size).argmax(1)
    grid.append(images[:8])
    k = int((calls == target).sum())
    counts = np.bincount(calls, minlength=len(CLASSES))
    low, high = wilson(k, n)
    return {
        "prompt": prompt,
        "share": k / n,
        "interval": [low, high],
        "classes": {c: int(x) for c, x in zip(CLASSES, counts)},
    }


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--work", type=Path, default=Path("runs/methods"))
    parser.add_argument("--docs", type=Path, default=Path("docs/finetune_methods"))
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args(argv)
    work = args.work.resolve()
    base_run = work / "base"
    judge_args = ["eval.judge_seed=1000", "classifier.epochs=8"]
    t0 = time.perf_counter()
    common = ["run", "--config", args.config, f"run_dir={base_run}"]
    assert main([*common, *[f"--only={s}" for s in ("dataset", "split", "class_images")]]) == 0
    assert main([*common, "--only=judge", *judge_args]) == 0
    print(f"[methods] data, class images and judge: {time.perf_counter() - t0:.0f}s", flush=True)

    results = {"samples": args.samples, "variants": {}}
    for name in args.variants:
        results["variants"][name] = fine_tune(args.config, work, name, VARIANTS[name])
        print(f"[methods] {name}: {results['variants'][name]}", flush=True)

    cfg = load_config(args.config, [f"run_dir={base_run}", *judge_args])
    marker = json.loads((base_run / "judge" / "_complete.json").read_text())
    judge, _ = load_classifier(base_run / marker["outputs"]["model_dir"])
    judge_size = input_size(cfg.classifier)
    size = (cfg.base_model.resolution, cfg.base_model.width or cfg.base_model.resolution)
    target = CLASSES.index(cfg.data.target_class)
    db = cfg.dreambooth
    base_model = absolute_if_local(cfg.base_model.name_or_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.docs.mkdir(parents=True, exist_ok=True)
    models = {"base": None, **{n: work / n / "dreambooth" / "model" for n in args.variants}}
    previous = args.docs / "results.json"
    done = json.loads(previous.read_text())["variants"] if previous.is_file() else {}
    for name, adapter in models.items():
        if "prompts" in done.get(name, {}) and done[name].get("samples") == args.samples:
            results["variants"].setdefault(name, {}).update(
                {**done[name], **results["variants"].get(name, {})}
            )
            continue  # judged by an earlier, interrupted run of this script
        pipe = load_generation_pipeline(EngineSettings(base_model, adapter=adapter and str(adapter)), device)
        prompts = instance_prompts(db.instance_prompt, db.identifier_token, adapter) + [db.class_prompt]
        grid: list = []
        rows = [judge_shares(pipe, judge, size, judge_size, p, args.samples, target, grid) for p in prompts]
        entry = results["variants"].setdefault(name, {})
        entry["prompts"], entry["samples"] = rows, args.samples
        clustering = read_clusters(adapter) if adapter else None
        if clustering is not None:
            weights = np.asarray(clustering.sizes) / sum(clustering.sizes)
            entry["mixed_instance_share"] = float(sum(w * r["share"] for w, r in zip(weights, rows)))
            entry["clusters"] = {
                "k": clustering.k,
                "sizes": clustering.sizes,
                "silhouette": clustering.silhouette,
                "silhouette_by_k": clustering.silhouette_by_k,
            }
            shutil.copy(work / name / "dreambooth" / "clusters.png", args.docs / f"{name}_clusters.png")
        save_image(make_grid(torch.cat(grid), nrow=8, padding=1), args.docs / f"{name}.png")
        shares = ", ".join(f"{r['prompt']!r} {r['share']:.3f}" for r in rows)
        print(f"[methods] {name}: {shares}", flush=True)
        (args.docs / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main_()
