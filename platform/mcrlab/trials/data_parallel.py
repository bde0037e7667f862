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
           "run_name"]


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
                 callbacks: Sequence[Any] = (), keep_checkpoints: int | None = 1):
    """A TorchTrainer for ``loop`` (run on every worker) with checkpointing and failure handling."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker > 0 else "gloo"),
        scaling_config=scaling_config(workers, cpus_per_worker, gpus_per_worker),
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


def _fit_loop(config: dict) -> None:
    """Worker loop of ``fit_distributed``: one fit, resumed from the run's latest checkpoint if any."""
    from mcrlab.engine.fit import fit

    cfg = RunConfig.from_dict(config["run"])
    with worker_resume() as resume_from:
        fit(cfg, report=worker_report(), checkpoint_dir=local_checkpoint_dir(), resume_from=resume_from)


def fit_distributed(cfg: RunConfig, *, workers: int = 2, cpus_per_worker: float = 1.0,
                    gpus_per_worker: float = 0.0, name: str = "fit", storage_path: str | Path = "runs/train",
                    metric: str = "val/acc", mode: str = "max", max_failures: int = 2,
                    keep_checkpoints: int | None = 1):
    """Run ``fit(cfg)`` data-parallel on ``workers`` Ray Train workers; return the ``ray.train.Result``.

    ``result.metrics`` is the last epoch's report (with test/*), ``result.best_checkpoints`` the kept
    checkpoints (``keep_checkpoints`` None keeps every epoch's, with its metrics). Re-running with the
    same ``name`` and ``storage_path`` continues from the latest one.
    """
    trainer = make_trainer(_fit_loop, {"run": cfg.to_dict()}, name=name, storage_path=storage_path,
                           workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                           metric=metric, mode=mode, max_failures=max_failures,
                           keep_checkpoints=keep_checkpoints)
    return trainer.fit()
