"""Classifier training throughput: leafgen's loop against a plain torch loop, Ray Train, and the cache.

Prints, in one run:
1. images/s of leafgen's training step (library loop, single process) and of a plain torch loop doing the
   identical work (same images, augmentation, model, optimiser), median of 3 epochs each, and their ratio;
2. the same training through Ray Train with 1 and 2 workers: images/s inside the loop (steady state) and
   including start-up (whole ``trainer.fit()``);
3. epoch time on Kaggle-size photos (2048x1365 JPEGs, trained at 128x192) reading the decode-once cache,
   against decoding and resizing every JPEG every epoch, and their ratio.

    python benchmarks/classifier_throughput.py --images 256
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from leafgen.classifier.engine import (
    ArrayDataset,
    build_loss,
    build_optimizer,
    build_scheduler,
    train_epoch,
    train_transform,
)
from leafgen.classifier.model import build_classifier
from leafgen.classifier.training import input_size
from leafgen.config import load_config
from leafgen.data.cache import cached_images
from leafgen.data.plant_pathology import read_folder
from leafgen.data.procedural import ProceduralSpec, make_dataset


def _median_epoch(run_epoch, repeats: int) -> float:
    run_epoch()  # warm-up: allocator, thread pools
    return statistics.median(_timed(run_epoch) for _ in range(repeats))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def library_vs_plain(images: np.ndarray, labels: np.ndarray, cfg, repeats: int) -> tuple[float, float]:
    device = torch.device("cpu")
    loader = DataLoader(
        ArrayDataset(images, labels, train_transform(input_size(cfg))),
        batch_size=cfg.batch_size,
        shuffle=True,
    )

    torch.manual_seed(0)
    model = build_classifier(cfg.arch, "none")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, len(loader))
    loss_fn = build_loss(cfg, labels)
    lib = _median_epoch(lambda: train_epoch(model, loader, loss_fn, opt, sched, device), repeats)

    torch.manual_seed(0)
    plain_model = build_classifier(cfg.arch, "none")
    plain_opt = torch.optim.AdamW(
        plain_model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    criterion = torch.nn.CrossEntropyLoss()

    def plain_epoch() -> None:
        plain_model.train()
        for x, y in loader:
            loss = criterion(plain_model(x), y)
            plain_opt.zero_grad()
            loss.backward()
            plain_opt.step()

    plain = _median_epoch(plain_epoch, repeats)
    return len(labels) / lib, len(labels) / plain


def ray_train(
    images: np.ndarray, labels: np.ndarray, overrides: list[str], workers: int
) -> tuple[float, float]:
    from leafgen.distributed.train_classifier import read_history, train_on_ray

    cfg = load_config(
        "configs/demo.yaml", [*overrides, f"classifier.num_workers={workers}", "classifier.epochs=3"]
    )
    with tempfile.TemporaryDirectory(prefix="lg-bench-") as tmp:
        tmp = Path(tmp)
        arrays = {}
        for name, (x, y) in {"train": (images, labels), "val": (images[:32], labels[:32])}.items():
            np.save(tmp / f"{name}_images.npy", x)
            np.save(tmp / f"{name}_labels.npy", y)
            arrays[f"{name}_images"], arrays[f"{name}_labels"] = (
                tmp / f"{name}_images.npy",
                tmp / f"{name}_labels.npy",
            )
        t0 = time.perf_counter()
        train_on_ray(cfg, arrays, tmp / "ray", name=f"bench{workers}")
        total = time.perf_counter() - t0
        history = read_history(tmp / "ray")
    steady = statistics.median(len(labels) / row["train/seconds"] for row in history[1:])
    return steady, len(labels) * len(history) / total


class DecodeEveryEpoch(Dataset):
    """The baseline the cache replaces: open, decode and resize the JPEG at every access."""

    def __init__(self, paths, labels, size, transform):
        self.paths, self.labels, self.size, self.transform = paths, labels, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as img:
            arr = np.asarray(img.convert("RGB").resize(self.size[::-1], Image.BILINEAR))
        return self.transform(torch.from_numpy(arr.copy()).permute(2, 0, 1)), int(self.labels[i])


def cache_vs_decode(n: int, cfg, repeats: int, workdir: Path) -> tuple[float, float, float]:
    folder_path = make_dataset(
        workdir / "kaggle-size", ProceduralSpec(scale=n / 1821, size=2048, seed=7, test_fraction=0.0)
    )
    folder = read_folder(folder_path, check_images=False, progress=False)
    paths, labels = [folder.path(i) for i in folder.image_ids], folder.labels
    size = input_size(cfg)
    t0 = time.perf_counter()
    cached = cached_images(paths, size, workdir / "cache", progress=False)
    build = time.perf_counter() - t0
    model = build_classifier(cfg.arch, "none")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 10**6)
    loss_fn = build_loss(cfg, labels)
    device = torch.device("cpu")
    transform = train_transform(size)
    from_cache = DataLoader(ArrayDataset(cached, labels, transform), batch_size=cfg.batch_size, shuffle=True)
    decoding = DataLoader(
        DecodeEveryEpoch(paths, labels, size, transform), batch_size=cfg.batch_size, shuffle=True
    )
    cache_epoch = _median_epoch(lambda: train_epoch(model, from_cache, loss_fn, opt, sched, device), repeats)
    decode_epoch = _median_epoch(lambda: train_epoch(model, decoding, loss_fn, opt, sched, device), repeats)
    # The input pipeline alone (augmentation included, no model): what the cache itself saves.
    cache_load = _median_epoch(lambda: sum(1 for _ in from_cache), repeats)
    decode_load = _median_epoch(lambda: sum(1 for _ in decoding), repeats)
    return cache_epoch, decode_epoch, build, cache_load, decode_load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/leafgen-bench"))
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)

    overrides = ["classifier.image_size=128", "classifier.batch_size=32"]
    cfg = load_config("configs/demo.yaml", overrides).classifier
    demo = make_dataset(
        args.workdir / "demo", ProceduralSpec(scale=args.images / 1821, size=192, seed=3, test_fraction=0.0)
    )
    folder = read_folder(demo, check_images=False, progress=False)
    images = np.asarray(
        cached_images(
            [folder.path(i) for i in folder.image_ids],
            input_size(cfg),
            args.workdir / "cache",
            progress=False,
        )
    )
    labels = folder.labels
    print(
        f"{len(labels)} images at {input_size(cfg)[1]}x{input_size(cfg)[0]}, {cfg.arch}, "
        f"batch {cfg.batch_size}, {args.threads} threads, torch {torch.__version__}"
    )

    lib, plain = library_vs_plain(images, labels, cfg, args.repeats)
    print(f"library loop   {lib:7.1f} img/s")
    print(f"plain loop     {plain:7.1f} img/s")
    print(f"ratio library/plain = {lib / plain:.2f}x (target >= 0.9x)")

    if not args.skip_ray:
        from leafgen.config import RayConfig
        from leafgen.distributed.runtime import ensure_ray

        ensure_ray(RayConfig(num_cpus=args.threads))
        for workers in (1, 2):
            steady, whole = ray_train(images, labels, overrides, workers)
            print(
                f"Ray Train {workers} worker(s): {steady:7.1f} img/s in the loop, "
                f"{whole:7.1f} img/s with start-up"
            )

    cache_epoch, decode_epoch, build, cache_load, decode_load = cache_vs_decode(
        args.images, cfg, args.repeats, args.workdir
    )
    print(
        f"2048x1365 JPEGs trained at 192x128: epoch {cache_epoch:.1f}s from the cache "
        f"(built once in {build:.1f}s) vs {decode_epoch:.1f}s decoding every epoch"
    )
    print(f"ratio decode/cache = {decode_epoch / cache_epoch:.2f}x (target >= 2x)")
    print(
        f"input pipeline alone: {cache_load:.1f}s from the cache vs {decode_load:.1f}s decoding "
        f"({decode_load / cache_load:.1f}x)"
    )


if __name__ == "__main__":
    main()
