"""Classifier training throughput: leafgen's loop against a plain torch loop, and whole trainings on Ray
Train (start-up included) against the same trainings in a plain torch loop, single and grouped.

Prints, in one run:
1. images/s of leafgen's training step (library loop, single process) and of a plain torch loop doing the
   identical work (same images, augmentation, model, optimiser), epochs interleaved (library, plain,
   library, ...) so that drifts in the machine's speed hit both alike; medians and their ratio;
2. a demo-size whole training (the demo's classifier recipe: embedded backbone, 64x96, batch 32, 3 epochs,
   validation every epoch) on Ray Train with 1 and 2 workers, against a plain torch loop doing the same
   epochs and validation in this process: seconds and the ratio plain / Ray. Then a stage's group of
   trainings (``--group`` runs, as the arms stage hands Ray Train in one fit) against as many plain loops;
3. epoch time on Kaggle-size photos (2048x1365 JPEGs, trained at 128x192) reading the decode-once cache,
   against decoding and resizing every JPEG every epoch, and their ratio (``--kaggle-size``).

    python benchmarks/classifier_throughput.py --images 656 --group 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
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
    eval_transform,
    predict_probs,
    train_epoch,
    train_transform,
)
from leafgen.classifier.model import build_classifier
from leafgen.classifier.training import input_size
from leafgen.config import load_config
from leafgen.data.cache import cached_images
from leafgen.data.plant_pathology import read_folder
from leafgen.data.procedural import ProceduralSpec, make_dataset


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

    torch.manual_seed(0)
    plain_model = build_classifier(cfg.arch, "none")
    plain_opt = torch.optim.AdamW(
        plain_model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )

    def plain() -> None:
        plain_epoch(plain_model, loader, plain_opt)

    def lib_epoch() -> None:
        train_epoch(model, loader, loss_fn, opt, sched, device)

    lib_epoch(), plain()  # warm-up: allocator, thread pools
    lib, plain_s = [], []
    for _ in range(repeats):
        lib.append(_timed(lib_epoch))
        plain_s.append(_timed(plain))
    return len(labels) / statistics.median(lib), len(labels) / statistics.median(plain_s)


def plain_epoch(model: torch.nn.Module, loader: DataLoader, opt: torch.optim.Optimizer) -> None:
    """One epoch as a plain torch loop writes it: cross-entropy, backward, step."""
    model.train()
    criterion = torch.nn.CrossEntropyLoss()
    for x, y in loader:
        loss = criterion(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def plain_training(arrays: dict[str, Path], cfg) -> None:
    """What a user would write without Ray: the same model, recipe, epochs and per-epoch validation."""
    train_x, train_y = np.load(arrays["train_images"]), np.load(arrays["train_labels"])
    val_x, val_y = np.load(arrays["val_images"]), np.load(arrays["val_labels"])
    torch.manual_seed(cfg.seed)
    model = build_classifier(cfg.arch, cfg.weights)
    loader = DataLoader(
        ArrayDataset(train_x, train_y, train_transform(input_size(cfg))),
        batch_size=cfg.batch_size,
        shuffle=True,
    )
    val = DataLoader(ArrayDataset(val_x, val_y, eval_transform()), batch_size=2 * cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        plain_epoch(model, loader, opt)
        predict_probs(model, val, torch.device("cpu"))


def whole_trainings(arrays: dict[str, Path], workers: int, group: int, workdir: Path) -> tuple[float, float]:
    """Seconds for ``group`` demo-size trainings: plain loops one after the other, and one Ray Train fit."""
    from leafgen.classifier.runs import spec_for
    from leafgen.distributed.train_classifier import train_runs_on_ray

    cfg = load_config("configs/demo.yaml", [f"classifier.num_workers={workers}", f"run_dir={workdir}"])
    seeds = range(group)
    plain = _timed(lambda: [plain_training(arrays, replace(cfg.classifier, seed=s)) for s in seeds])
    with tempfile.TemporaryDirectory(prefix="lg-bench-", dir=workdir) as tmp:
        specs = [
            spec_for(
                f"seed_{s}",
                Path(tmp) / f"seed_{s}",
                replace(cfg.classifier, seed=s),
                arrays,
                "multiple_diseases",
            )
            for s in seeds
        ]
        ray = _timed(lambda: train_runs_on_ray(cfg, specs, Path(tmp) / "ray"))
    return plain, ray


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


def cache_vs_decode(n: int, cfg, repeats: int, workdir: Path) -> tuple[float, float, float, float, float]:
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

    def median(fn) -> float:
        fn()
        return statistics.median(_timed(fn) for _ in range(repeats))

    cache_epoch = median(lambda: train_epoch(model, from_cache, loss_fn, opt, sched, device))
    decode_epoch = median(lambda: train_epoch(model, decoding, loss_fn, opt, sched, device))
    # The input pipeline alone (augmentation included, no model): what the cache itself saves.
    cache_load = median(lambda: sum(1 for _ in from_cache))
    decode_load = median(lambda: sum(1 for _ in decoding))
    return cache_epoch, decode_epoch, build, cache_load, decode_load


def _demo_arrays(
    n: int, workdir: Path, size: tuple[int, int]
) -> tuple[dict[str, Path], np.ndarray, np.ndarray]:
    demo = make_dataset(workdir / "demo", ProceduralSpec(scale=n / 1821, size=192, seed=3, test_fraction=0.0))
    folder = read_folder(demo, check_images=False, progress=False)
    images = np.asarray(
        cached_images([folder.path(i) for i in folder.image_ids], size, workdir / "cache", progress=False)
    )
    labels = folder.labels
    val = np.arange(len(labels)) % 6 == 0  # a validation split of a sixth, as the demo's is to its train
    arrays = {}
    for name, mask in (("train", ~val), ("val", val)):
        for kind, values in (("images", images[mask]), ("labels", labels[mask])):
            arrays[f"{name}_{kind}"] = workdir / f"{name}_{kind}.npy"
            np.save(arrays[f"{name}_{kind}"], values)
    return arrays, images, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=656, help="labelled images drawn (the demo trains on 656)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group", type=int, default=4, help="trainings in the grouped fit")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/leafgen-bench"))
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--kaggle-size", action="store_true", help="also the cache against decoding 2048px JPEGs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)

    demo = load_config("configs/demo.yaml").classifier
    arrays, images, labels = _demo_arrays(args.images, args.workdir, input_size(demo))
    print(
        f"{len(labels)} images at {input_size(demo)[1]}x{input_size(demo)[0]}, {demo.arch}, batch "
        f"{demo.batch_size}, {args.threads} threads, torch {torch.__version__}"
    )
    lib, plain = library_vs_plain(images, labels, replace(demo, weights="none"), args.repeats)
    print(f"library loop   {lib:7.1f} img/s")
    print(f"plain loop     {plain:7.1f} img/s")
    print(f"ratio library/plain = {lib / plain:.2f}x (target >= 0.9x)")

    if not args.skip_ray:
        from leafgen.config import RayConfig
        from leafgen.distributed.runtime import ensure_ray

        ensure_ray(RayConfig(num_cpus=args.threads))
        for workers in (1, 2):
            for group in (1, args.group):
                plain_s, ray_s = whole_trainings(arrays, workers, group, args.workdir)
                print(
                    f"{group} demo-size training(s), {demo.epochs} epochs: plain torch {plain_s:6.1f}s, "
                    f"Ray Train ({workers} worker(s), one fit) {ray_s:6.1f}s: ratio plain/Ray = "
                    f"{plain_s / ray_s:.2f}x (target >= 0.8x)"
                )

    if args.kaggle_size:
        cfg = load_config(
            "configs/demo.yaml", ["classifier.image_size=128", "classifier.weights=none"]
        ).classifier
        cache_epoch, decode_epoch, build, cache_load, decode_load = cache_vs_decode(
            256, cfg, args.repeats, args.workdir
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
