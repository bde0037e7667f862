"""A sweep's analysis from its Optuna studies: parameter importances and Optuna's standard plots.

Per study (one per dataset) of a sweep folder (``runs/sweeps/<sweep id>``: ``sweep.json`` + ``optuna.db``)::

    <out>/<study slug>/optimization_history.png   objective per trial, best so far
    <out>/<study slug>/param_importances.png      importances (Optuna's default evaluator) (also param_importances.json)
    <out>/<study slug>/parallel_coordinate.png    every trial's parameters, coloured by objective
    <out>/<study slug>/slice.png                  objective against each parameter
    <out>/<study slug>/contour.png                objective over parameter pairs (two or more parameters)

A multi-objective study (several metrics) also gets::

    <out>/<study slug>/pareto_front.png           Optuna's Pareto-front plot (two or three objectives)
    <out>/<study slug>/pareto_front.csv           the front: Optuna trial, Tune trial, MLflow run id, each objective

and its other plots and importances are those of the first objective (``param_importances.json`` holds
every objective's).

The plots are ``optuna.visualization.matplotlib``'s (matplotlib only, no plotly). A plot that the study cannot
support (one finished trial, one parameter for a contour) is skipped and said so in ``skipped``; a report
is never a reason to fail a sweep. ``log_sweep_report`` puts the files on the sweep's MLflow run under
``report/<study slug>/``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcrlab.config import ConfigError

__all__ = ["SweepInfo", "StudyReport", "find_sweep", "study_report", "sweep_report", "log_sweep_report",
           "format_importances", "pareto_rows", "format_pareto", "importances_per_objective",
           "importances_for"]

# the Optuna user attrs that link a trial to Tune and MLflow: the names trials.conventions writes (analysis
# and trials are sibling layers; tests/tune/test_sweep_report.py checks they agree)
TUNE_TRIAL_ATTR = "tune_trial_id"
MLFLOW_RUN_ATTR = "mlflow_run_id"
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "slice", "contour", "pareto_front")


@dataclass
class SweepInfo:
    sweep_id: str
    sweep_dir: Path
    optuna_storage: str
    tracking_uri: str | None
    run_id: str | None  # the sweep's MLflow run
    metric: str | None = None
    studies: list[str] | None = None  # its Optuna studies (None: every study of the storage, its own file)


@dataclass
class StudyReport:
    study: str  # Optuna study name (<sweep id>/<slug>)
    slug: str
    importances: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # plot -> why
    counts: dict[str, int] = field(default_factory=dict)  # trial state -> number
    objectives: list[str] = field(default_factory=list)  # the study's metric names (several: multi-objective)
    pareto: list[dict] = field(default_factory=list)  # multi-objective: the front (see pareto_rows)


def find_sweep(target: str, storage: str | Path = "runs") -> SweepInfo:
    """A sweep by folder (holding ``sweep.json``) or by id under ``<storage>/sweeps``; ConfigError if neither."""
    path = Path(target).expanduser()
    candidates = [path, Path(storage).expanduser() / "sweeps" / target]
    for folder in candidates:
        meta_file = folder / "sweep.json"
        if meta_file.is_file():
            break
    else:
        raise ConfigError(f"report: '{target}' is neither a sweep folder (with sweep.json) nor a sweep id under "
                          f"{Path(storage) / 'sweeps'}")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{meta_file}: not readable as JSON ({err})") from None
    studies = None
    if meta.get("optuna_storage"):  # a study shared with other drivers (--optuna-storage): only this sweep's
        storage = str(meta["optuna_storage"])
        studies = [str(s["optuna_study"]) for s in (meta.get("studies") or {}).values()
                   if isinstance(s, dict) and s.get("optuna_study")]
    else:
        db = folder / "optuna.db"
        if not db.is_file():
            raise ConfigError(f"{folder}: no optuna.db (the sweep never started a study)")
        storage = f"sqlite:///{db.resolve()}"
    return SweepInfo(sweep_id=str(meta.get("sweep_id", folder.name)), sweep_dir=folder.resolve(),
                     optuna_storage=storage, tracking_uri=meta.get("tracking_uri"),
                     run_id=meta.get("mlflow_run_id"), studies=studies)


def importances_for(rep: StudyReport) -> str:
    """`` for val/acc`` when a multi-objective study's printed importances are its first objective's."""
    return f" for {rep.objectives[0]}" if len(rep.objectives) > 1 else ""


def format_importances(importances: dict[str, float], width: int = 24) -> list[str]:
    """``["train.lr  0.73  ##############", ...]``, most important first."""
    out = []
    for name, value in sorted(importances.items(), key=lambda kv: -kv[1]):
        bar = "#" * int(round(20 * value)) if math.isfinite(value) else ""
        out.append(f"{name:<{width}} {value:5.2f}  {bar}")
    return out


def pareto_rows(study: Any) -> list[dict]:
    """The Pareto front of a multi-objective study (Optuna's ``best_trials``: non-dominated COMPLETE trials),
    by trial number: ``{"number", "trial_id" (Tune), "run_id" (MLflow), "values": {metric: value}, "params"}``."""
    names = list(study.metric_names or [f"objective {k}" for k in range(len(study.directions))])
    return [{"number": t.number, "trial_id": str(t.user_attrs.get(TUNE_TRIAL_ATTR, "")),
             "run_id": str(t.user_attrs.get(MLFLOW_RUN_ATTR, "")),
             "values": {n: float(v) for n, v in zip(names, t.values, strict=True)}, "params": dict(t.params)}
            for t in sorted(study.best_trials, key=lambda t: t.number)]


def importances_per_objective(study: Any) -> dict[str, dict[str, float]]:
    """Optuna's parameter importances of each objective of a multi-objective study, keyed by metric name.

    A ``target`` is needed per objective; Optuna's default evaluator (PED-ANOVA) ranks what leads to LOW
    target values, so a maximised objective is negated (fANOVA would not care; PED-ANOVA does).
    """
    import optuna

    names = list(study.metric_names or [f"objective {k}" for k in range(len(study.directions))])
    out = {}
    for k, (name, direction) in enumerate(zip(names, study.directions, strict=True)):
        sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA's reminder about low target values: handled above
            imp = optuna.importance.get_param_importances(study, target=lambda t, _k=k, _s=sign: _s * t.values[_k])
        out[name] = {p: float(v) for p, v in imp.items()}
    return out


def format_pareto(rows: list[dict]) -> list[str]:
    """The front as a text table: trial, MLflow run id, one column per objective."""
    if not rows:
        return ["(no completed trial)"]
    names = list(rows[0]["values"])
    widths = [max(len(n), 8) for n in names]
    head = f"{'trial':>5}  {'tune trial':<12} {'MLflow run':<32}  " + "  ".join(
        f"{n:>{w}}" for n, w in zip(names, widths, strict=True))
    lines = [head]
    for r in rows:
        lines.append(f"{r['number']:>5}  {r['trial_id'] or '-':<12} {r['run_id'] or '-':<32}  " + "  ".join(
            f"{r['values'][n]:>{w}.4f}" for n, w in zip(names, widths, strict=True)))
    return lines


def _write_pareto_csv(rows: list[dict], names: list[str], path: Path) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["optuna_trial", "tune_trial", "mlflow_run_id", *names])
        for r in rows:
            w.writerow([r["number"], r["trial_id"], r["run_id"], *(repr(r["values"][n]) for n in names)])
    return path


def _save(plot: Any, path: Path) -> Path:
    """Save what an ``optuna.visualization.matplotlib`` function returned (Axes or an array of them)."""
    import matplotlib.pyplot as plt
    import numpy as np

    ax = plot.flat[0] if isinstance(plot, np.ndarray) else plot
    fig = ax.figure
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def study_report(storage: str, study_name: str, out_dir: Path, metric: str | None = None) -> StudyReport:
    """Importances and the five plots of one study, written under ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    study = optuna.load_study(study_name=study_name, storage=storage)
    slug = study_name.split("/")[-1]
    rep = StudyReport(study=study_name, slug=slug)
    for t in study.get_trials(deepcopy=False):
        rep.counts[t.state.name] = rep.counts.get(t.state.name, 0) + 1
    multi = len(study.directions) > 1
    if study.metric_names:
        rep.objectives = list(study.metric_names)
    else:
        rep.objectives = [f"objective {k}" for k in range(len(study.directions))] if multi else ["objective"]
    target = (None if multi else metric) or rep.objectives[0]
    # several objectives: Optuna's plots need a target; they show the first objective (the one "best" means)
    first: Any = (lambda t: t.values[0]) if multi else None
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = rep.counts.get("COMPLETE", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning on every matplotlib plot
        try:
            every = (importances_per_objective(study) if multi else
                     {rep.objectives[0]: {k: float(v) for k, v in
                                          optuna.importance.get_param_importances(study).items()}})
            rep.importances = every[rep.objectives[0]]
            (out_dir / "param_importances.json").write_text(json.dumps(every if multi else rep.importances,
                                                                       indent=2))
            rep.files.append(out_dir / "param_importances.json")
        except Exception as err:  # noqa: BLE001 - importances need >= 2 finished trials with varying params
            rep.skipped["param_importances"] = f"{type(err).__name__}: {err}"
        # a contour of a parameter that never changed draws nothing (and Optuna warns once per pair)
        done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        varying = sorted(p for p in {p for t in done for p in t.params}
                         if len({repr(t.params[p]) for t in done if p in t.params}) >= 2)
        makers = {
            "optimization_history": lambda: ovm.plot_optimization_history(study, target=first, target_name=target),
            "param_importances": lambda: ovm.plot_param_importances(study, target=first, target_name=target),
            "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target=first, target_name=target),
            "slice": lambda: ovm.plot_slice(study, target=first, target_name=target),
            "contour": lambda: ovm.plot_contour(study, params=varying, target=first, target_name=target),
        }
        if multi:
            rep.pareto = pareto_rows(study)
            rep.files.append(_write_pareto_csv(rep.pareto, rep.objectives, out_dir / "pareto_front.csv"))
            if len(rep.objectives) in (2, 3):
                makers["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=rep.objectives)
            else:
                rep.skipped["pareto_front"] = f"plotted for 2 or 3 objectives, not {len(rep.objectives)}"
        for name, make in makers.items():
            if complete < 1:
                rep.skipped[name] = "no completed trial"
                continue
            if name == "contour" and len(varying) < 2:
                rep.skipped[name] = "needs two or more searched parameters that vary across completed trials"
                continue
            if name == "param_importances" and not rep.importances:
                rep.skipped.setdefault(name, "no importances")
                continue
            try:
                rep.files.append(_save(make(), out_dir / f"{name}.png"))
            except Exception as err:  # noqa: BLE001 - one plot the study cannot support skips only itself
                rep.skipped[name] = f"{type(err).__name__}: {err}"
    return rep


def sweep_report(info: SweepInfo, out_dir: str | Path | None = None) -> dict[str, StudyReport]:
    """One ``StudyReport`` per study of the sweep (default folder: ``<sweep dir>/report``)."""
    import optuna

    out = Path(out_dir) if out_dir else info.sweep_dir / "report"
    names = optuna.study.get_all_study_names(storage=info.optuna_storage)
    if info.studies is not None:
        names = [n for n in names if n in set(info.studies)]
    return {name: study_report(info.optuna_storage, name, out / name.split("/")[-1], info.metric)
            for name in sorted(names)}


def log_sweep_report(tracking_uri: str, run_id: str, reports: dict[str, StudyReport]) -> None:
    """Every report file on the sweep's MLflow run, under ``report/<study slug>/``."""
    from mcrlab.tracking import open_client

    client = open_client(tracking_uri)
    for rep in reports.values():
        for path in rep.files:
            client.log_artifact(run_id, str(path), f"report/{rep.slug}")
