"""cluster.yaml is a launcher file Ray accepts, and it exposes nothing but SSH."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_schema(cluster):
    # What `ray up` does before it contacts the cloud: merge the provider's defaults, then validate.
    validate_config(prepare_config(copy.deepcopy(cluster)))
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_l4"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_a_cpu_head_and_autoscaling_gpu_workers(cluster):
    nodes = cluster["available_node_types"]
    assert nodes[cluster["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [n for n in nodes.values() if n["resources"].get("GPU", 0) > 0]
    assert gpu and all(n["min_workers"] < n["max_workers"] for n in gpu)
    assert "-gpu" in cluster["docker"]["image"] or "-cu" in cluster["docker"]["image"]
    assert any("pip install" in c and "leafgen" in c for c in cluster["setup_commands"])


def test_dashboard_and_job_server_stay_on_loopback_with_auth_on(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    text = CLUSTER.read_text()
    assert "0.0.0.0" not in text and "RAY_AUTH_MODE" not in text
    # Shared storage for run directories is mounted at one path on every node.
    assert any("/mnt/leafgen" in c for c in cluster["initialization_commands"])
