"""Data-parallel fit on Ray Train: 2 CPU workers (gloo) reproduce the single-process loss curve.

fit shards each global batch by rank and averages gradients, so for a method without in-batch
randomness (joint) the curve must match the single-process one to float tolerance. MCR draws its
permutations per worker over the local batch (train.py), so its curve matches only within noise.
"""

from __future__ import annotations

import pytest

from mcrlab.config import RunConfig
from mcrlab.engine.fit import fit
from mcrlab.trials.data_parallel import fit_distributed, run_name, scaling_config

TINY = {"data": {"name": "synthetic:competition", "n_train": 256},
        "model": {"hidden": 16, "latent": 8, "depth": 1},
        "train": {"epochs": 3, "batch_size": 64, "probe_epochs": 0, "eval_perms": 1, "lr": 3e-3,
                  "device": "cpu"}}


def _cfg(method: dict) -> RunConfig:
    return RunConfig.from_dict({**TINY, "method": method})


def _history(cfg: RunConfig) -> list[dict]:
    hist: list[dict] = []
    fit(cfg, lambda m, _c: hist.append(m))
    return hist


def _distributed_history(cfg: RunConfig, tmp_path, name: str) -> tuple[list[dict], object]:
    # keep every epoch's checkpoint: their metrics are the per-epoch reports of rank 0
    result = fit_distributed(cfg, workers=2, name=name, storage_path=tmp_path, keep_checkpoints=None)
    hist = sorted((m for _c, m in result.best_checkpoints), key=lambda m: m["epoch"])
    return hist, result


def test_run_name_is_a_stable_resume_key():
    assert run_name("sw-1", "abc_00001") == run_name("sw-1", "abc_00001") == "sw-1-abc_00001"
    assert run_name("sw-1", "abc_00001") != run_name("sw-2", "abc_00001")


def test_scaling_config_requests_gpus_only_when_asked():
    cpu = scaling_config(2, 1.0, 0.0)
    gpu = scaling_config(2, 2.0, 1.0)
    assert cpu.num_workers == 2 and not cpu.use_gpu and "GPU" not in cpu.resources_per_worker
    assert gpu.use_gpu and gpu.resources_per_worker == {"CPU": 2.0, "GPU": 1.0}


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_match_one_exactly_for_joint(ray_local, tmp_path):
    cfg = _cfg({"name": "joint"})
    single = _history(cfg)
    dist, result = _distributed_history(cfg, tmp_path, "joint2")
    assert [m["epoch"] for m in dist] == [m["epoch"] for m in single] == [1, 2, 3]
    # same global batches, averaged gradients: the same weights up to float summation order
    for key in ("train/loss", "val/acc", "val/f1"):
        assert [m[key] for m in dist] == pytest.approx([m[key] for m in single], rel=1e-4, abs=1e-5), key
    assert result.metrics["test/acc"] == pytest.approx(single[-1]["test/acc"], abs=1e-4)
    assert result.checkpoint is not None


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_match_one_within_noise_for_mcr(ray_local, tmp_path):
    cfg = _cfg({"name": "mcr", "num_perms": 4, "lambda_m": 0.05})
    single = [m["train/loss"] for m in _history(cfg)]
    dist = [m["train/loss"] for m in _distributed_history(cfg, tmp_path, "mcr2")[0]]
    assert len(dist) == len(single) == 3
    # permutations are drawn per worker over its local batch: same curve up to the regulariser's noise
    assert dist == pytest.approx(single, rel=0.1)
    assert dist[-1] < dist[0]  # it trains


@pytest.mark.ray
@pytest.mark.slow
def test_streamed_shards_reach_each_worker_through_ray_data(ray_local, tmp_path):
    """A streamed shard folder: Ray Train splits the train rows over 2 workers (get_dataset_shard), each
    worker trains on its own part, and val/test stream from the folder; the run completes and learns."""
    import numpy as np

    from mcrlab.data.shards import write_shards
    from mcrlab.trials.data_parallel import streams_through_ray_data

    rng = np.random.default_rng(0)
    n = 240
    y = np.arange(n) % 2
    feats = {"img": rng.normal(size=(n, 1, 3, 3)) + 1.5 * y[:, None, None, None], "vec": rng.normal(size=(n, 4))}
    split = np.array(["train"] * 160 + ["val"] * 40 + ["test"] * 40)
    write_shards(tmp_path / "sh", feats, y, split, rows_per_shard=40)
    cfg = RunConfig.from_dict({**TINY, "data": {"name": str(tmp_path / "sh"), "loader": "stream"},
                               "method": {"name": "joint"}, "train": {**TINY["train"], "batch_size": 16}})
    assert streams_through_ray_data(cfg)
    assert not streams_through_ray_data(RunConfig.from_dict({**TINY, "method": {"name": "joint"}}))
    # fractional CPUs leave one CPU for Ray Data's read tasks
    result = fit_distributed(cfg, workers=2, cpus_per_worker=0.5, name="stream2", storage_path=tmp_path / "runs")
    assert result.metrics["epoch"] == 3 and result.metrics["test/acc"] > 0.7
