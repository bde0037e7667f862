"""Sweep analysis end to end: a real tiny ASHA sweep through the CLI, then its Optuna study, MLflow runs and report.

- the objective is named in the study; every Optuna trial is PRUNED exactly when its MLflow run says it was
  stopped early; Optuna trials and MLflow runs point at each other (user attr / tag);
- the closing summary prints importances, the best run's id and URL and the optuna-dashboard install hint;
- the report's plots are on disk and on the sweep's MLflow run; `mcrlab report` rebuilds them, and refuses
  a target that is not a sweep with exit code 2.
"""

from __future__ import annotations

import json

import optuna
import yaml
from mlflow.tracking import MlflowClient

from mcrlab.cli import main
from mcrlab.tracking import find_runs

BASE = {"data": {"n_train": 128}, "model": {"hidden": 8, "latent": 4, "depth": 1},
        "method": {"name": "mcr", "num_perms": 2},
        "train": {"epochs": 3, "batch_size": 64, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}}


def test_asha_sweep_report_and_links(ray_local, tmp_path, mlflow_uri, capsys, monkeypatch):
    monkeypatch.setenv("MCRLAB_PLAIN_PROGRESS", "1")
    for name in ("RAY_AIR_NEW_OUTPUT", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "MLFLOW_LOGGING_LEVEL",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        monkeypatch.delenv(name, raising=False)
    space = {"name": "rep", "datasets": ["synthetic:competition"], "base": BASE, "metric": "val/acc",
             "mode": "max", "sampler": {"name": "random", "seed": 1}, "num_samples": 4,
             "scaling": {"workers": 1, "cpus_per_worker": 1, "max_concurrent": 1},
             "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
             "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
                        "method.lambda_m": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    runs_dir = tmp_path / "runs"
    assert main(["sweep", str(path), "--storage", str(runs_dir), "--tracking-uri", mlflow_uri]) == 0
    out = capsys.readouterr().out
    sweep_dir = next((runs_dir / "sweeps").iterdir())
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    (name,) = optuna.study.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.metric_names == ["val/acc"]

    trials = find_runs(mlflow_uri, f"sweep/{meta['sweep_id']}", kind="trial")
    assert len(trials) == 4 == len(study.trials)
    by_run = {r["run_id"]: r for r in trials}
    for ot in study.trials:
        run = by_run[ot.user_attrs["mlflow_run_id"]]  # the Optuna trial names its MLflow run ...
        assert run["tags"]["mcrlab.optuna_trial"] == str(ot.number)  # ... and the run its Optuna trial
        assert run["tags"]["mcrlab.trial_id"] == ot.user_attrs["tune_trial_id"]
        stopped = run["tags"]["mcrlab.early_stopped"] == "true"
        assert ot.state == (optuna.trial.TrialState.PRUNED if stopped else optuna.trial.TrialState.COMPLETE)
    # MLflow's own fields: the dataset input (name, fingerprint as digest), source tags, experiment description
    client = MlflowClient(mlflow_uri)
    for run in trials:
        (inp,) = client.get_run(run["run_id"]).inputs.dataset_inputs
        assert inp.dataset.name == "synthetic:competition"
        assert run["tags"]["mcrlab.dataset_fingerprint"].startswith(inp.dataset.digest)
        assert run["tags"]["mlflow.user"] and run["tags"]["mlflow.source.name"]
    exp = client.get_experiment_by_name(f"sweep/{meta['sweep_id']}")
    assert "search space 'rep'" in exp.tags["mlflow.note.content"]
    # seeded sampler and training: ASHA stops at least one of the four at its first rung
    assert any(ot.state == optuna.trial.TrialState.PRUNED for ot in study.trials)

    # the summary: best run id and its MLflow page, importances, optuna-dashboard only with its install hint
    best = max((r for r in trials if "objective" in r["metrics"]), key=lambda r: r["metrics"]["objective"])
    assert f"best run: {best['run_id']}" in out and f"/runs/{best['run_id']}" in out
    assert f"mcrlab train --from-run {best['run_id']}" in out
    assert "pip install optuna-dashboard && optuna-dashboard sqlite:///" in out
    assert "parameter importances (Optuna):" in out and "train.lr" in out.split("parameter importances")[1]

    slug = name.split("/")[-1]
    report = sweep_dir / "report" / slug
    # a contour needs two parameters that vary across the COMPLETE trials (ASHA prunes most of them here)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    contour = all(len({t.params[p] for t in done}) >= 2 for p in ("train.lr", "method.lambda_m"))
    for plot in ("optimization_history", "param_importances", "parallel_coordinate", "slice"):
        assert (report / f"{plot}.png").stat().st_size > 1000, plot
    assert (report / "contour.png").exists() == contour
    logged = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(meta["mlflow_run_id"], f"report/{slug}")}
    assert (f"report/{slug}/contour.png" in logged) == contour and f"report/{slug}/param_importances.json" in logged
    importances = json.loads((report / "param_importances.json").read_text())
    assert set(importances) == {"train.lr", "method.lambda_m"}

    # mcrlab report by id (under --storage) into another folder
    assert main(["report", meta["sweep_id"], "--storage", str(runs_dir), "--out", str(tmp_path / "r2"),
                 "--no-log"]) == 0
    assert (tmp_path / "r2" / slug / "slice.png").is_file()
    assert "parameter importances" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope"), "--storage", str(runs_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a sweep folder" in err
    # sweep -> ablation in one command: the best trial's run as the ablation's base (dry run: nothing trains)
    spec = tmp_path / "abl.yaml"
    spec.write_text(yaml.safe_dump({"name": "from-sweep", "experiment": "abl-from-sweep",
                                    "arms": {"no_game": {"method.lambda_m": 0.0}},
                                    "datasets": ["synthetic:competition"], "seeds": [0]}))
    assert main(["ablate", str(spec), "--base-run", f"best-of:{meta['sweep_id']}", "--dry-run",
                 "--tracking-uri", mlflow_uri]) == 0
    assert json.loads(capsys.readouterr().out)["base_run"] == best["run_id"]
    assert main(["ablate", str(spec), "--base-run", "best-of:no-such-sweep", "--dry-run",
                 "--tracking-uri", mlflow_uri]) == 2
    assert "no study of sweep 'no-such-sweep'" in capsys.readouterr().err
    # compare refuses a sweep (its trials are not seeds of arms) and points at the report
    assert main(["compare", "--run", meta["mlflow_run_id"], "--tracking-uri", mlflow_uri]) == 2
    assert f"use: mcrlab report {meta['sweep_id']}" in capsys.readouterr().err


def _study(tmp_path, name, objective):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=6)
    return storage


def test_contour_plots_only_parameters_that_vary(tmp_path, caplog):
    """A parameter with one value in every trial (a one-choice categorical) has no contour: it is left
    out of the plot, Optuna warns nothing, and with fewer than two varying parameters the plot is skipped."""
    from mcrlab.analysis.sweep_report import study_report

    def three(trial):  # two varying, one constant
        return trial.suggest_float("a", 0, 1) + trial.suggest_float("b", 0, 1) + len(
            trial.suggest_categorical("c", ["only"]))

    def one(trial):  # one varying, one constant
        return trial.suggest_float("a", 0, 1) + len(trial.suggest_categorical("c", ["only"]))

    storage = _study(tmp_path, "s/three", three)
    _study(tmp_path, "s/one", one)
    with caplog.at_level("WARNING", logger="optuna"):
        rep = study_report(storage, "s/three", tmp_path / "three")
    assert (tmp_path / "three" / "contour.png").stat().st_size > 0 and "contour" not in rep.skipped
    assert not [r for r in caplog.records if "unique value length" in r.getMessage()]
    rep = study_report(storage, "s/one", tmp_path / "one")
    assert "vary across completed trials" in rep.skipped["contour"]
    assert not (tmp_path / "one" / "contour.png").exists()
