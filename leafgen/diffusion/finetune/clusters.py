"""One identifier per sub-cluster of the target class: the clustering, its record and its grid.

The target class's train images are embedded with a classifier's penultimate features (the run's gating
classifier when the pipeline has one, else the committed backbone, which has never seen the class), L2-
normalised so k-means compares directions, as the drift probe's cosine distance does. scikit-learn's
``KMeans`` (fixed ``random_state``) splits them into ``dreambooth.clusters`` groups, or for ``auto`` into
the k in 2..``max_clusters`` with the best silhouette score. Each cluster then learns its own token.

``clusters.json`` records each image's cluster, k, the silhouette score (of every k tried, for ``auto``),
the cluster sizes and every image's distance to every centroid. It is written beside the stage's outputs
and copied into the fine-tune's folder, so whoever loads the fine-tune (generation, the drift probe) knows
its tokens and how many train images each one stands for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from torch import nn
from torchvision.utils import make_grid

from leafgen import atomic
from leafgen.data.cache import decode_resized
from leafgen.diffusion.finetune.identifier import cluster_tokens, identifier_prompts
from leafgen.diffusion.probes.evaluate import classifier_features, resize_images, to_unit_float
from leafgen.errors import ConfigError

CLUSTERS_FILE = "clusters.json"
GRID_FILE = "clusters.png"


@dataclass
class Clustering:
    """Which cluster each target-class train image fell into, and how well the clusters separate."""

    ids: list[str]
    """Image ids, in the order of ``labels``."""
    labels: list[int]
    """Each image's cluster."""
    identifier: str
    """The identifier token the cluster tokens derive from (prompts hold its place)."""
    tokens: list[str]
    """Cluster i's identifier token is ``tokens[i]``."""
    silhouette: float | None
    """Mean silhouette score of the clustering (None for one cluster, or one image per cluster)."""
    silhouette_by_k: dict[str, float]
    """For ``clusters: auto``: the score of every k tried."""
    distances: list[list[float]]
    """Each image's Euclidean distance to every centroid, in the normalised feature space."""
    features: str
    """What embedded the images."""

    @property
    def k(self) -> int:
        return len(self.tokens)

    @property
    def sizes(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.k).tolist()

    @property
    def singletons(self) -> list[int]:
        """Clusters of a single image: allowed, but their token learns from one picture."""
        return [c for c, n in enumerate(self.sizes) if n == 1]

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "k": self.k,
            "sizes": self.sizes,
            "assignment": dict(zip(self.ids, self.labels)),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Clustering:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def check_cluster_count(clusters: int | str, images: int, target: str) -> None:
    """Refuse a cluster count the train split cannot fill, naming the key."""
    if clusters == "auto" and images < 3:
        raise ConfigError(
            f"dreambooth.clusters: auto compares silhouette scores, which needs at least 3 {target} train "
            f"images; the train split holds {images}"
        )
    if clusters != "auto" and int(clusters) > images:
        raise ConfigError(
            f"dreambooth.clusters: {clusters} clusters but the train split holds {images} {target} image(s); "
            f"choose at most {images}, or auto"
        )


@torch.no_grad()
def image_features(paths: Sequence[Path], model: nn.Module, size: tuple[int, int]) -> np.ndarray:
    """L2-normalised penultimate features (N, D) of images, resized as the classifier's training saw them."""
    pixels = np.stack([decode_resized(Path(p), size, 60_000_000) for p in paths])
    feats = classifier_features(model, to_unit_float(pixels), size)
    return F.normalize(feats.float(), dim=1).numpy()


def nearest_cluster(features: np.ndarray, labels: Sequence[int], queries: np.ndarray) -> np.ndarray:
    """For each row of ``queries``, the cluster whose images' mean direction in ``features`` (L2-normalised,
    as :func:`image_features` gives them) is nearest by cosine: which cluster a generated image resembles in
    some model's features. Queries need not be normalised: scaling a row does not change its nearest."""
    labels = np.asarray(labels)
    means = np.stack([features[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    return (queries @ means.T).argmax(1)


def cluster_features(
    features: np.ndarray, clusters: int | str, max_clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray, float | None, dict[str, float]]:
    """(labels, distances to every centroid, silhouette, silhouette of each k tried) of k-means."""
    n = len(features)

    def fit(k: int) -> KMeans:
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(features)

    def score(km: KMeans) -> float | None:
        k = len(km.cluster_centers_)
        return float(silhouette_score(features, km.labels_)) if 2 <= k <= n - 1 else None

    if clusters == "auto":  # at most n - 1 clusters: the silhouette needs one cluster of two images
        fits = {k: fit(k) for k in range(2, min(max_clusters, n - 1) + 1)}
        by_k = {str(k): float(score(km)) for k, km in fits.items()}  # type: ignore[arg-type]
        best = fits[max(fits, key=lambda k: by_k[str(k)])]  # the first of equal scores: the fewest clusters
        return best.labels_, best.transform(features), by_k[str(len(best.cluster_centers_))], by_k
    km = fit(int(clusters))
    return km.labels_, km.transform(features), score(km), {}


def cluster_images(
    ids: Sequence[str],
    features: np.ndarray,
    clusters: int | str,
    max_clusters: int,
    seed: int,
    identifier: str,
    described: str,
) -> Clustering:
    """Cluster the images whose features are ``features``; cluster i's token derives from ``identifier``."""
    labels, distances, silhouette, by_k = cluster_features(features, clusters, max_clusters, seed)
    k = distances.shape[1]  # k-means' k, even if duplicate images left a cluster empty
    return Clustering(
        ids=list(ids),
        labels=[int(x) for x in labels],
        identifier=identifier,
        tokens=cluster_tokens(identifier, k),
        silhouette=silhouette,
        silhouette_by_k=by_k,
        distances=np.round(distances, 5).tolist(),
        features=described,
    )


def write_clusters(clustering: Clustering, path: Path) -> Path:
    atomic.write_json(path, clustering.to_json())
    return path


def read_clusters(folder: str | Path) -> Clustering | None:
    """The clustering a fine-tune's folder holds; None for a fine-tune of one identifier."""
    path = Path(folder) / CLUSTERS_FILE
    if not path.is_file():
        return None
    return Clustering.from_json(json.loads(path.read_text()))


def instance_prompts(instance_prompt: str, identifier: str, adapter: str | Path | None) -> list[str]:
    """The instance prompt once per identifier token of the fine-tune in ``adapter`` (once for a fine-tune
    of one identifier): what the drift probe and validation grids draw."""
    clustering = read_clusters(adapter) if adapter else None
    if clustering is None:
        return [instance_prompt]
    return identifier_prompts(instance_prompt, identifier, clustering.tokens)


def describe(clustering: Clustering) -> str:
    """One line: k, sizes, silhouette, and any cluster of one image."""
    score = "n/a" if clustering.silhouette is None else f"{clustering.silhouette:.3f}"
    line = f"{clustering.k} clusters of {clustering.sizes} images (silhouette {score}; {clustering.features})"
    if clustering.singletons:
        line += f"; note: cluster(s) {clustering.singletons} hold one image each, their tokens learn from it"
    return line


def real_images_per_cluster(
    paths: Sequence[Path], labels: Sequence[int], k: int, size: tuple[int, int], per_cluster: int
) -> list[torch.Tensor]:
    """The first ``per_cluster`` of each cluster's images (``labels[i]`` is ``paths[i]``'s cluster), resized
    to ``size`` as float (n, 3, H, W) in [0, 1]: the real half of :func:`clusters_grid`."""
    real = []
    for c in range(k):
        chosen = [Path(p) for p, label in zip(paths, labels) if label == c][:per_cluster]
        real.append(to_unit_float(np.stack([decode_resized(p, size, 60_000_000) for p in chosen])))
    return real


def clusters_grid(
    real: Sequence[torch.Tensor], samples: Sequence[torch.Tensor], size: tuple[int, int], per_row: int
) -> torch.Tensor:
    """One row per cluster: up to ``per_row`` of its real images, a blank, then ``per_row`` samples of its
    prompt (float images in [0, 1]); a float image (3, H, W)."""
    blank = torch.ones(1, 3, *size)
    rows = []
    for images, drawn in zip(real, samples):
        images = resize_images(images[:per_row], size)
        pad = blank.expand(per_row - len(images), -1, -1, -1)
        rows += [images, pad, blank, resize_images(drawn[:per_row], size)]
    return make_grid(torch.cat(rows), nrow=2 * per_row + 1, padding=1)
