"""The live display: a real tiny sweep and ablation through the CLI show a quiet, informative output.

Checked on the captured output (stdout and stderr, file-descriptor level): no Ray Tune experiment table,
no TensorBoard hint (tensorboardX is installed, so Tune's new output engine would print one), no Optuna
per-trial INFO lines, no MLflow table-creation lines; trials and cells counted done/total, cells named
arm/dataset/seed, a best-so-far and an ETA on the status line.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml

from mcrlab.cli import main
from mcrlab.trials.display import eta_seconds, format_duration, quiet_libraries

NOISE = ("View run", "View experiment", "tensorboard --logdir", "Configuration for experiment",
         "View detailed results here", "Creating initial MLflow database tables", "finished with value",
         "A new study created", "Trial status", "Context impl SQLiteImpl", "Downloading artifacts")
QUIET_ENV = ("RAY_AIR_NEW_OUTPUT", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "MLFLOW_LOGGING_LEVEL",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")


@pytest.fixture
def clean_env(monkeypatch):
    """quiet_libraries sets process-wide variables: undo them after the test."""
    for name in QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MCRLAB_PLAIN_PROGRESS", "1")
    yield monkeypatch


def test_format_duration_and_eta_by_hand():
    assert format_duration(5) == "5s" and format_duration(75) == "1m15s" and format_duration(3725) == "1h02m"
    assert format_duration(None) == "?" and format_duration(float("nan")) == "?"
    assert eta_seconds([], 3, 2) is None  # nothing finished yet: unknown, not zero
    assert eta_seconds([10.0, 20.0], 0, 2) == 0.0
    # mean 15 s; 5 left, 2 at a time -> 3 waves -> 45 s
    assert eta_seconds([10.0, 20.0], 5, 2) == pytest.approx(45.0)
    assert eta_seconds([10.0, 20.0], 4, 1) == pytest.approx(60.0)


def test_quiet_libraries_turns_mlflows_url_printing_off_and_verbose_keeps_it(clean_env):
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    quiet_libraries(verbose=True)
    assert not MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get() and "RAY_AIR_NEW_OUTPUT" not in os.environ
    quiet_libraries()
    # the very switch MLflow's client reads before printing "View run ... at: ..." when a run ends
    assert MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get()
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    import optuna

    assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    optuna.logging.set_verbosity(optuna.logging.INFO)


BASE = {"data": {"n_train": 128}, "model": {"hidden": 8, "latent": 4, "depth": 1},
        "method": {"name": "mcr", "num_perms": 2},
        "train": {"epochs": 2, "batch_size": 64, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}}


def test_sweep_output_is_quiet_and_counts_trials(ray_local, tmp_path, mlflow_uri, clean_env, capfd):
    space = {"name": "tiny", "datasets": ["synthetic:competition"], "base": BASE, "metric": "val/acc",
             "mode": "max", "sampler": {"name": "random", "seed": 0}, "num_samples": 3,
             "scaling": {"workers": 1, "cpus_per_worker": 1},
             "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert main(["sweep", str(path), "--storage", str(tmp_path / "runs"), "--tracking-uri", mlflow_uri]) == 0
    out = "".join(capfd.readouterr())
    for noise in NOISE:
        assert noise not in out, (noise, out)
    assert re.search(r"trials 3/3 done", out), out
    for k in (1, 2, 3):  # one line per finished trial, numbered k/total
        assert re.search(rf"\[synthetic:competition\] {k}/3 \S+ +it +\d+ +objective \d\.\d{{4}}", out), out
    assert re.search(r"best \d\.\d{4} \(\S+\) \| elapsed \S+, ETA 0s", out), out


def test_ablation_output_names_cells_and_counts_them(ray_local, tmp_path, mlflow_uri, clean_env, capfd):
    spec = {"name": "tiny-display", "experiment": "abl-display",
            "base": {"data": {"name": "synthetic:competition", "n_train": 128},
                     "model": {"hidden": 8, "latent": 4, "depth": 1}, "method": {"name": "mcr", "num_perms": 2},
                     "train": {"epochs": 1, "batch_size": 64, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}},
            "arms": {"no_game": {"method.lambda_m": 0.0}}, "datasets": ["synthetic:competition"], "seeds": [0, 1]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    clean_env.chdir(tmp_path)
    assert main(["ablate", str(path), "--tracking-uri", mlflow_uri, "--out", str(tmp_path / "rep")]) == 0
    out = "".join(capfd.readouterr())
    for noise in NOISE:
        assert noise not in out, (noise, out)
    for arm in ("base", "no_game"):
        for seed in (0, 1):
            assert re.search(rf"\[tiny-display\] [1-4]/4 {arm}/synthetic:competition/s{seed} ", out), out
    assert "cells 4/4 done" in out and "cell 0" not in out
    # MLflow's own fields on the cell runs: the dataset input and the experiment's description
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("abl-display")
    assert "Ablation 'tiny-display'" in exp.tags["mlflow.note.content"]
    cells = client.search_runs([exp.experiment_id], "tags.`mcrlab.kind` = 'cell'")
    assert len(cells) == 4
    for run in cells:
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.name == "synthetic:competition"
        assert run.data.tags["mcrlab.dataset_fingerprint"].startswith(inp.dataset.digest)


def test_dashboard_url_is_printed_when_ray_has_one(capsys):
    from types import SimpleNamespace

    from mcrlab.trials.session import _announce

    assert _announce(SimpleNamespace(dashboard_url="127.0.0.1:8265")) == "http://127.0.0.1:8265"
    assert "Ray dashboard: http://127.0.0.1:8265" in capsys.readouterr().err
    assert _announce(SimpleNamespace(dashboard_url="")) is None  # no dashboard (ray without [default])
    assert capsys.readouterr().err == ""


def test_an_errored_cell_is_marked_with_its_reason(ray_local, tmp_path, mlflow_uri, clean_env, capfd):
    # lr 10 with undamped momentum blows the MLP up within a few epochs (tests/reliability/test_ablation_faults.py)
    spec = {"name": "display-nan", "experiment": "abl-display-nan",
            "base": {"data": {"name": "synthetic:competition", "n_train": 128},
                     "model": {"hidden": 32, "latent": 16, "depth": 2, "fusion": "mlp"}, "method": {"name": "joint"},
                     "train": {"epochs": 4, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1, "device": "cpu",
                               "optimizer": "sgd", "momentum": 0.0, "lr": 0.01}},
            "arms": {"diverges": {"train.lr": 10.0, "train.momentum": 1.0}},
            "datasets": ["synthetic:competition"], "seeds": [0]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    clean_env.chdir(tmp_path)
    assert main(["ablate", str(path), "--tracking-uri", mlflow_uri]) == 1  # a failed cell: exit 1
    out = "".join(capfd.readouterr())
    assert re.search(r"\[display-nan\] [12]/2 diverges/synthetic:competition/s0  ERROR  NonFiniteLoss", out), out
    assert "cells 2/2 done, 1 errored" in out


def test_rich_only_on_a_terminal_and_never_in_a_job_driver(monkeypatch):
    import io

    from mcrlab.trials.display import use_rich

    monkeypatch.delenv("MCRLAB_PLAIN_PROGRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    leader, follower = os.openpty()  # a real terminal device
    with open(follower, "w") as tty:
        assert use_rich(tty)
        monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a `ray job submit` driver
        assert not use_rich(tty)
    os.close(leader)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert not use_rich(io.StringIO())  # a pipe or log file


def test_quiet_libraries_drops_rays_auth_on_note_and_keeps_its_auth_off_warning(clean_env, caplog):
    import logging

    from mcrlab.trials.display import RAY_AUTH_LOGGER

    log = logging.getLogger(RAY_AUTH_LOGGER)
    saved = list(log.filters)
    log.filters[:] = []  # an earlier test's quiet_libraries() may have added it already
    try:
        quiet_libraries()
        quiet_libraries()  # twice: one filter
        assert len(log.filters) == 1
        with caplog.at_level("WARNING", logger=RAY_AUTH_LOGGER):
            log.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled")
            log.warning("Token authentication is disabled: anyone with network access can run code")
        assert [r.getMessage()[:33] for r in caplog.records] == ["Token authentication is disabled:"]
    finally:
        log.filters[:] = saved


def test_best_so_far_is_the_best_final_objective_of_a_trial_that_ran_to_its_end():
    """The status line's best names the trial the summary will name: an epoch's value the trial later lost
    and a pruned trial's value are not candidates (a sweep once showed best 0.7955 of a trial whose final
    objective was 0.7720, above the summary's 0.7860)."""
    import io
    from types import SimpleNamespace

    from mcrlab.trials.display import LiveDisplay

    plan = SimpleNamespace(metric="val/acc", mode="max", label=lambda tid, config: tid,
                           max_iterations=lambda config: 4)
    display = LiveDisplay("d", plan, stream=io.StringIO(), total=3, rich=False)

    def run(tid, values):
        t = SimpleNamespace(trial_id=tid, status="RUNNING", config={}, last_result={})
        display.on_trial_start(0, [t], t)
        for i, v in enumerate(values, 1):
            t.last_result = {"objective": v, "trial_iteration": i}
            display.on_trial_result(0, [t], t, t.last_result)
        display.on_trial_complete(0, [t], t)
        return t

    run("peaked", [0.70, 0.80, 0.75, 0.772])  # best epoch 0.80, final 0.772
    run("steady", [0.70, 0.75, 0.77, 0.786])
    run("pruned", [0.90, 0.91])  # stopped at iteration 2 of 4
    assert display._best == (0.786, "steady")
    assert "best 0.7860 (steady)" in display.status_line([])
