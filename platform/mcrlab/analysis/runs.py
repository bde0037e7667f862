"""Runs to tidy tables: select MLflow runs and turn them into the ``(arm, dataset, seed, metric, value)``
table that ``mcrlab.analysis.report`` builds reports from.

Column sources, first found wins:
  arm      tag mcrlab.arm, else the param named by ``group_by`` (default method.name)
  dataset  tag mcrlab.dataset, else param data.name
  seed     tag mcrlab.seed, else param train.seed
Only FINISHED runs that are not marked stale enter; runs that have children (ablation, arm, sweep and
study runs) are containers and are skipped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mcrlab.config import ConfigError

__all__ = ["collect_runs", "tidy_from_runs", "compare"]

K = "mcrlab."
PARENT = "mlflow.parentRunId"
HISTORY_PREFIXES = ("val/D/",)


def collect_runs(uri: str, experiment: str | None = None, run_id: str | None = None,
                 filter_string: str = "") -> list:
    """MLflow ``Run`` objects selected by experiment, by a root run (all descendants) or by a filter."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"--experiment: no MLflow experiment named '{experiment}' in {uri}")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    if run_id is not None:
        try:
            root = client.get_run(run_id)
        except MlflowException:
            raise ConfigError(f"--run: no MLflow run '{run_id}' in {uri}") from None
        exp_ids = [root.info.experiment_id]
        # MLflow's filter has no IN for tags: fetch the experiment once and walk parentRunId in memory
        children: dict[str, list] = {}
        for r in client.search_runs(exp_ids, max_results=50000):
            children.setdefault(r.data.tags.get(PARENT), []).append(r)
        runs, frontier = [], [run_id]
        while frontier:
            level = [c for pid in frontier for c in children.get(pid, [])]
            runs += level
            frontier = [c.info.run_id for c in level]
        if filter_string:
            keep = {r.info.run_id for r in client.search_runs(exp_ids, filter_string, max_results=50000)}
            runs = [r for r in runs if r.info.run_id in keep]
        return runs
    try:
        return client.search_runs(exp_ids, filter_string=filter_string, max_results=50000)
    except MlflowException as err:
        raise ConfigError(f"--filter: MLflow rejected the filter {filter_string!r}: "
                          f"{str(err).splitlines()[0]}") from None


def _field(run, tag: str, param: str | None, default: Any = None) -> Any:
    if f"{K}{tag}" in run.data.tags:
        return run.data.tags[f"{K}{tag}"]
    if param is not None and param in run.data.params:
        return run.data.params[param]
    return default


def _is_result_metric(name: str) -> bool:
    """``split/name`` metrics only: the trial layer's bookkeeping (``objective``, ``epoch``, ``seed``,
    ``best_checkpoint/...``) is not a result to compare."""
    return "/" in name and not name.startswith("best_checkpoint/")


def tidy_from_runs(runs: list, group_by: str = "method.name", uri: str | None = None,
                   history: bool = True):
    """(tidy, history) DataFrames from MLflow runs; history holds per-epoch val/D/* when ``history``."""
    import pandas as pd

    parents = {r.data.tags.get(PARENT) for r in runs}
    rows, hist = [], []
    client = None
    if history and uri is not None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
    for r in runs:
        if r.info.status != "FINISHED" or r.data.tags.get(f"{K}stale") == "true" or r.info.run_id in parents:
            continue
        if not r.data.metrics:
            continue
        arm = _field(r, "arm", group_by, "all")
        dataset = _field(r, "dataset", "data.name", "all")
        seed = _field(r, "seed", "train.seed", r.info.run_id[:8])
        seed = int(seed) if str(seed).lstrip("-").isdigit() else seed
        for metric, value in r.data.metrics.items():
            if not _is_result_metric(metric):
                continue
            rows.append((str(arm), str(dataset), seed, metric, float(value)))
            if client is not None and metric.startswith(HISTORY_PREFIXES):
                for m in client.get_metric_history(r.info.run_id, metric):
                    hist.append((str(arm), str(dataset), seed, metric, m.step, float(m.value)))
    tidy = pd.DataFrame(rows, columns=["arm", "dataset", "seed", "metric", "value"])
    hist_df = pd.DataFrame(hist, columns=["arm", "dataset", "seed", "metric", "step", "value"])
    return tidy, hist_df


def compare(uri: str, *, experiment: str | None = None, run_id: str | None = None, filter_string: str = "",
            formats: list[str] | tuple[str, ...] = ("md", "csv", "tex"), out: str | Path | None = None,
            base: str | None = None, test: str = "t", metrics: list[str] | None = None,
            group_by: str = "method.name", plots: bool = True, log_to: str | None = None):
    """Build and write the report; log it as artifacts of ``log_to`` (an ablation run) when given.

    Returns (report, files). Raises ConfigError for mismatched seeds, missing runs or bad options.
    """
    from mcrlab.analysis.files import write_report
    from mcrlab.analysis.report import build_report
    from mcrlab.tracking import Tracker

    runs = collect_runs(uri, experiment, run_id, filter_string)
    tidy, hist = tidy_from_runs(runs, group_by, uri)
    if tidy.empty:
        what = experiment and f"experiment '{experiment}'" or run_id and f"run {run_id}" or "the store"
        raise ConfigError(f"compare: no FINISHED runs with metrics under {what} "
                          f"(filter: {filter_string or 'none'})")
    rank_metrics = None
    if log_to is not None:
        headline = Tracker(uri).client.get_run(log_to).data.params.get("metric")
        rank_metrics = [headline] if headline else None
    rep = build_report(tidy, base=base, metrics=metrics, test=test, history=hist, rank_metrics=rank_metrics)
    tmp = None
    if out is None:
        tmp = tempfile.mkdtemp(prefix="mcrlab-report-")
        out = tmp
    files = write_report(rep, out, formats, plots=plots)
    if log_to is not None:
        Tracker(uri).log_artifacts(log_to, out, "report")
    return rep, files
