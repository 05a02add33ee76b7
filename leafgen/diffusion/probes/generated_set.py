"""The ``measure`` stage: the generated set measured, so a user can judge it before training on it.

- Fidelity: the independent judge's share of the target class among the accepted and among the rejected
  images (95% Wilson intervals), and per img2img strength.
- Closeness to real images: each accepted image's cosine distance, in the embedded backbone's feature
  space (``leafgen/assets/leaf-resnet18``, penultimate layer), to its nearest real train image: the median,
  and the share closer than the near-duplicate line, the 5th percentile of the distances between each real
  train image and its nearest other real one (closer than that, an image is nearer a real photo than
  real photos are to each other).
- Distribution: the Kernel Inception Distance between the accepted images and the real target-class train
  images in the same feature space, computed with NumPy/scikit-learn on the features (unbiased MMD^2 with
  the cubic polynomial kernel, mean and std over random subsets), beside the same figure for two random
  halves of the real images, its floor.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from sklearn.metrics.pairwise import polynomial_kernel

from leafgen import atomic
from leafgen.classifier.model import EMBEDDED_ARCH
from leafgen.classifier.stage import CACHE_DIR
from leafgen.classifier.training import input_size, load_classifier
from leafgen.config import PipelineConfig
from leafgen.data.images import image_path
from leafgen.data.split import read_split
from leafgen.data.stages import dataset_root
from leafgen.diffusion.generation.allocation import load_pixels
from leafgen.diffusion.generation.gate import load_float_images
from leafgen.diffusion.generation.manifest import read_manifest
from leafgen.diffusion.probes.drift import wilson
from leafgen.diffusion.probes.evaluate import classifier_features, classifier_probs, to_unit_float
from leafgen.labels import CLASSES
from leafgen.stages import Stage, StageContext

RESULT_FILE = "metrics.json"
KID_SUBSETS = 100
FEATURE_SPACE = f"the embedded {EMBEDDED_ARCH} backbone's penultimate layer (leafgen/assets/leaf-resnet18)"


def kid(x: np.ndarray, y: np.ndarray, subsets: int = KID_SUBSETS, seed: int = 0) -> dict[str, float]:
    """Kernel Inception Distance of feature sets ``x`` (m, d) and ``y`` (n, d): unbiased MMD^2 with the
    kernel (x.y / d + 1)^3 over ``subsets`` random subsets of min(m, n) rows each; mean and std."""
    size = min(len(x), len(y))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), size, replace=False)]
        b = y[rng.choice(len(y), size, replace=False)]
        kxx, kyy, kxy = polynomial_kernel(a), polynomial_kernel(b), polynomial_kernel(a, b)
        off = size * (size - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "subset_size": int(size)}


def _cosine_nearest(queries: np.ndarray, references: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    r = references / np.linalg.norm(references, axis=1, keepdims=True)
    distance = 1 - q @ r.T
    if exclude_self:
        np.fill_diagonal(distance, np.inf)
    return distance.min(1)


def _share(hits: np.ndarray) -> dict[str, Any]:
    if len(hits) == 0:
        return {"share": None, "ci95": None, "images": 0}
    return {"share": float(hits.mean()), "ci95": wilson(int(hits.sum()), len(hits)), "images": int(len(hits))}


def measure_set(
    judge: torch.nn.Module,
    backbone: torch.nn.Module,
    size: tuple[int, int],
    rows: list[dict[str, Any]],
    synthetic: torch.Tensor,
    real_train: torch.Tensor,
    real_train_labels: np.ndarray,
    target_class: str,
) -> dict[str, Any]:
    """The figures of the module docstring for gated ``rows`` and their images ``synthetic``."""
    target = CLASSES.index(target_class)
    called = classifier_probs(judge, synthetic, size).argmax(1) == target
    accepted = np.array([r["accepted"] for r in rows])
    strengths: dict[float, list[int]] = defaultdict(list)
    for k, row in enumerate(rows):
        strengths[round(float(row["strength"]), 4)].append(k)
    feats = {
        "syn": classifier_features(backbone, synthetic, size).numpy().astype(np.float64),
        "real": classifier_features(backbone, real_train, size).numpy().astype(np.float64),
    }
    line = float(np.percentile(_cosine_nearest(feats["real"], feats["real"], exclude_self=True), 5))
    nearest = _cosine_nearest(feats["syn"][accepted], feats["real"]) if accepted.any() else np.zeros(0)
    real_target = feats["real"][real_train_labels == target]
    halves = np.random.default_rng(0).permutation(len(real_target))
    half = len(halves) // 2
    enough = min(accepted.sum(), len(real_target)) > 1
    return {
        "judge_share": {"accepted": _share(called[accepted]), "rejected": _share(called[~accepted])},
        "by_strength": [
            {
                "strength": s,
                "images": len(idx),
                "accepted": int(accepted[idx].sum()),
                "judge_share": _share(called[idx])["share"],
            }
            for s, idx in sorted(strengths.items())
        ],
        "nearest_real": {
            "median_distance": float(np.median(nearest)) if len(nearest) else None,
            "near_duplicate_line": line,
            "share_below_line": float((nearest < line).mean()) if len(nearest) else None,
        },
        "kid": kid(feats["syn"][accepted], real_target) if enough else None,
        "kid_real_halves": kid(real_target[halves[:half]], real_target[halves[half:]]) if half > 1 else None,
        "feature_space": FEATURE_SPACE,
    }


def _measure(cfg: PipelineConfig, ctx: StageContext) -> dict[str, Any]:
    from leafgen.classifier.model import build_classifier

    gate_manifest = ctx.run.root / ctx.inputs["gate"]["manifest"]
    rows = read_manifest(gate_manifest)
    images_root = (ctx.run.root / ctx.inputs["generate"]["manifest"]).parent
    synthetic = load_float_images([images_root / row["file"] for row in rows])
    root = dataset_root(cfg, ctx.inputs["dataset"], ctx.run.root) / "images"
    train = read_split(ctx.run.root / ctx.inputs["split"]["split_csv"])["train"]
    size = input_size(cfg.classifier)
    paths = [image_path(root, i) for i, _ in train]
    real = to_unit_float(load_pixels(paths, size, ctx.run.root / CACHE_DIR, cfg.data.max_image_pixels))
    judge, _ = load_classifier(ctx.run.root / ctx.inputs["judge"]["model_dir"])
    backbone = build_classifier(EMBEDDED_ARCH, "embedded", len(CLASSES)).eval()
    labels = np.asarray([y for _, y in train])
    result = measure_set(judge, backbone, size, rows, synthetic, real, labels, cfg.data.target_class)
    atomic.write_json(ctx.dir / RESULT_FILE, result)
    return {"metrics": f"{ctx.dir.name}/{RESULT_FILE}", **{k: result[k] for k in ("judge_share", "kid")}}


def _summary(o: dict[str, Any]) -> str:
    a = o["judge_share"]["accepted"]
    share = f"{a['share']:.1%}" if a["share"] is not None else "n/a"
    kid_text = f"{o['kid']['mean']:.4f}" if o["kid"] else "n/a"
    return f"judge calls {share} of accepted images the class; KID to the real class {kid_text}"


MEASURE = Stage(
    name="measure",
    summary=_summary,
    fn=_measure,
    config_keys=("data.target_class", "classifier.image_size"),
    inputs=("dataset", "split", "judge", "generate", "gate"),
)
