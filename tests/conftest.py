"""Shared fixtures: one real local Ray per session (num_cpus=2, no dashboard), MLflow on SQLite."""

from __future__ import annotations

import os

import pytest
import torch

# The machine has 2 cores; intra-op threads beyond that only add contention with Ray workers.
torch.set_num_threads(1)
# Ray >= 2.59 turns token auth on for local clusters; tests (and only tests) switch it off.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster shared by the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path):
    """A fresh SQLite-backed MLflow tracking store under tmp_path (absolute URI)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
