"""One identifier per sub-cluster: tokens and prompts, k-means and the silhouette choice, the record, the
grid, and the loop pairing each instance image with its cluster's prompt."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from leafgen.config import DreamBoothConfig
from leafgen.diffusion.finetune.clusters import (
    check_cluster_count,
    cluster_images,
    clusters_grid,
    describe,
    instance_prompts,
    nearest_cluster,
    read_clusters,
    real_images_per_cluster,
    write_clusters,
)
from leafgen.diffusion.finetune.identifier import cluster_tokens, expand_prompts
from leafgen.diffusion.probes.drift import probe_prompts
from leafgen.errors import ConfigError

from .conftest import trainer


def blobs(sizes: list[int], seed: int = 0) -> np.ndarray:
    """Unit vectors in tight groups around orthogonal directions, one group per size."""
    rng = np.random.default_rng(seed)
    dim = 8
    groups = [np.eye(dim)[i] + 0.05 * rng.normal(size=(n, dim)) for i, n in enumerate(sizes)]
    x = np.concatenate(groups)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cluster_tokens_and_prompts_hold_the_identifiers_place():
    assert cluster_tokens("<disease-leaf>", 1) == ["<disease-leaf>"]
    assert cluster_tokens("<disease-leaf>", 2) == ["<disease-leaf-0>", "<disease-leaf-1>"]
    assert cluster_tokens("sks", 2) == ["sks-0", "sks-1"]
    prompts = expand_prompts(
        ("<disease-leaf> leaf", "leaf"), "<disease-leaf>", cluster_tokens("<disease-leaf>", 2)
    )
    assert prompts == ["<disease-leaf-0> leaf", "<disease-leaf-1> leaf", "leaf"]
    assert probe_prompts(prompts[:2])[:3] == [*prompts[:2], "leaf"]  # every cluster's, then the class


def test_auto_picks_the_k_with_the_best_silhouette_and_records_it(tmp_path):
    features = blobs([5, 4, 3])
    ids = [f"Train_{i}" for i in range(len(features))]
    clustering = cluster_images(ids, features, "auto", 5, 0, "<disease-leaf>", "test features")
    assert clustering.k == 3 and sorted(clustering.sizes) == [3, 4, 5]
    assert set(clustering.silhouette_by_k) == {"2", "3", "4", "5"}
    assert clustering.silhouette == max(clustering.silhouette_by_k.values()) > 0.8
    labels = np.asarray(clustering.labels)
    for start, stop in ((0, 5), (5, 9), (9, 12)):  # every blob is one cluster
        assert len(set(labels[start:stop])) == 1
    nearest = np.asarray(clustering.distances).argmin(1)
    assert (nearest == labels).all()
    assert clustering.tokens == cluster_tokens("<disease-leaf>", 3)
    # The same features and seed give the same clusters.
    again = cluster_images(ids, features, "auto", 5, 0, "<disease-leaf>", "test features")
    assert again.labels == clustering.labels

    write_clusters(clustering, tmp_path / "clusters.json")
    assert read_clusters(tmp_path) == clustering
    assert read_clusters(tmp_path / "none") is None
    assert instance_prompts("<disease-leaf> leaf", "<disease-leaf>", tmp_path) == [
        f"<disease-leaf-{i}> leaf" for i in range(3)
    ]
    assert instance_prompts("<disease-leaf> leaf", "<disease-leaf>", None) == ["<disease-leaf> leaf"]


def test_nearest_cluster_compares_directions_to_each_clusters_mean():
    features = blobs([3, 4])
    labels = [0, 0, 0, 1, 1, 1, 1]
    queries = np.stack([5 * np.eye(8)[1], 0.2 * np.eye(8)[0], np.eye(8)[0] + 0.9 * np.eye(8)[1]])
    assert nearest_cluster(features, labels, queries).tolist() == [1, 0, 0]  # length does not count


def test_auto_tries_at_most_one_cluster_fewer_than_images_and_single_image_clusters_are_reported():
    features = blobs([1, 1, 1])
    auto = cluster_images(["a", "b", "c"], features, "auto", 4, 0, "<x>", "test")
    assert set(auto.silhouette_by_k) == {"2"}
    fixed = cluster_images(["a", "b", "c"], features, 3, 4, 0, "<x>", "test")
    assert fixed.k == 3 and fixed.silhouette is None and fixed.singletons == [0, 1, 2]
    assert "hold one image each" in describe(fixed)


@pytest.mark.parametrize(
    ("clusters", "images", "message"),
    [(4, 3, "4 clusters but the train split holds 3"), ("auto", 2, "needs at least 3")],
)
def test_more_clusters_than_images_is_refused_naming_the_key(clusters, images, message):
    with pytest.raises(ConfigError, match=f"dreambooth.clusters: .*{message}"):
        check_cluster_count(clusters, images, "multiple_diseases")
    check_cluster_count(images if clusters != "auto" else "auto", max(images, 3), "multiple_diseases")


def test_the_grid_puts_each_clusters_real_images_beside_its_samples():
    real = [torch.zeros(2, 3, 8, 12), torch.zeros(4, 3, 8, 12)]
    samples = [torch.ones(4, 3, 8, 12), torch.ones(4, 3, 8, 12)]
    grid = clusters_grid(real, samples, (8, 12), 4)
    assert grid.shape == (3, 2 * 9 + 1, 9 * 13 + 1)  # 2 rows of 4 real, a blank, 4 samples


def test_real_images_per_cluster_takes_each_clusters_first_images_in_order(tmp_path):
    paths = []
    for i, shade in enumerate([10, 60, 110, 160, 210]):
        paths.append(tmp_path / f"leaf_{i}.png")
        Image.new("RGB", (24, 16), (shade, shade, shade)).save(paths[-1])
    real = real_images_per_cluster(paths, [1, 0, 1, 1, 0], 2, (8, 12), 2)
    assert [r.shape for r in real] == [(2, 3, 8, 12), (2, 3, 8, 12)]
    shades = [[round(float(img.mean()) * 255) for img in r] for r in real]
    assert shades == [[60, 210], [10, 110]]  # cluster 1 stops at two of its three


def test_each_instance_image_trains_with_its_clusters_prompt(tiny_model_dir, image_sets):
    cfg = replace(DreamBoothConfig(num_class_images=4, train_batch_size=4, lora_rank=2), clusters=2)
    clusters = [min(i, 1) for i in range(len(image_sets[0]))]
    t = trainer(cfg, tiny_model_dir, image_sets, instance_clusters=clusters)
    ids = t.prompt_ids.tolist()
    tokens = t.models.tokenizer.convert_ids_to_tokens
    assert [tokens(row)[1] for row in ids[:2]] == ["<disease-leaf-0>", "<disease-leaf-1>"]
    assert tokens(ids[2])[1] == "leaf</w>"  # the class prompt comes last
    for _ in range(3):
        state = t.generator.get_state()
        drawn = torch.randint(0, len(clusters), (4,), generator=torch.Generator().set_state(state))
        _, prompts = t._batch()
        assert prompts.tolist() == [clusters[i] for i in drawn.tolist()] + [2] * 4
    with pytest.raises(ValueError, match="one cluster index per instance image"):
        trainer(cfg, tiny_model_dir, image_sets, instance_clusters=[0])
