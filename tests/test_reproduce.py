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
from mcrlab.studies.reproduce import BASE_METHOD, mcr_verdicts, narrow_spec, render_results

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
    assert spec.seeds == [0, 1, 2, 3, 4] and spec.metric == "test/acc"
    # equal budget: every arm tunes (at least the lr) with the same number of trials
    assert set(spec.tuning) == {a.name for a in spec.arms}
    assert {s["num_samples"] for s in spec.tuning.values()} == {raw["tune"]["num_samples"]}
    assert all("train.lr" in s["params"] for s in spec.tuning.values())
    assert "method.lambda_m" in spec.tuning["mcr"]["params"] and "method.lambda_m" not in spec.tuning["joint"]["params"]
    assert all(s["objective"]["seed"] not in spec.seeds for s in spec.tuning.values())


def test_narrowing_keeps_the_base_drops_unused_knobs_and_renames():
    raw = _raw()
    n = narrow_spec(raw, "r.yaml", methods=["mcr", "joint"], datasets=["synthetic:competition"], seeds=3,
                    budget=3, epochs=4)
    assert set(n["arms"]) == {"mcr", "joint"} and n["seeds"] == [0, 1, 2]
    assert n["tune"]["num_samples"] == 3 and n["tune"]["sampler"]["n_startup_trials"] <= 3
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
    for arm in ("ensemble", "mcr", "joint"):
        assert f"| synthetic:competition | {arm} | 2 |" in text  # 2 seeds per method
    csv = pd.read_csv(tmp_path / "RESULTS_report" / "report.csv")
    assert set(csv["arm"]) == {"ensemble", "mcr", "joint"}
    # the same command again with --resume reruns nothing and writes the same table
    assert main(["reproduce", "--smoke", "--tracking-uri", mlflow_uri, "--storage", str(tmp_path / "runs"),
                 "--out", str(out), "--resume"]) == 0
    assert "0 cells run now, 6 reused" in out.read_text()
