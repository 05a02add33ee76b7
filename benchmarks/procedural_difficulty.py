"""How hard is the embedded procedural dataset? Per-class test recall of leafgen's baseline classifier.

The procedural set is calibrated to reproduce the real dataset's pattern: a baseline classifier scores the
multiple_diseases class well below the others (target: about 0.55-0.85 against above 0.9). This script
draws the demo dataset (or reuses --data), splits it as the pipeline does, trains leafgen's ResNet18 with
the library loop (single process, weights=none) and prints per-class recall on the held-out test split.

    python benchmarks/procedural_difficulty.py --data /tmp/leafgen-demo --seeds 0 1
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from leafgen.classifier.stage import evaluate
from leafgen.classifier.training import SplitArrays, fit, input_size
from leafgen.config import load_config
from leafgen.data.cache import cached_images
from leafgen.data.plant_pathology import read_folder
from leafgen.data.procedural import ProceduralSpec, make_dataset
from leafgen.data.split import stratified_split
from leafgen.labels import CLASSES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/leafgen-demo"))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0, help="procedural dataset seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="classifier seeds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="classifier config overrides, e.g. classifier.epochs=8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config("configs/demo.yaml", args.overrides)
    p = cfg.data.procedural
    make_dataset(args.data, ProceduralSpec(args.scale, p.size, args.seed, p.test_fraction))
    folder = read_folder(args.data, check_images=False, progress=False)
    split = stratified_split(folder.image_ids, folder.labels, cfg.data.split, cfg.data.split_seed)
    parts = {}
    for name in ("train", "val", "test"):
        idx = [k for k, i in enumerate(folder.image_ids) if split[i] == name]
        images = cached_images(
            [folder.path(folder.image_ids[k]) for k in idx], input_size(cfg.classifier), args.data / ".cache"
        )
        parts[name] = SplitArrays(np.asarray(images), folder.labels[idx])

    recalls = []
    for seed in args.seeds:
        ccfg = load_config("configs/demo.yaml", [*args.overrides, f"classifier.seed={seed}"]).classifier
        t0 = time.perf_counter()
        kept = {}

        def report(metrics, checkpoint_dir, kept=kept, t0=t0, seed=seed, ccfg=ccfg):
            # Keep the best epoch by the pipeline's checkpoint metric, as the classifier stage does.
            score = metrics[ccfg.checkpoint_metric]
            print(
                f"seed {seed} epoch {metrics['epoch']}/{ccfg.epochs} loss {metrics['train/loss']:.3f} "
                f"{ccfg.checkpoint_metric} {score:.3f} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
            if score >= kept.get("score", -1.0):
                out = args.data / ".model"
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(checkpoint_dir, out)
                kept.update(dir=out, score=score)

        fit(ccfg, parts["train"], parts["val"], report, cfg.data.target_class)
        test = evaluate(kept["dir"], parts["test"].images, parts["test"].labels, cfg.data.target_class, False)
        recall = [test[f"recall/{c}"] for c in CLASSES]
        recalls.append(recall)
        print(f"seed {seed} test recall: " + ", ".join(f"{c} {r:.3f}" for c, r in zip(CLASSES, recall)))
        print(f"seed {seed} confusion matrix (rows true, columns predicted): {test['confusion_matrix']}")
    mean = np.mean(recalls, axis=0)
    print(
        f"mean test recall over seeds {args.seeds}: "
        + ", ".join(f"{c} {r:.3f}" for c, r in zip(CLASSES, mean))
    )


if __name__ == "__main__":
    main()
