"""`mcrlab reproduce`: the shipped grid, narrowing, verdicts and the RESULTS.md writer; a real smoke run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mcrlab.ablate.spec import parse_spec
from mcrlab.analysis.report import build_report
from mcrlab.cli import main
from mcrlab.config import ConfigError, read_yaml
from mcrlab.data.synthetic import PRESETS
from mcrlab.methods import REGISTRY
from mcrlab.methods.mcr import MCRParams
from mcrlab.studies.reproduce import (
    BASE_METHOD,
    CELL_COLUMNS,
    SMOKE_METHODS,
    mcr_verdicts,
    narrow_spec,
    read_cells,
    render_results,
    report_from_cells,
    split_moves_with_seed,
    write_cells,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "reproduce.yaml"


def _raw() -> dict:
    return read_yaml(SPEC)


def test_shipped_grid_covers_every_method_preset_and_two_mfeat_pairs():
    raw = _raw()
    spec = parse_spec(raw, str(SPEC))
    assert spec.base.method.name == BASE_METHOD
    methods = {spec.base.replace(a.delta).method.name for a in spec.arms}
    assert methods == set(REGISTRY)  # every method, the ensemble as the base arm
    assert {f"synthetic:{p}" for p in PRESETS} <= set(spec.datasets)
    assert len([d for d in spec.datasets if d.startswith("mfeat:")]) >= 2
    assert spec.seeds == list(range(10)) and spec.metric == "test/acc"
    # every arm tunes (at least the lr) on the tuning seed, never an evaluation seed
    assert set(spec.tuning) == {a.name for a in spec.arms}
    assert all("train.lr" in s["params"] for s in spec.tuning.values())
    assert "method.lambda_m" in spec.tuning["mcr"]["params"] and "method.lambda_m" not in spec.tuning["joint"]["params"]
    assert all(s["objective"]["seed"] not in spec.seeds for s in spec.tuning.values())


def test_shipped_grid_follows_the_papers_protocol():
    raw = _raw()
    spec = parse_spec(raw, str(SPEC))
    cfg = {a.name: spec.base.replace(a.delta) for a in spec.arms}
    # arms from scratch and from unimodal pre-training, pre-frozen (fusion head only) and pre-finetuned
    inits = {a: (c.method.name, c.model.init) for a, c in cfg.items()}
    assert inits["mcr"] == ("mcr", "scratch") and inits["mcr_pre"] == ("mcr", "unimodal")
    assert inits["multiloss_pre"] == ("multiloss", "unimodal") and inits["pre_finetuned"] == ("joint", "unimodal")
    assert inits["pre_frozen"] == ("joint", "unimodal_frozen") and inits["joint"] == ("joint", "scratch")
    assert all(cfg[a].method.params.num_perms == 32 for a in ("mcr", "mcr_pre"))  # S = 32
    # a budget that grows with the knobs, mostly not random start-up
    for arm, space in spec.tuning.items():
        knobs = len(space["params"])
        assert space["num_samples"] == 4 * knobs, arm
        assert space["sampler"]["n_startup_trials"] <= space["num_samples"] // 2, arm
    assert spec.tuning["mcr"]["num_samples"] == 16 and spec.tuning["joint"]["num_samples"] == 4
    # the paper's weights (MCRParams' defaults) are the first point of every MCR sweep; lambda_C up to 1
    paper = {f"method.{k}": getattr(MCRParams(), k) for k in ("w_uni", "lambda_m", "lambda_c")}
    for arm in ("mcr", "mcr_pre"):
        first = spec.tuning[arm]["points_to_evaluate"][0]
        assert {k: first[k] for k in paper} == paper and first["train.lr"] == spec.base.train.lr
    assert spec.tuning["mcr"]["params"]["method.lambda_c"]["high"] == 1.0
    # the best unimodal model: the modality is tuned on validation, every modality is tried
    uni = spec.tuning["unimodal"]
    choices = uni["params"]["method.modality"]["choices"]
    assert sorted(p["method.modality"] for p in uni["points_to_evaluate"]) == sorted(choices) == [0, 1]
    assert "method.modality" not in spec.tuning["base"]["params"]
    # evaluation seeds resample the data; tuning runs on its own split (data.seed 1000)
    assert spec.seed_keys == ["train.seed", "data.seed"]
    assert all(c.config["data"]["seed"] == c.seed == c.config["train"]["seed"] for c in spec.cells)
    assert all(s["base"]["data"]["seed"] == 1000 for s in spec.tuning.values())
    # the smoke form keeps the protocol's arms, with both unimodal points inside its 2 trials
    smoke = parse_spec(narrow_spec(raw, "r.yaml", methods=list(SMOKE_METHODS)), "r.yaml", smoke=True)
    assert len(smoke.tuning["unimodal"]["points_to_evaluate"]) == 2 == smoke.tuning["unimodal"]["num_samples"]


def test_evaluation_seeds_resample_the_split_on_every_dataset_kind(tmp_path):
    import numpy as np

    from mcrlab.data.shards import write_shards

    for name in ("synthetic:competition", "digits", "mfeat:pix+fou"):
        extra = {"n_train": 200} if name.startswith("synthetic") else {}
        assert split_moves_with_seed([{"name": name, "seed": s, **extra} for s in (0, 1)]), name
        assert not split_moves_with_seed([{"name": name, "seed": 3, **extra}] * 2), name  # same seed, same data
    # a shard folder stores its split: data.seed cannot move it, and the report says so
    rng = np.random.default_rng(0)
    n = 60
    write_shards(tmp_path / "sh", {"a": rng.normal(size=(n, 3)), "b": rng.normal(size=(n, 2))},
                 np.arange(n) % 3, np.array(["train"] * 36 + ["val"] * 12 + ["test"] * 12))
    assert not split_moves_with_seed([{"name": str(tmp_path / "sh"), "seed": s} for s in (0, 1)])
    # ... unless data.resplit re-draws it (avdigits in the shipped grid does)
    assert split_moves_with_seed([{"name": str(tmp_path / "sh"), "seed": s, "resplit": "train+val"} for s in (0, 1)])


def test_shipped_grid_trains_avdigits_with_conv_encoders_and_a_moving_split():
    spec = parse_spec(_raw(), str(SPEC))
    av = [d for d in spec.datasets if d.startswith("avdigits")]
    assert len(av) == 1
    cells = [c for c in spec.cells if c.dataset == av[0]]
    assert {tuple(c.config["model"]["encoders"]) for c in cells} == {("cnn", "conv1d")}
    assert {c.config["data"]["resplit"] for c in cells} == {"train+val"}
    assert all(c.config["model"]["encoders"] == [] for c in spec.cells if c.dataset != av[0])
    # the tuning sweeps train avdigits with the same encoders
    assert all(t["dataset_overrides"][av[0]]["model.encoders"] == ["cnn", "conv1d"] for t in spec.tuning.values())
    # MCR without its game term is an arm, so a win can be credited to the game
    nogame = spec.base.replace(spec.arm("mcr_nogame").delta)
    assert nogame.method.name == "mcr" and nogame.method.params.lambda_m == 0.0
    assert "method.lambda_m" not in spec.tuning["mcr_nogame"]["params"]


def test_dataset_lists_keep_the_commas_of_dataset_knobs():
    from mcrlab.studies.reproduce import dataset_list

    assert dataset_list("synthetic:competition, avdigits:n_train=1000,n_test=500,mfeat:pix+fou") == [
        "synthetic:competition", "avdigits:n_train=1000,n_test=500", "mfeat:pix+fou"]
    assert dataset_list(None) is None
    raw = narrow_spec(_raw(), "r.yaml", datasets=["synthetic:competition"])  # overrides of datasets that left go
    assert raw.get("dataset_overrides") == {}
    parse_spec(raw, "r.yaml")


def test_narrowing_keeps_the_base_drops_unused_knobs_and_renames():
    raw = _raw()
    n = narrow_spec(raw, "r.yaml", methods=["mcr", "joint"], datasets=["synthetic:competition"], seeds=3,
                    budget=3, epochs=4)
    assert set(n["arms"]) == {"mcr", "joint"} and n["seeds"] == [0, 1, 2]
    assert n["tune"]["num_samples_per_knob"] == 3 and set(n["tune"]["arms"]) == {"mcr"}  # others' points leave
    assert "method.scale" not in n["tune"]["params"] and "method.lambda_m" in n["tune"]["params"]
    assert n["name"].startswith("reproduce-") and n["name"] != raw["name"]
    again = narrow_spec(raw, "r.yaml", methods=["mcr", "joint"], datasets=["synthetic:competition"], seeds=3,
                        budget=3, epochs=4)
    assert again["name"] == n["name"]  # same command, same ablation id: --resume finds it
    other = narrow_spec(raw, "r.yaml", methods=["mcr", "joint"], datasets=["synthetic:competition"], seeds=2,
                        budget=3, epochs=4)
    assert other["name"] != n["name"]
    spec = parse_spec(n, "r.yaml")
    assert len(spec.cells) == 3 * 1 * 3 and all(c.config["train"]["epochs"] == 4 for c in spec.cells)
    assert spec.tuning["mcr"]["num_samples"] == 12 and spec.tuning["mcr"]["sampler"]["n_startup_trials"] <= 6
    assert narrow_spec(raw, "r.yaml") == raw  # nothing asked, nothing changed (the full run keeps its name)
    assert "tune" not in narrow_spec(raw, "r.yaml", budget=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"methods": ["mcr", "nope"]}, r"r.yaml: --methods: unknown method\(s\) nope"),
    ({"methods": ["ensemble"]}, r"--methods: name at least one method besides ensemble"),
    ({"seeds": 0}, r"--seeds: need at least 1"),
    ({"budget": -1}, r"--budget: must be >= 0"),
])
def test_bad_narrowing_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        narrow_spec(_raw(), "r.yaml", **kwargs)


def test_cli_dry_run_and_errors(capsys):
    assert main(["reproduce", "--dry-run", "--methods", "mcr,joint", "--seeds", "2"]) == 0
    grid = json.loads(capsys.readouterr().out)
    assert grid["methods"] == ["ensemble", "mcr", "joint"] and grid["seeds"] == [0, 1]
    assert grid["cells"] == 3 * len(_raw()["datasets"]) * 2
    assert main(["reproduce", "--dry-run", "--methods", "nope"]) == 2
    assert "unknown method(s) nope" in capsys.readouterr().err
    assert main(["reproduce", "--dry-run", "--spec", "no/such.yaml"]) == 2


def _tidy(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = [(arm, ds, s, "test/acc", v) for (arm, ds), vs in values.items() for s, v in enumerate(vs)]
    return pd.DataFrame(rows, columns=["arm", "dataset", "seed", "metric", "value"])


def test_verdicts_say_where_mcr_wins_and_where_it_does_not():
    tidy = _tidy({("ensemble", "a"): [0.70, 0.71, 0.72, 0.70, 0.71], ("mcr", "a"): [0.80, 0.82, 0.81, 0.80, 0.83],
                  ("joint", "a"): [0.75, 0.74, 0.76, 0.75, 0.74],
                  ("ensemble", "b"): [0.90, 0.91, 0.92, 0.90, 0.91], ("mcr", "b"): [0.80, 0.81, 0.79, 0.80, 0.82],
                  ("joint", "b"): [0.95, 0.96, 0.94, 0.95, 0.96],
                  ("ensemble", "c"): [0.5, 0.6, 0.5, 0.6, 0.5], ("mcr", "c"): [0.6, 0.5, 0.5, 0.6, 0.6],
                  ("joint", "c"): [0.5, 0.5, 0.5, 0.5, 0.5]})
    rep = build_report(tidy, base=BASE_METHOD, rank_metrics=["test/acc"])
    v = {x["dataset"]: x for x in mcr_verdicts(rep)}
    assert v["a"]["verdict"] == "MCR better, significant" and v["a"]["rank"] == 1 and v["a"]["best"] == "mcr"
    assert v["b"]["verdict"] == "MCR worse, significant" and v["b"]["rank"] == 3 and v["b"]["best"] == "joint"
    assert v["c"]["verdict"] == "MCR higher, not significant"
    assert math.isclose(v["a"]["diff"], 0.812 - 0.708, abs_tol=1e-9)
    text = render_results(rep, title="T", command="mcrlab reproduce --x", full_command="mcrlab reproduce",
                          label="**Reduced run**", machine={"cpu": "cpuX", "cores": "2"}, meta={"git commit": "abc"})
    assert "`mcrlab reproduce --x`" in text and "cpuX, 2 cores" in text and "git commit: abc" in text
    assert "on 1 of 3 datasets (a); it does not on 2 (b, c)" in text
    assert "## Comparison report" in text and "Base arm: `ensemble`" in text
    # power next to every verdict: MDD at 5 seeds and Holm's worst case over the 2 methods, sd of the diffs
    from mcrlab.analysis.stats import mdd_paired_t

    d = [0.80 - 0.70, 0.82 - 0.71, 0.81 - 0.72, 0.80 - 0.70, 0.83 - 0.71]
    sd = float(pd.Series(d).std(ddof=1))
    assert v["a"]["alpha_adj"] == pytest.approx(0.025) and v["a"]["sd_diff"] == pytest.approx(sd)
    assert v["a"]["mdd"] == pytest.approx(mdd_paired_t(sd, 5, 0.025, 0.8))
    assert "| MDD (power 0.8) | sd Δ | seeds | α / m |" in text
    assert f"| a | 0.8120 | 0.7080 | +0.1040 | {v['a']['mdd']:.4f} | {sd:.4f} | 5 | 0.02500 |" in text


def test_two_seeds_give_no_verdict_of_significance():
    # the case: +0.0005 on two seeds (identical differences: p ~ 0) is not "significant"
    tidy = _tidy({("ensemble", "a"): [0.700, 0.710], ("mcr", "a"): [0.7005, 0.7105]})
    rep = build_report(tidy, base=BASE_METHOD, rank_metrics=["test/acc"])
    (v,) = mcr_verdicts(rep)
    assert v["p_holm"] < 0.05 and v["verdict"] == "too few seeds to test (n = 2)" and math.isinf(v["mdd"])
    text = render_results(rep, title="T", command="c", full_command="f", label="l", machine={}, meta={})
    assert "| ∞ |" in text and "on 0 of 1 datasets" in text


def _cells() -> pd.DataFrame:
    rows = []
    for ds, shift in (("synthetic:competition", 0.0), ("mfeat:pix+fou", 0.1)):
        for arm, level in (("ensemble", 0.7), ("mcr", 0.72), ("joint", 0.69)):
            for seed in range(4):
                v = level + shift + 0.1 * (seed % 3) / 7 + 1e-17 * seed  # values whose repr is long
                run = f"{arm}{ds}{seed}".encode().hex()[:32]
                rows += [(arm, ds, seed, seed, "test/acc", v, run), (arm, ds, seed, seed, "test/f1", v - 0.1 / 3, run),
                         (arm, ds, seed, seed, "test/probe/a", 0.5 + seed / 9, run)]
    return pd.DataFrame(rows, columns=list(CELL_COLUMNS))


def test_report_from_the_csv_alone_is_byte_identical(tmp_path, capsys):
    cells = _cells()
    kwargs = dict(title="T", command="c", full_command="f", label="l", machine={"cpu": "x"}, meta={"m": "1"},
                  cells=cells)
    direct = render_results(report_from_cells(cells), **kwargs)
    path = write_cells(cells.sample(frac=1.0, random_state=0), tmp_path / "RESULTS_cells.csv")  # order is irrelevant
    back = read_cells(path)
    assert list(back.columns) == list(CELL_COLUMNS) and len(back) == len(cells)
    assert render_results(report_from_cells(back), **{**kwargs, "cells": back}) == direct
    assert "| synthetic:competition | mcr |" in direct and "test/probe/a" in direct
    # the command: the statistics sections of its output are those of the run's Markdown, byte for byte
    out = tmp_path / "X.md"
    assert main(["reproduce", "--from-csv", str(path), "--out", str(out)]) == 0
    again = out.read_text()
    cut = "## MCR against the ensemble"
    assert again[again.index(cut):] == direct[direct.index(cut):] and "**Re-rendered**" in again
    # a CSV without the provenance columns is refused, naming the file and what is missing
    cells.drop(columns=["run_id"]).to_csv(tmp_path / "bad.csv", index=False)
    assert main(["reproduce", "--from-csv", str(tmp_path / "bad.csv")]) == 2
    assert "bad.csv: missing columns run_id" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ray
def test_smoke_reproduce_end_to_end(ray_local, mlflow_uri, tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    rc = main(["reproduce", "--smoke", "--tracking-uri", mlflow_uri, "--storage", str(tmp_path / "runs"),
               "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    assert text.startswith("# Results") and "**Smoke run**" in text
    assert "mcrlab reproduce --out" in text and "--smoke" in text
    assert "git commit:" in text and "cores" in text
    assert "| synthetic:competition |" in text and "Base arm: `ensemble`" in text
    for arm in SMOKE_METHODS:
        assert f"| synthetic:competition | {arm} | 2 |" in text  # 2 seeds per method
    assert "resampled by every seed (data.seed) on synthetic:competition" in text
    assert "too few seeds to test (n = 2)" in text  # 2 seeds: no verdict of significance
    csv = pd.read_csv(tmp_path / "RESULTS_report" / "report.csv")
    assert set(csv["arm"]) == set(SMOKE_METHODS)
    # every cell's values with their data seed and MLflow run id, and the report recomputed from them alone
    cells = read_cells(tmp_path / "RESULTS_cells.csv")
    acc = cells[cells.metric == "test/acc"]
    assert len(acc) == len(SMOKE_METHODS) * 2 and (acc["seed"] == acc["data_seed"]).all()
    assert acc["run_id"].nunique() == len(acc)
    assert main(["reproduce", "--from-csv", str(tmp_path / "RESULTS_cells.csv"), "--out", str(tmp_path / "X.md")]) == 0
    cut = "## MCR against the ensemble"
    again = (tmp_path / "X.md").read_text()
    assert again[again.index(cut):] == text[text.index(cut):]
    # the same command again with --resume reruns nothing and writes the same table
    assert main(["reproduce", "--smoke", "--tracking-uri", mlflow_uri, "--storage", str(tmp_path / "runs"),
                 "--out", str(out), "--resume"]) == 0
    resumed = out.read_text()
    assert f"0 cells run now, {len(SMOKE_METHODS) * 2} reused" in resumed
    assert resumed[resumed.index(cut):] == text[text.index(cut):]


def _tune_spec(tune: dict) -> dict:
    return {"name": "t", "base": {"method": {"name": "ensemble"}, "train": {"epochs": 1}},
            "arms": {"mcr": {"method.name": "mcr"}, "joint": {"method.name": "joint"}},
            "datasets": ["synthetic:competition"], "seeds": [0, 1], "tune": tune}


def test_budget_per_knob_and_per_arm_points_in_the_ablation_spec():
    params = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
              "method.lambda_m": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}
    point = {"train.lr": 1e-3, "method.lambda_m": 0.01}
    spec = parse_spec(_tune_spec({"num_samples_per_knob": 3, "params": params,
                                  "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 5},
                                  "arms": {"mcr": {"points_to_evaluate": [point]}}}), "s.yaml")
    assert spec.tuning["mcr"]["num_samples"] == 6 and spec.tuning["joint"]["num_samples"] == 3
    assert spec.tuning["mcr"]["sampler"]["n_startup_trials"] == 3 and spec.tuning["joint"]["sampler"][
        "n_startup_trials"] == 1  # capped at half of each arm's budget
    assert spec.tuning["mcr"]["points_to_evaluate"] == [point] and "points_to_evaluate" not in spec.tuning["joint"]
    for tune, match in (
            ({"num_samples_per_knob": 0, "params": params}, r"s.yaml: tune.num_samples_per_knob: must be an integer"),
            ({"params": params, "arms": {"nope": {}}}, r"s.yaml: tune.arms.nope: no such arm"),
            ({"params": params, "arms": {"mcr": {"num_samples": 3}}}, r"tune.arms.mcr: must be a mapping with keys"),
            ({"params": params, "arms": {"joint": {"points_to_evaluate": [point]}}},
             r"points_to_evaluate\[0\].method.lambda_m: not a parameter of this space")):
        with pytest.raises(ConfigError, match=match):
            parse_spec(_tune_spec(tune), "s.yaml")


def _focus_cells() -> pd.DataFrame:
    acc = {"ensemble": [0.70, 0.71, 0.72, 0.70, 0.71], "mcr": [0.80, 0.82, 0.81, 0.80, 0.83],
           "joint": [0.75, 0.74, 0.76, 0.75, 0.74], "mlb": [0.78, 0.80, 0.79, 0.81, 0.80],
           "mcr_nogame": [0.79, 0.83, 0.80, 0.80, 0.82]}
    probe = {"ensemble": ([0.9] * 5, [0.5, 0.52, 0.51, 0.5, 0.5]), "mcr": ([0.88] * 5, [0.6, 0.61, 0.6, 0.62, 0.6]),
             "joint": ([0.89] * 5, [0.4, 0.42, 0.41, 0.4, 0.43])}
    rows = []
    for arm, vs in acc.items():
        for seed, v in enumerate(vs):
            run = f"{arm}{seed}"
            rows.append((arm, "d", seed, seed, "test/acc", v, run))
            if arm in probe:
                rows += [(arm, "d", seed, seed, "test/probe/image", probe[arm][0][seed], run),
                         (arm, "d", seed, seed, "test/probe/audio", probe[arm][1][seed], run)]
    return pd.DataFrame(rows, columns=list(CELL_COLUMNS))


def test_focused_comparisons_against_hand_computed_paired_tests():
    from scipy import stats as sps

    from mcrlab.analysis.stats import holm, mdd_paired_t
    from mcrlab.studies.reproduce import focused_comparisons, render_focus

    cells = _focus_cells()
    (row,) = focused_comparisons(cells)
    acc = {a: g.sort_values("seed")["value"].to_numpy() for a, g in cells[cells.metric == "test/acc"].groupby("arm")}
    assert row["best_arm"] == "mlb"  # the best arm that is neither the ensemble nor one of MCR's (mcr_nogame)
    raw_p = [sps.ttest_rel(acc["mcr"], acc[a]).pvalue for a in ("ensemble", "mlb", "mcr_nogame")]
    adj = holm(raw_p)
    for key, arm, p in zip(("ensemble", "best", "nogame"), ("ensemble", "mlb", "mcr_nogame"), adj, strict=True):
        d = acc["mcr"] - acc[arm]
        assert row[key]["diff"] == pytest.approx(d.mean(), abs=1e-12)
        assert row[key]["p_holm"] == pytest.approx(p, rel=1e-9)
        assert row[key]["mdd"] == pytest.approx(mdd_paired_t(float(d.std(ddof=1)), 5, 0.05 / 3))
        assert row[key]["significant"] == (p < 0.05)
    assert row["ensemble"]["significant"] and not row["nogame"]["significant"]
    # the weak modality is the one the ensemble's unimodal member does worse on: audio here
    w = row["weak"]
    assert w["modality"] == "audio" and w["ensemble"] == pytest.approx(0.506) and w["mcr"] == pytest.approx(0.606)
    assert w["vs_joint"]["diff"] == pytest.approx(0.606 - 0.412)
    text = "\n".join(render_focus([row]))
    assert "| d | 5 | 0.8120 |" in text and "mlb 0.7960" in text and "audio: 0.6060 / 0.4120 / 0.5060" in text


def test_the_run_header_travels_with_the_csv(tmp_path):
    from mcrlab.studies.reproduce import write_provenance

    cells = _focus_cells()
    path = write_cells(cells, tmp_path / "RESULTS_cells.csv")
    header = {"command": "mcrlab reproduce --seeds 5", "label": "**Reduced run** of x", "machine": {"cpu": "cpuY",
              "cores": "2"}, "meta": {"date": "2026-12-01", "wall time": "1 min"}}
    write_provenance(path, header)
    out = tmp_path / "R.md"
    assert main(["reproduce", "--from-csv", str(path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "`mcrlab reproduce --seeds 5`" in text and "**Reduced run** of x" in text and "cpuY, 2 cores" in text
    assert "wall time: 1 min" in text and "rendered by: `mcrlab reproduce --from-csv" in text
    assert "## MCR against the ensemble, the best other method" in text
    assert main(["reproduce", "--from-csv", str(path), "--out", str(tmp_path / "R2.md")]) == 0
    assert (tmp_path / "R2.md").read_text() == text  # deterministic
    (tmp_path / "RESULTS_provenance.json").write_text("{not json")
    assert main(["reproduce", "--from-csv", str(path)]) == 2


def test_the_committed_results_page_is_its_csvs_rerender(tmp_path):
    """docs/RESULTS.md is exactly what `mcrlab reproduce --from-csv docs/RESULTS_cells.csv` renders: every
    number on the page comes from the committed per-seed table (and the run's header beside it)."""
    import os

    out = tmp_path / "RESULTS.md"
    cwd = os.getcwd()
    os.chdir(ROOT)  # the page names its files relative to the repository root
    try:
        assert main(["reproduce", "--from-csv", "docs/RESULTS_cells.csv", "--out", str(out)]) == 0
    finally:
        os.chdir(cwd)
    assert out.read_text() == (ROOT / "docs" / "RESULTS.md").read_text()
