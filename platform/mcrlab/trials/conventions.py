"""MLflow's own conventions, filled by the platform: dataset inputs and experiment descriptions.

A training dataset becomes an MLflow dataset input (``MlflowClient.log_inputs``): the run's Datasets column.

MLflow identifies a dataset by name and digest; the digest here is the dataset's content fingerprint
(``MultimodalDataset.fingerprint``, the same value as the ``mcrlab.dataset_fingerprint`` tag), cut to the 36
characters MLflow's SQL stores hold. The schema is MLflow's tensor-spec form (one float32 tensor per
modality, ``(-1, dim)``, and the integer label), so the UI shows it as for ``mlflow.data.from_numpy``; the
profile has the split sizes and the number of classes.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dataset_input", "log_dataset", "describe_experiment", "DIGEST_CHARS", "NOTE_TAG", "TUNE_TRIAL_ATTR",
           "MLFLOW_RUN_ATTR", "SWEEP_ATTR"]

NOTE_TAG = "mlflow.note.content"  # the experiment's (and a run's) description in MLflow's UI
# user attrs linking an Optuna trial to Tune and MLflow (set by tune.searcher and trials.recorder)
TUNE_TRIAL_ATTR = "tune_trial_id"
MLFLOW_RUN_ATTR = "mlflow_run_id"
SWEEP_ATTR = "mcrlab_sweep_id"  # Optuna user attr: the sweep (driver) that ran the trial (shared studies)

DIGEST_CHARS = 36  # MLflow's datasets.digest column is String(36)


def dataset_input(dataset: Any, context: str = "training") -> Any:
    """``mlflow.entities.DatasetInput`` for a ``MultimodalDataset`` (``context``: MLflow's input context tag)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    features = [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, int(d)]}, "name": m}
                for m, d in zip(dataset.modalities, dataset.dims)]
    targets = [{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}, "name": "label"}]
    schema = {"mlflow_tensorspec": {"features": json.dumps(features), "targets": json.dumps(targets)}}
    fingerprint = dataset.fingerprint()
    profile = {"num_rows": {name: len(split) for name, split in dataset.splits.items()},
               "num_classes": int(dataset.num_classes), "fingerprint": fingerprint}
    entity = Dataset(name=str(dataset.name), digest=fingerprint[:DIGEST_CHARS], source_type="mcrlab",
                     source=json.dumps({"dataset": str(dataset.name)}), schema=json.dumps(schema),
                     profile=json.dumps(profile))
    return DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])


def log_dataset(client: Any, run_id: str, dataset: Any, context: str = "training") -> None:
    """Log ``dataset`` as an input of run ``run_id``."""
    client.log_inputs(run_id, datasets=[dataset_input(dataset, context)])


def describe_experiment(client: Any, experiment_id: str, text: str, *, replace: bool = False) -> None:
    """Set the experiment's description (shown above its runs in MLflow's UI), unless it has one already
    (``replace`` overwrites it): several ablations may share one experiment, the first one describes it."""
    if not text:
        return
    if not replace:
        exp = client.get_experiment(experiment_id)
        if exp.tags.get(NOTE_TAG):
            return
    client.set_experiment_tag(experiment_id, NOTE_TAG, text)
