"""Data-parallel ``fit`` on Ray Train (TorchTrainer; gloo on CPU, NCCL on GPU).

Each worker calls ``mcrlab.engine.fit.fit`` unchanged: under torch.distributed fit itself shards every global
batch by rank and all-reduces gradients (see train.py), so there is no DDP wrapper here. This module
adds what Ray needs around it:

- ``worker_report()``: fit's ``report(metrics, checkpoint_dir)`` -> ``ray.train.report``. Every rank
  calls it (it is a barrier); only rank 0 attaches the checkpoint, which fit writes on rank 0 only.
- ``worker_resume()``: the run's latest checkpoint (``ray.train.get_checkpoint``) as a local directory,
  for fit's ``resume_from`` - how a run continues after a lost worker (FailureConfig) or a restart
  under the same run name (the name is the resume key).
- ``make_trainer`` / ``fit_distributed``: the TorchTrainer with per-epoch checkpoints, the best one
  kept by the run's metric (plus always the latest, which resume needs).

Data: with a shard folder that streams (``data.loader=stream``, or ``auto`` above the memory threshold),
``fit_distributed`` hands the train split to the TorchTrainer as a Ray Data dataset; Ray Train splits it
(``streaming_split``, equal rows per worker) and each worker reads only its own part through
``ray.train.get_dataset_shard("train")``, wrapped as fit's ``train_batches`` (``RayDataBatches``), so
fit itself imports no Ray. Val/test are streamed by every worker from the shared folder. Other datasets
go through fit's own loaders (in memory: rows ``rank::world`` of every global batch; streamed without
Ray Data, e.g. from the sweep backends: each rank its own row groups, ``data/stream.py``).

MCR's permutations are drawn per worker over its local batch (documented in train.py): the
data-parallel loss curve matches the single-process one exactly for methods without in-batch
randomness and within sampling noise for MCR (tests/test_ray_train.py checks both).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mcrlab.config import RunConfig

__all__ = ["scaling_config", "worker_report", "worker_resume", "make_trainer", "fit_distributed",
           "run_name", "RayDataBatches", "streams_through_ray_data"]


def run_name(sweep_id: str, trial_id: str) -> str:
    """Ray Train run names are resume keys: the same sweep and trial always give the same name."""
    return f"{sweep_id}-{trial_id}"


def scaling_config(workers: int, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0):
    """A ScalingConfig with explicit per-worker resources (GPUs only when asked for)."""
    from ray.train import ScalingConfig

    resources = {"CPU": float(cpus_per_worker)}
    if gpus_per_worker > 0:
        resources["GPU"] = float(gpus_per_worker)
    return ScalingConfig(num_workers=int(workers), use_gpu=gpus_per_worker > 0, resources_per_worker=resources)


def worker_report() -> Callable[[dict[str, Any], str | None], None]:
    """fit's report callable for a Ray Train worker (must be called on every rank each epoch)."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()

    def report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        metrics = _mean_over_ranks(metrics)
        checkpoint = None
        if checkpoint_dir is not None and rank == 0:
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
        ray.train.report(dict(metrics), checkpoint=checkpoint)

    return report


def _mean_over_ranks(metrics: dict[str, Any]) -> dict[str, Any]:
    """Average the ``train/*`` metrics over ranks: each rank's are means over its half of the batch, so
    the average is the global-batch value (what a single process reports). Val/test metrics are
    computed on the full split by every rank already."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(metrics)
    keys = sorted(k for k, v in metrics.items() if k.startswith("train/") and isinstance(v, (int, float)))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    values /= dist.get_world_size()
    return {**metrics, **dict(zip(keys, values.tolist()))}


@contextlib.contextmanager
def worker_resume() -> Iterator[str | None]:
    """The latest reported checkpoint of this run as a local directory (None on a fresh start)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as path:
        yield path


def local_checkpoint_dir() -> str:
    """A per-worker scratch directory for fit's checkpoint (two workers on one node must not share)."""
    return tempfile.mkdtemp(prefix="mcrlab-ckpt-")


def make_trainer(loop: Callable[[dict], None], loop_config: dict, *, name: str, storage_path: str | Path,
                 workers: int, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                 metric: str = "val/acc", mode: str = "max", max_failures: int = 2,
                 callbacks: Sequence[Any] = (), keep_checkpoints: int | None = 1,
                 datasets: dict[str, Any] | None = None):
    """A TorchTrainer for ``loop`` (run on every worker) with checkpointing and failure handling.

    ``datasets``: Ray Data datasets Ray Train splits over the workers (``get_dataset_shard(name)``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker > 0 else "gloo"),
        scaling_config=scaling_config(workers, cpus_per_worker, gpus_per_worker),
        datasets=datasets,
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            # best by the run's metric; Ray Train always keeps the latest too, so resume still works
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints, checkpoint_score_attribute=metric,
                                               checkpoint_score_order=mode),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=list(callbacks) or None,
        ),
    )


class RayDataBatches:
    """fit's ``train_batches`` from this worker's Ray Data shard (``ray.train.get_dataset_shard``).

    Ray Train gives every worker ``rows // world`` rows (equal split). Each step takes this rank's
    ``len(range(rank, batch_size, world))`` rows, as the in-memory path does; ``steps`` is what the
    rank with the largest share of a batch can do, so every rank runs the same number of steps. The
    order: Ray Data's local shuffle buffer, seeded per epoch from fit's generator and the rank.
    """

    def __init__(self, shard: Any, *, rows: int, batch_size: int, rank: int, world: int,
                 modalities: list[str], shapes: list[tuple[int, ...]], num_classes: int, shuffle_rows: int):
        self.shard, self.rank = shard, rank
        self.modalities, self.shapes, self.num_classes = modalities, shapes, num_classes
        self.local_batch = len(range(rank, batch_size, world))
        per_rank = rows // world
        largest = len(range(0, batch_size, world))
        if per_rank < largest:
            raise ValueError(f"train split: {rows} rows for {world} workers, fewer than one batch per worker")
        self.steps = per_rank // largest
        self.shuffle_rows = max(shuffle_rows, 4 * self.local_batch)

    def epoch(self, generator):
        import torch

        from mcrlab.data.shards import table_features, table_labels

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        tables = self.shard.iter_batches(batch_size=self.local_batch, batch_format="pyarrow", drop_last=True,
                                         local_shuffle_buffer_size=self.shuffle_rows,
                                         local_shuffle_seed=seed + self.rank)
        where = f"Ray Data shard of rank {self.rank}"
        done = 0
        for table in tables:
            if done == self.steps:
                break
            xs = [torch.from_numpy(table_features(table, m, s, where))
                  for m, s in zip(self.modalities, self.shapes, strict=True)]
            yield xs, torch.from_numpy(table_labels(table, self.num_classes, where))
            done += 1
        if done < self.steps:
            raise RuntimeError(f"{where}: {done} of {self.steps} batches (the split is not equal?)")


def streams_through_ray_data(cfg: RunConfig) -> bool:
    """True when ``cfg.data`` names a shard folder that ``data.loader`` streams (not a plug-in)."""
    from mcrlab.data import AUTO_MEMORY_MIB, SPLITS, resolve_plugin

    name = cfg.data.name
    if cfg.data.loader == "memory" or name.startswith(("synthetic:", "mfeat:")) or name == "digits" \
            or not Path(name).exists() or resolve_plugin(name) is not None:
        return False
    if cfg.data.loader == "stream":
        return True
    from mcrlab.data.stream import open_shards, split_bytes

    ds = open_shards(name)
    return sum(split_bytes(ds, s) for s in SPLITS) > AUTO_MEMORY_MIB * 2**20


def _fit_loop(config: dict) -> None:
    """Worker loop of ``fit_distributed``: one fit, resumed from the run's latest checkpoint if any."""
    import ray.train

    from mcrlab.engine.fit import fit

    cfg = RunConfig.from_dict(config["run"])
    dataset = batches = None
    if config.get("ray_data"):
        from mcrlab.data.stream import open_shards

        dataset = open_shards(cfg.data.name)  # footers only: val/test stream from the folder
        ctx = ray.train.get_context()
        train = dataset.splits["train"]
        batches = RayDataBatches(ray.train.get_dataset_shard("train"), rows=len(train),
                                 batch_size=cfg.train.batch_size, rank=ctx.get_world_rank(),
                                 world=ctx.get_world_size(), modalities=dataset.modalities,
                                 shapes=dataset.shapes, num_classes=dataset.num_classes,
                                 shuffle_rows=max(1, int(cfg.data.shuffle_mib * 2**20) // train.row_bytes))
    with worker_resume() as resume_from:
        fit(cfg, report=worker_report(), checkpoint_dir=local_checkpoint_dir(), resume_from=resume_from,
            dataset=dataset, train_batches=batches)


def fit_distributed(cfg: RunConfig, *, workers: int = 2, cpus_per_worker: float = 1.0,
                    gpus_per_worker: float = 0.0, name: str = "fit", storage_path: str | Path = "runs/train",
                    metric: str = "val/acc", mode: str = "max", max_failures: int = 2,
                    keep_checkpoints: int | None = 1):
    """Run ``fit(cfg)`` data-parallel on ``workers`` Ray Train workers; return the ``ray.train.Result``.

    ``result.metrics`` is the last epoch's report (with test/*), ``result.best_checkpoints`` the kept
    checkpoints (``keep_checkpoints`` None keeps every epoch's, with its metrics). Re-running with the
    same ``name`` and ``storage_path`` continues from the latest one. A streamed shard folder is read
    through Ray Data, each worker its own part (module docstring); leave CPUs free for its read tasks
    (e.g. ``cpus_per_worker=0.5`` on a 2-CPU machine with 2 workers).
    """
    ray_data = workers > 1 and streams_through_ray_data(cfg)
    datasets = None
    if ray_data:
        from mcrlab.data.ray_data import split_dataset

        datasets = {"train": split_dataset(cfg.data.name, "train")}
    trainer = make_trainer(_fit_loop, {"run": cfg.to_dict(), "ray_data": ray_data}, name=name,
                           storage_path=storage_path, workers=workers, cpus_per_worker=cpus_per_worker,
                           gpus_per_worker=gpus_per_worker, metric=metric, mode=mode, max_failures=max_failures,
                           keep_checkpoints=keep_checkpoints, datasets=datasets)
    return trainer.fit()
