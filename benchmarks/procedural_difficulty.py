"""How hard is the embedded procedural dataset? Per-class test recall of a plain ResNet18.

The procedural set is calibrated to reproduce the real dataset's pattern: a baseline classifier scores the
multiple_diseases class well below the others (target: about 0.55-0.85 against above 0.9). This script
draws the demo dataset (or reuses --data), splits it as the pipeline does, trains torchvision's ResNet18
from scratch with a plain torch loop and prints per-class recall on the held-out test split.

    python benchmarks/procedural_difficulty.py --data /tmp/demo --epochs 12
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from sklearn.metrics import classification_report, confusion_matrix, recall_score

from leafgen.data.plant_pathology import read_folder
from leafgen.data.procedural import ProceduralSpec, make_dataset
from leafgen.data.split import stratified_split
from leafgen.labels import CLASSES


def load(folder, ids, size):
    arrs = [
        np.asarray(Image.open(folder.path(i)).convert("RGB").resize(size[::-1], Image.BILINEAR)) for i in ids
    ]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/leafgen-demo"))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0, help="procedural dataset seed")
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.train_seed)

    make_dataset(args.data, ProceduralSpec(scale=args.scale, size=192, seed=args.seed, test_fraction=0.25))
    folder = read_folder(args.data, check_images=False, progress=False)
    split = stratified_split(folder.image_ids, folder.labels, (0.7, 0.1, 0.2), 0)
    size = (args.height, args.height * 3 // 2)
    sets = {}
    for name in ("train", "test"):
        idx = [k for k, i in enumerate(folder.image_ids) if split[i] == name]
        sets[name] = (
            load(folder, [folder.image_ids[k] for k in idx], size),
            torch.from_numpy(folder.labels[idx]),
        )
    x_train, y_train = sets["train"]
    mean = x_train.float().mean((0, 2, 3), keepdim=True) / 255
    std = x_train.float().std((0, 2, 3), keepdim=True) / 255

    def prep(x):
        return ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)

    model = torchvision.models.resnet18(num_classes=len(CLASSES)).to(memory_format=torch.channels_last)
    steps = args.epochs * ((len(x_train) + 31) // 32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        total = 0.0
        for b in range(0, len(perm), 32):
            i = perm[b : b + 32]
            x = x_train[i]
            x = torch.where(torch.rand(len(i), 1, 1, 1) < 0.5, x.flip(3), x)
            x = torch.where(torch.rand(len(i), 1, 1, 1) < 0.5, x.flip(2), x)
            loss = torch.nn.functional.cross_entropy(model(prep(x)), y_train[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(i)
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {total / len(perm):.3f} ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    model.eval()
    x_test, y_test = sets["test"]
    with torch.no_grad():
        pred = torch.cat([model(prep(x_test[b : b + 64])).argmax(1) for b in range(0, len(x_test), 64)])
    recall = recall_score(y_test, pred, average=None, labels=range(len(CLASSES)))
    print(classification_report(y_test, pred, target_names=CLASSES, digits=3))
    print("confusion matrix (rows true, columns predicted):\n", confusion_matrix(y_test, pred))
    print("per-class test recall: " + ", ".join(f"{c} {r:.3f}" for c, r in zip(CLASSES, recall)))


if __name__ == "__main__":
    main()
