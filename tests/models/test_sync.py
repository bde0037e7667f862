"""sync_buffers: BatchNorm statistics equal on every data-parallel rank (two real gloo processes)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mcrlab.config import ModelConfig
from mcrlab.models import build_model
from mcrlab.models.sync import sync_buffers


def _model():
    torch.manual_seed(0)
    return build_model([(1, 4, 4), (5, 3)], 3, ModelConfig(encoders=["cnn", "conv1d"], hidden=2, latent=3))


def _worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = _model()
        g = torch.Generator().manual_seed(100 + rank)  # each rank sees its own shard
        model([torch.randn(8, 1, 4, 4, generator=g) * (rank + 1), torch.randn(8, 5, 3, generator=g) + rank])
        before = {k: v.clone() for k, v in model.state_dict().items()}
        n = sync_buffers(model)
        torch.save({"before": before, "after": model.state_dict(), "n": n}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_buffers_are_averaged_across_ranks(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, f"file://{tmp_path / 'pg'}", str(tmp_path / "r")), nprocs=world)
    r = [torch.load(tmp_path / f"r.{i}", weights_only=True) for i in range(world)]
    bufs = [k for k in r[0]["before"] if "running_" in k]
    assert bufs and r[0]["n"] == len(bufs) + sum("num_batches" in k for k in r[0]["before"])
    assert any(not torch.equal(r[0]["before"][k], r[1]["before"][k]) for k in bufs)  # they had drifted
    for k in r[0]["after"]:
        assert torch.equal(r[0]["after"][k], r[1]["after"][k]), k  # equal everywhere after the sync
    for k in bufs:  # the mean of the ranks' statistics
        torch.testing.assert_close(r[0]["after"][k], (r[0]["before"][k] + r[1]["before"][k]) / 2)


def test_without_a_process_group_it_is_a_no_op():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert sync_buffers(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
