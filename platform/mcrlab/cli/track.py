"""``mcrlab train --track``: one training run recorded in MLflow like a sweep trial.

The run (experiment ``--experiment``, default ``train``) gets the resolved config as params and as the
``config.json`` artifact (so ``mcrlab train --from-run`` and ablation ``base_run`` can start from it), the
lineage and MLflow source tags (``kind=train``, config hash, dataset fingerprint, ``base_run_id`` when it
came ``--from-run``, ``init``/``init_run_id``/``init_key`` of ``model.init``), the dataset as its input, one
metric step per epoch, the final metrics and the selected model (``model/state.pt``, so another run can start
from it with ``model.init=<run id>``); it ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcrlab.config import RunConfig

__all__ = ["TrainTracking"]


class TrainTracking:
    def __init__(self, uri: str, experiment: str, cfg: RunConfig, dataset: Any, *, from_run: str | None = None):
        from mcrlab.tracking import Tracker, lineage_tags
        from mcrlab.trials.conventions import log_dataset

        self.tracker = Tracker(uri)
        exp_id = self.tracker.experiment(experiment)
        from mcrlab.engine.pretrain import init_lineage

        tags = lineage_tags("train", config_hash=cfg.hash(), dataset_fingerprint=dataset.fingerprint(),
                            base_run_id=from_run, dataset=cfg.data.name, seed=cfg.train.seed,
                            **init_lineage(cfg, dataset.fingerprint()))
        self.run_id = self.tracker.start_run(exp_id, f"{cfg.method.name}-{cfg.data.name}-s{cfg.train.seed}",
                                             tags=tags, params=cfg.flat())
        self.experiment_id = exp_id
        self.tracker.log_dict(self.run_id, cfg.to_dict(), "config.json")
        log_dataset(self.tracker.client, self.run_id, dataset)

    def reporter(self, inner: Callable | None) -> Callable:
        """A fit reporter that logs each epoch's metrics (step = epoch) and then calls ``inner``."""

        def report(metrics: dict, checkpoint_dir: str | None) -> None:
            self.tracker.log_metrics(self.run_id, metrics, step=int(metrics.get("epoch", 0)))
            if inner is not None:
                inner(metrics, checkpoint_dir)

        return report

    def finish(self, metrics: dict | None, status: str = "FINISHED", model_file: str | None = None) -> None:
        """Final metrics, the selected model (``model_file``, written by ``fit(model_out=...)``) as the
        ``model/state.pt`` artifact (what ``model.init=<run id>`` reads), then the run's end status."""
        if metrics:
            self.tracker.log_metrics(self.run_id, {k: v for k, v in metrics.items()
                                                   if k.startswith("test/") or k == "val/best_acc"})
        if model_file is not None and Path(model_file).is_file():
            self.tracker.log_artifact(self.run_id, model_file, "model")
        self.tracker.end_run(self.run_id, status)
