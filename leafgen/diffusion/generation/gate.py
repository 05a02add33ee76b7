"""The quality gate: keep a synthetic image only if it shows the target class and copies no real image.

Checks per image, recorded in the manifest with the decision and its reason:

- ``score``: the gating (baseline) classifier's probability of the target class; kept if at least
  ``gate.threshold`` and, when ``gate.margin`` is set, ahead of every other class's probability by the
  margin (``margin``: the target's lead over the next class); dropped as too easy above
  ``gate.max_score`` (ALIA keeps neither confidently wrong nor confidently right edits).
- ``copy_distance``: Hamming distance of the image's 64-bit perceptual hash (pHash) to the nearest real
  train, val or test image (``nearest_real``); at or below ``gate.near_duplicate_distance`` it is a copy,
  which a DreamBooth model can return for its instance photos, and would leak test images into training.
  An img2img image is not compared with its own source image, which it starts from on purpose.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import torch
from tqdm.auto import tqdm

from leafgen.config import GateConfig
from leafgen.data.images import DEFAULT_MAX_PIXELS, open_rgb
from leafgen.diffusion.probes.evaluate import classifier_probs, to_unit_float
from leafgen.errors import LeafgenError
from leafgen.labels import CLASSES

REJECT_SCORE = "score below threshold"
REJECT_MARGIN = "another class within the margin"
REJECT_EASY = "too easy"
REJECT_COPY = "near-duplicate of a real image"


def perceptual_hashes(paths: Sequence[Path], desc: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(N, 64) bool pHash bits of each image. pHash works on a 32x32 thumbnail, so JPEGs are decoded at a
    reduced scale (Kaggle's 2048px photos in a fraction of the time)."""
    bits = np.zeros((len(paths), 64), dtype=bool)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", leave=False)):
        img = open_rgb(path, "an image to hash", max_pixels, draft=(128, 128))
        bits[i] = imagehash.phash(img).hash.reshape(-1)
    return bits


def nearest(
    queries: np.ndarray, references: np.ndarray, exclude: Sequence[int | None] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the index of the nearest reference hash and their Hamming distance;
    ``exclude[i]`` names a reference query i may not match (an img2img image's own source)."""
    distances = np.empty((len(queries), len(references)), dtype=np.int16)
    for start in range(0, len(queries), 256):  # bounded memory: 256 x N x 64 bits at a time
        block = queries[start : start + 256, None, :] != references[None, :, :]
        distances[start : start + 256] = block.sum(-1)
    for i, ref in enumerate(exclude):
        if ref is not None:
            distances[i, ref] = np.iinfo(np.int16).max
    index = distances.argmin(1)
    return index, distances[np.arange(len(queries)), index]


def load_float_images(paths: Sequence[Path]) -> torch.Tensor:
    """Images as floats in [0, 1], (N, 3, H, W); all must share one size (one generation run does)."""
    return to_unit_float(np.stack([np.asarray(open_rgb(p, "a synthetic image")) for p in paths]))


@dataclass(frozen=True)
class RealImages:
    """The real images a synthetic one must not copy: ids and pHash bits."""

    ids: Sequence[str]
    hashes: np.ndarray


def gate_rows(
    rows: Sequence[dict[str, Any]],
    images_root: Path,
    classifier: torch.nn.Module,
    classifier_size: tuple[int, int],
    real: RealImages,
    target_class: str,
    cfg: GateConfig,
) -> list[dict[str, Any]]:
    """Manifest rows with ``score``, ``nearest_real``, ``copy_distance``, ``accepted`` and ``reason``."""
    if not rows:
        raise LeafgenError("the generation manifest is empty: generate.num_images is 0, nothing to gate")
    paths = [images_root / row["file"] for row in rows]
    probs = classifier_probs(classifier, load_float_images(paths), classifier_size)
    k = CLASSES.index(target_class)
    scores = probs[:, k]
    leads = scores - np.delete(probs, k, axis=1).max(1)
    # An img2img image starts from a train image on purpose: only copies of other real images count.
    position = {image_id: k for k, image_id in enumerate(real.ids)}
    own_source = [position.get(row.get("source_id") or "") for row in rows]
    index, distance = nearest(perceptual_hashes(paths, "hashing synthetic images"), real.hashes, own_source)
    gated = []
    for row, score, lead, i, d in zip(rows, scores, leads, index, distance):
        gated.append(
            {
                **row,
                "score": float(score),
                "margin": float(lead),
                "nearest_real": real.ids[int(i)],
                "copy_distance": int(d),
            }
        )
        reason = rejection(gated[-1], cfg)
        gated[-1].update(accepted=not reason, reason=reason)
    return gated


def rejection(row: dict[str, Any], cfg: GateConfig) -> str:
    """Why a scored image is dropped ('' when kept): the first check it fails, copies first."""
    if row["copy_distance"] <= cfg.near_duplicate_distance:
        return REJECT_COPY
    if row["score"] < cfg.threshold:
        return REJECT_SCORE
    if cfg.margin is not None and row["margin"] < cfg.margin:
        return REJECT_MARGIN
    if row["score"] > cfg.max_score:
        return REJECT_EASY
    return ""


def check_acceptance(gated: Sequence[dict[str, Any]], cfg: GateConfig, target_class: str) -> float:
    """The acceptance rate; a gate that keeps nothing is an error saying why images were dropped."""
    kept = sum(row["accepted"] for row in gated)
    if kept == 0:
        reasons = Counter(row["reason"] for row in gated)
        best = max(row["score"] for row in gated)
        removed = "; ".join(f"{n} {why} ({_WHICH_KEY[why]})" for why, n in reasons.most_common())
        raise LeafgenError(
            f"the quality gate kept none of {len(gated)} synthetic images: {removed}; best {target_class} "
            f"probability {best:.3f}. Loosen the setting that removed the most, or train DreamBooth longer "
            "so samples show the class"
        )
    return kept / len(gated)


_WHICH_KEY = {
    REJECT_COPY: "gate.near_duplicate_distance",
    REJECT_SCORE: "gate.threshold",
    REJECT_MARGIN: "gate.margin",
    REJECT_EASY: "gate.max_score",
}
