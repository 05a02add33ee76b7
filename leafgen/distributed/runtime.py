"""Starting or joining Ray, the one place that decides how.

- ``ray.address`` or ``RAY_ADDRESS`` set: join that cluster; its token auth stays as the cluster has it.
- Otherwise: a local instance bound to loopback, its dashboard on ``ray.dashboard_host`` (127.0.0.1 unless
  configured), a short temp dir (Unix socket paths are limited to 107 bytes) and token auth off, since
  nothing outside this machine can reach it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from leafgen.config import RayConfig

# Read by Ray when it is imported: makes a local node pick 127.0.0.1 instead of the machine's external
# interface. Only right for a single local node, so it is set only on that path.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _local_temp_dir(cfg: RayConfig) -> str:
    if cfg.temp_dir:
        return cfg.temp_dir
    path = Path(tempfile.gettempdir()) / f"lg-ray-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def cluster_address(cfg: RayConfig) -> str | None:
    """The cluster to join, or None for a local instance."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(cfg: RayConfig | None = None, **extra: Any) -> dict[str, float]:
    """Start or join Ray unless this process already has; returns the cluster's resources."""
    cfg = cfg or RayConfig()
    address = cluster_address(cfg)
    if address is None and "ray" not in sys.modules:
        os.environ.setdefault(_LOOPBACK_ENV, "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    # Workers must see the driver's offline switch, or they would try to reach the hub.
    offline = os.environ.get("HF_HUB_OFFLINE")
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": offline}} if offline else None
    if address is not None:
        ray.init(address=address, runtime_env=runtime_env, **extra)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            dashboard_host=cfg.dashboard_host,
            _temp_dir=_local_temp_dir(cfg),
            runtime_env=runtime_env,
            **extra,
        )
    return ray.cluster_resources()


def job_resources(cfg: RayConfig | None = None) -> dict[str, float]:
    """The resources one training run or generation pool may plan with: the cluster's, capped by
    ``ray.job_cpus`` and ``ray.job_gpus`` (a Tune trial's share)."""
    cfg = cfg or RayConfig()
    resources = dict(ensure_ray(cfg))
    for name, cap in (("CPU", cfg.job_cpus), ("GPU", cfg.job_gpus)):
        if cap is not None:
            resources[name] = min(resources.get(name, 0), cap)
    return resources


def shutdown() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def quiet_train_report_log() -> None:
    """Silence Ray Train's per-report INFO line inside a worker.

    Ray 2.60 logs every report (with all metrics) at INFO under a logger named by its file path, which
    LoggingConfig does not reach; the driver callbacks print one line per report instead.
    """
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
