"""Ablation specs, the grid runner (real Ray + real MLflow), resume, and `mcrlab compare`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from mcrlab.ablate.spec import load_spec, mcr_standard, parse_spec
from mcrlab.analysis.stats import SeedMismatchError
from mcrlab.config import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "search_spaces").glob("ablation_*.yaml"))

TINY = {
    "name": "tiny",
    "experiment": "abl-test",
    "base": {"data": {"name": "synthetic:competition", "n_train": 160},
             "model": {"hidden": 8, "latent": 4, "depth": 1},
             "method": {"name": "mcr", "num_perms": 2},
             "train": {"epochs": 2, "batch_size": 40, "probe_epochs": 5, "eval_perms": 1, "device": "cpu"}},
    "arms": {"no_game": {"method.lambda_m": 0.0, "train.lr": 0.003}},
    "datasets": ["synthetic:competition"],
    "seeds": [0, 1, 2],
}


def write_spec(tmp_path: Path, raw: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


# ---------------------------------------------------------------------------------------------- specs


def test_tiny_spec_builds_every_cell():
    spec = parse_spec(TINY, "tiny.yaml")
    assert [a.name for a in spec.arms] == ["base", "no_game"]
    assert len(spec.cells) == 6
    cell = next(c for c in spec.cells if c.arm == "no_game" and c.seed == 2)
    cfg = RunConfig.from_dict(cell.config)
    assert cfg.method.params.lambda_m == 0.0 and cfg.train.lr == 0.003 and cfg.train.seed == 2
    assert cell.config_hash == cfg.hash()
    base_cells = {c.config_hash for c in spec.cells if c.arm == "base"}
    assert len(base_cells) == 3  # the seed is part of the config


def test_mcr_standard_generator_covers_the_paper_axes():
    arms = mcr_standard(RunConfig.from_dict({"method": {"name": "mcr"}}))
    assert arms["strategy_independent"] == {"method.strategy": "independent"}
    assert arms["strategy_collaborative"] == {"method.strategy": "collaborative"}
    assert "strategy_greedy" not in arms  # the base already is greedy
    assert arms["no_game"] == {"method.lambda_m": 0.0}
    assert arms["no_shared"] == {"method.lambda_c": 0.0}
    assert arms["no_unimodal_heads"] == {"method.w_uni": 0.0}
    assert arms["irrelevant_on"] == {"method.lambda_b": 0.01}  # off by default, so switched on
    assert {"perturb_noise", "perturb_zero", "reference_grad_full", "divergence_kl", "divergence_mse"} <= set(arms)
    collab = mcr_standard(RunConfig.from_dict({"method": {"name": "mcr", "strategy": "collaborative",
                                                          "lambda_b": 0.1, "divergence": "kl"}}))
    assert "strategy_greedy" in collab and collab["no_irrelevant"] == {"method.lambda_b": 0.0}
    assert "divergence_jsd" in collab and "divergence_kl" not in collab
    with pytest.raises(ConfigError, match="method.name=mcr"):
        mcr_standard(RunConfig.from_dict({"method": {"name": "joint"}}))


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r["arms"].update(bad={"method.lambda_mm": 1}), r"spec.yaml: arms.bad.*method.lambda_mm"),
    (lambda r: r["arms"].update(bad={"method.lambda_m": -1}), r"spec.yaml: arms.bad.*lambda_m.*>= 0"),
    (lambda r: r["arms"].update(bad={"lambda_m": 1}), r"spec.yaml: arms.bad.lambda_m: keys must look like"),
    (lambda r: r["arms"].update(base={"train.lr": 1}), r"arms.base"),
    (lambda r: r.update(seedz=[1]), r"spec.yaml: seedz: unknown key"),
    (lambda r: r.update(seeds=[0, 0]), r"seeds: duplicate"),
    (lambda r: r.update(base_run="abc"), r"exactly one of base"),
    (lambda r: r.update(generate="nope"), r"generate: unknown generator"),
    (lambda r: r.update(exclude=["no_game"]), r"exclude: 'no_game' is not a generated arm"),
    (lambda r: r.update(tune={"num_samples": 4}), r"spec.yaml: tune: must be a mapping with a non-empty params"),
    (lambda r: r.update(tune={"params": {"train.lrr": {"type": "float", "low": 0.1, "high": 1}}}),
     r"spec.yaml: tune.params.train.lrr: no arm has"),
    (lambda r: r.update(resources={"cpus": 0}), r"resources.cpus"),
    (lambda r: r.update(datasets=["synthetic:nope"]), None),  # unknown preset: found when data loads
])
def test_spec_errors_name_file_and_key(tmp_path, mutate, match):
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    mutate(raw)
    path = write_spec(tmp_path, raw)
    if match is None:
        load_spec(path)  # data names are checked when the dataset loads (before any trial starts)
        return
    with pytest.raises(ConfigError, match=match):
        load_spec(path)


TUNE = {"num_samples": 2, "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                                     "method.lambda_m": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}}


def test_equal_tuning_budget_spaces_per_arm():
    raw = {**TINY, "arms": {"no_game": {"method.lambda_m": 0.0}, "joint": {"method.name": "joint"}}, "tune": TUNE}
    spec = parse_spec(raw, "t.yaml")
    # each arm tunes what it has and does not fix itself, with the same budget
    assert {a: sorted(sp["params"]) for a, sp in spec.tuning.items()} == {
        "base": ["method.lambda_m", "train.lr"], "no_game": ["train.lr"], "joint": ["train.lr"]}
    assert {sp["num_samples"] for sp in spec.tuning.values()} == {2}
    assert all(sp["objective"]["seed"] == 1000 for sp in spec.tuning.values())  # not an evaluation seed
    assert spec.tuning["no_game"]["base"]["method"]["lambda_m"] == 0.0


def test_dataset_overrides_apply_per_dataset_under_the_arms_delta():
    raw = {**TINY, "datasets": ["synthetic:competition", "synthetic:balanced"],
           "arms": {"no_game": {"method.lambda_m": 0.0, "train.lr": 0.003}},
           "dataset_overrides": {"synthetic:balanced": {"model.hidden": 16, "train.lr": 0.02}}, "tune": TUNE}
    spec = parse_spec(raw, "t.yaml")
    cfg = {(c.arm, c.dataset): c.config for c in spec.cells if c.seed == 0}
    assert cfg[("base", "synthetic:balanced")]["model"]["hidden"] == 16
    assert cfg[("base", "synthetic:balanced")]["train"]["lr"] == 0.02
    assert cfg[("base", "synthetic:competition")]["model"]["hidden"] == 8  # other datasets keep the base
    assert cfg[("no_game", "synthetic:balanced")]["model"]["hidden"] == 16
    assert cfg[("no_game", "synthetic:balanced")]["train"]["lr"] == 0.003  # the arm's delta wins
    # tuning: the dataset's overrides reach each arm's sweep, minus what the arm sets itself
    assert spec.tuning["base"]["dataset_overrides"] == {"synthetic:balanced": {"model.hidden": 16, "train.lr": 0.02}}
    from mcrlab.tune.space import parse_space, trial_config

    space = parse_space(spec.tuning["base"])
    trial = trial_config(space, "synthetic:balanced", {"train.lr": 0.005, "method.lambda_m": 0.01}, 1000)
    assert trial.model.hidden == 16 and trial.train.lr == 0.005  # the sampled value is above the override
    assert trial_config(space, "synthetic:competition", {"train.lr": 0.005, "method.lambda_m": 0.01},
                        1000).model.hidden == 8


@pytest.mark.parametrize("overrides, match", [
    ({"synthetic:nope": {"model.hidden": 4}}, r"dataset_overrides.synthetic:nope: not one of datasets"),
    ({"synthetic:competition": {"model.hiddn": 4}}, r"model.hiddn"),
    ({"synthetic:competition": {"hidden": 4}}, r"keys must look like section.key"),
    ({"synthetic:competition": {"data.name": "x"}}, r"the dataset's name is its key"),
    ({"synthetic:competition": {"model.hidden": float("nan")}}, r"model.hidden"),
    (["x"], r"dataset_overrides: must be a mapping"),
])
def test_bad_dataset_overrides_name_file_and_key(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_spec(write_spec(tmp_path, {**TINY, "dataset_overrides": overrides}))


def test_smoke_variant_shrinks_the_grid():
    raw = {**TINY, "seeds": [0, 1, 2, 3], "datasets": ["synthetic:competition", "synthetic:balanced"],
           "smoke": {"overrides": {"train.epochs": 1}}}
    spec = parse_spec(raw, "s.yaml", smoke=True)
    assert spec.ablation_id == "tiny-smoke" and spec.seeds == [0, 1] and spec.datasets == ["synthetic:competition"]
    assert all(c.config["train"]["epochs"] == 1 for c in spec.cells)


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_shipped_specs_load_and_start_with_their_command(path):
    assert path.read_text().startswith(f"# mcrlab ablate search_spaces/{path.name}")
    full, smoke = load_spec(path), load_spec(path, smoke=True)
    assert len(full.arms) >= 2 and len(full.seeds) >= 3
    assert len(smoke.cells) < len(full.cells)
    assert all(c.config["train"]["epochs"] == 1 for c in smoke.cells)


def test_shipped_specs_exist():
    assert len(SPECS) >= 2


@pytest.mark.slow  # MLflow's SQLite schema migration alone takes ~10 s on this machine
def test_base_run_reads_params_and_becomes_lineage(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.create_experiment("sweep")
    best = RunConfig.from_dict(TINY["base"]).replace({"method.lambda_m": 0.05, "train.player_lr": [2.0, 0.5]})
    run = client.create_run(exp)
    for k, v in best.flat().items():
        client.log_param(run.info.run_id, k, str(v))
    raw = {k: v for k, v in TINY.items() if k != "base"} | {"base_run": run.info.run_id}
    spec = parse_spec(raw, "b.yaml", tracking_uri=mlflow_uri)
    assert spec.base.to_dict() == best.to_dict() and spec.base_run == run.info.run_id
    # a logged config artifact wins over params
    run2 = client.create_run(exp)
    client.log_dict(run2.info.run_id, best.replace({"train.lr": 0.02}).to_dict(), "config.json")
    spec2 = parse_spec({**raw, "base_run": run2.info.run_id}, "b.yaml", tracking_uri=mlflow_uri)
    assert spec2.base.train.lr == 0.02
    with pytest.raises(ConfigError, match="b.yaml: base_run: no MLflow run 'nope'"):
        parse_spec({**raw, "base_run": "nope"}, "b.yaml", tracking_uri=mlflow_uri)


def test_cli_reports_spec_errors_in_one_line_exit_2(tmp_path, capsys, mlflow_uri):
    from mcrlab.cli import main

    raw = yaml.safe_load(yaml.safe_dump(TINY))
    raw["arms"]["bad"] = {"train.lrr": 0.1}
    path = write_spec(tmp_path, raw)
    assert main(["ablate", str(path), "--tracking-uri", mlflow_uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "spec.yaml: arms.bad" in err and "train.lrr" in err
    assert main(["ablate", str(tmp_path / "missing.yaml"), "--tracking-uri", mlflow_uri]) == 2
    assert main(["compare", "--tracking-uri", mlflow_uri]) == 2
    assert "--experiment" in capsys.readouterr().err


def test_dry_run_prints_the_grid(tmp_path, capsys, mlflow_uri):
    import json

    from mcrlab.cli import main

    assert main(["ablate", str(write_spec(tmp_path, TINY)), "--dry-run", "--tracking-uri", mlflow_uri]) == 0
    grid = json.loads(capsys.readouterr().out)
    assert grid["cells"] == 6 and grid["arms"]["no_game"] == {"method.lambda_m": 0.0, "train.lr": 0.003}


# ------------------------------------------------------------------------------ grid, resume, compare


def _cell_runs(uri: str, ablation_id: str = "tiny", finished_only: bool = False):
    from mcrlab.analysis.runs import collect_runs

    runs = collect_runs(uri, filter_string=f"tags.`mcrlab.kind` = 'cell' and tags.`mcrlab.ablation_id` = "
                                           f"'{ablation_id}'")
    if finished_only:
        runs = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("mcrlab.stale") != "true"]
    return runs


def _key(run):
    t = run.data.tags
    return (t["mcrlab.arm"], t["mcrlab.dataset"], t["mcrlab.seed"])


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_ablation_end_to_end_resume_and_compare(ray_local, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from mcrlab.ablate.runner import run_ablation
    from mcrlab.analysis.runs import compare

    spec = load_spec(write_spec(tmp_path, TINY))
    out = run_ablation(spec, mlflow_uri, storage_path=tmp_path)
    assert len(out.ran) == 6 and not out.failed and not out.skipped

    client = MlflowClient(tracking_uri=mlflow_uri)
    root = client.get_run(out.ablation_run_id)
    assert root.data.tags["mcrlab.kind"] == "ablation" and root.info.status == "FINISHED"
    arms = {r.data.tags["mcrlab.arm"]: r for r in client.search_runs(
        [root.info.experiment_id], "tags.`mcrlab.kind` = 'arm'")}
    assert set(arms) == {"base", "no_game"}
    assert all(r.data.tags["mlflow.parentRunId"] == out.ablation_run_id for r in arms.values())
    cells = _cell_runs(mlflow_uri)
    assert sorted(_key(r) for r in cells) == sorted(
        (a, "synthetic:competition", str(s)) for a in ("base", "no_game") for s in (0, 1, 2))
    for r in cells:
        t = r.data.tags
        assert t["mlflow.parentRunId"] == arms[t["mcrlab.arm"]].info.run_id
        assert {"mcrlab.delta", "mcrlab.base_run_id", "mcrlab.git_commit", "mcrlab.config_hash",
                "mcrlab.dataset_fingerprint"} <= set(t)
        assert r.info.status == "FINISHED" and "test/acc" in r.data.metrics
        assert len(client.get_metric_history(r.info.run_id, "val/acc")) == 2  # one per epoch
    assert cells[0].data.tags["mcrlab.delta"] in ('{}', '{"method.lambda_m": 0.0, "train.lr": 0.003}')

    # without --resume an existing ablation is refused
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        run_ablation(spec, mlflow_uri, storage_path=tmp_path)

    # simulate a crash: one cell lost, one left RUNNING (driver killed), one FAILED
    by_key = {_key(r): r.info.run_id for r in cells}
    lost, running, failed = ("base", "synthetic:competition", "1"), ("no_game", "synthetic:competition", "0"), \
        ("no_game", "synthetic:competition", "2")
    client.delete_run(by_key[lost])
    client.update_run(by_key[running], status="RUNNING")
    client.set_terminated(by_key[failed], status="FAILED")
    again = run_ablation(spec, mlflow_uri, resume=True, storage_path=tmp_path)
    assert sorted(again.ran) == sorted([lost, running, failed])
    assert len(again.skipped) == 3 and again.ablation_run_id == out.ablation_run_id
    assert client.get_run(by_key[running]).info.status == "KILLED"
    assert client.get_run(by_key[running]).data.tags["mcrlab.stale"] == "true"
    finished = _cell_runs(mlflow_uri, finished_only=True)
    assert sorted(_key(r) for r in finished) == sorted(by_key)  # exactly one valid run per cell

    # compare: the statistics agree with scipy on the logged numbers; every format is written
    rep, files = compare(mlflow_uri, run_id=out.ablation_run_id, out=tmp_path / "report",
                         log_to=out.ablation_run_id)
    acc = {(_key(r)[0], int(_key(r)[2])): r.data.metrics["test/acc"] for r in finished}
    base = np.array([acc[("base", s)] for s in (0, 1, 2)])
    arm = np.array([acc[("no_game", s)] for s in (0, 1, 2)])
    row = rep.tables["test/acc"].set_index("arm").loc["no_game"]
    assert row["mean"] == pytest.approx(arm.mean())
    ref = sps.ttest_rel(arm, base)
    if np.all(arm == base):
        assert row.p == 1.0
    else:
        assert row.p == pytest.approx(ref.pvalue)
    names = {f.name for f in files}
    assert {"report.md", "report.csv", "report.tex", "bars_test_acc.png",
            "modalities_synthetic_competition.png"} <= names
    logged = {a.path for a in client.list_artifacts(out.ablation_run_id, "report")}
    assert "report/report.md" in logged and "report/bars_test_acc.png" in logged
    assert rep.history is not None and not rep.history.empty  # D_m per epoch came from MLflow

    # compare refuses when a seed is missing in one arm: in the API, and as exit code 2 on the CLI
    client.delete_run(by_key[("base", "synthetic:competition", "0")])
    with pytest.raises(SeedMismatchError, match="only in arm: \\[0\\]"):
        compare(mlflow_uri, run_id=out.ablation_run_id, out=tmp_path / "r2")
    from mcrlab.cli import main

    assert main(["compare", "--experiment", "abl-test", "--tracking-uri", mlflow_uri, "--format", "csv",
                 "--out", str(tmp_path / "r3")]) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_killed_driver_resumes_only_missing_cells(ray_local, mlflow_uri, tmp_path):
    """A real `mcrlab ablate` process is SIGKILLed mid-grid; --resume runs only what did not finish."""
    import ray

    from mcrlab.ablate.runner import run_ablation

    raw = {**TINY, "name": "killme", "seeds": [0, 1, 2, 3]}
    raw["base"] = {**TINY["base"], "train": {**TINY["base"]["train"], "epochs": 3}}
    path = write_spec(tmp_path, raw)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mcrlab.cli.app", "ablate", str(path), "--tracking-uri",
                             mlflow_uri, "--verbose", "0"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            try:
                if len(_cell_runs(mlflow_uri, "killme", finished_only=True)) >= 2:
                    break
            except Exception:  # the store may not exist yet
                pass
            assert proc.poll() is None, "the ablation ended before it could be killed"
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    done_before = {_key(r) for r in _cell_runs(mlflow_uri, "killme", finished_only=True)}
    assert 2 <= len(done_before) < 8
    spec = load_spec(path)
    out = run_ablation(spec, mlflow_uri, resume=True, storage_path=tmp_path)
    assert set(out.skipped) == done_before
    assert set(out.ran) == {c.key for c in spec.cells} - done_before
    finished = _cell_runs(mlflow_uri, "killme", finished_only=True)
    assert sorted(_key(r) for r in finished) == sorted(c.key for c in spec.cells)


@pytest.mark.ray
@pytest.mark.slow
def test_data_parallel_cells_run_on_ray_train(ray_local, mlflow_uri, tmp_path):
    """resources.workers > 1: each cell is a 2-worker TorchTrainer run, tracked like any other cell."""
    from mcrlab.ablate.runner import run_ablation

    raw = {**TINY, "name": "dp", "seeds": [0], "resources": {"workers": 2, "cpus": 0.5}}
    raw["base"] = {**TINY["base"], "train": {**TINY["base"]["train"], "epochs": 1}}
    out = run_ablation(load_spec(write_spec(tmp_path, raw)), mlflow_uri, storage_path=tmp_path)
    assert sorted(out.ran) == [("base", "synthetic:competition", "0"), ("no_game", "synthetic:competition", "0")]
    finished = _cell_runs(mlflow_uri, "dp", finished_only=True)
    assert len(finished) == 2 and all("test/acc" in r.data.metrics for r in finished)


@pytest.mark.ray
@pytest.mark.slow
def test_equal_tuning_budget_runs_a_sweep_per_arm(ray_local, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from mcrlab.ablate.runner import run_ablation

    raw = {**TINY, "name": "tuned", "seeds": [0, 1], "arms": {"no_game": {"method.lambda_m": 0.0}},
           "tune": {**TUNE, "params": {"train.lr": TUNE["params"]["train.lr"]}}}
    raw["base"] = {**TINY["base"], "train": {**TINY["base"]["train"], "epochs": 1}}
    spec = load_spec(write_spec(tmp_path, raw))
    out = run_ablation(spec, mlflow_uri, storage_path=tmp_path)
    assert len(out.ran) == 4 and not out.failed
    client = MlflowClient(tracking_uri=mlflow_uri)
    cells = _cell_runs(mlflow_uri, "tuned", finished_only=True)
    for arm in ("base", "no_game"):
        arm_run = next(r for r in client.search_runs(
            [cells[0].info.experiment_id], f"tags.`mcrlab.kind` = 'arm' and tags.`mcrlab.arm` = '{arm}'"))
        sweep = client.get_run(arm_run.data.tags["mcrlab.tune_sweep_run_id"])
        assert sweep.data.params["num_samples"] == "2"
        lrs = {r.data.params["train.lr"] for r in cells if r.data.tags["mcrlab.arm"] == arm}
        assert len(lrs) == 1 and lrs != {str(TINY["base"]["train"].get("lr", 0.001))}  # the tuned lr
    again = run_ablation(spec, mlflow_uri, resume=True, storage_path=tmp_path)
    assert not again.ran and len(again.skipped) == 4  # tuned configs reused: same hashes, nothing reruns


def test_tune_section_accepts_labelled_parameters_like_sweeps():
    """Sweeps accept ``path@label`` parameters (search_spaces/baselines.yaml); the ablation ``tune:`` section
    reads names through the same function, so it accepts them too (it refused them as unknown keys)."""
    raw = {**TINY, "arms": {"ogm": {"method.name": "ogm_ge"}},
           "tune": {"num_samples": 2, "params": {"method.alpha@ogm": {"type": "float", "low": 0.1, "high": 1.0},
                                                 "train.lr@all": {"type": "float", "low": 1e-4, "high": 1e-2}}}}
    spec = parse_spec(raw, "label.yaml")
    assert set(spec.tuning) == {"base", "ogm"}
    assert set(spec.tuning["ogm"]["params"]) == {"method.alpha@ogm", "train.lr@all"}
    assert set(spec.tuning["base"]["params"]) == {"train.lr@all"}  # mcr has no alpha: not searched there
    with pytest.raises(ConfigError, match="no arm has the config key method.nope"):
        parse_spec({**raw, "tune": {"params": {"method.nope@x": {"type": "float", "low": 0, "high": 1}}}}, "l.yaml")
