"""``mcrlab reproduce``: the paper's claim (MCR beats the ensemble and the other balancing methods), tested.

The grid is the ablation spec ``search_spaces/reproduce.yaml``, the paper's protocol: the ensemble of
unimodal models as the base arm; one arm per other method of ``mcrlab.methods.REGISTRY`` from scratch;
MCR, multi-loss and joint ("pre-finetuned") from unimodal pre-training (``model.init=unimodal``) and
"pre-frozen" (``unimodal_frozen``, the fusion head alone); the unimodal arm tunes its modality, so it
is the best unimodal model on validation. Every synthetic preset and two mfeat view pairs; 10 seeds,
each setting ``train.seed`` and ``data.seed`` (the split is resampled; the report says where a dataset
keeps a stored split). Tuning: the ablation runner's ``tune:`` feature gives every method its own Optuna
sweep per dataset on the tuning split (data and objective seed 1000) before its evaluation seeds, 4
trials per knob, at most half of them random start-up, MCR's starting from the paper's weights.

Nothing new runs here: this module narrows the spec when asked (``--methods``, ``--datasets``,
``--seeds``, ``--budget``, ``--epochs``), runs it with ``mcrlab.ablate.runner.run_ablation`` (resumable,
tracked in MLflow), collects every cell's values with their MLflow run ids (``results_cells``), writes
them as ``<out>_cells.csv`` beside the Markdown, and builds the comparison report of
``mcrlab.analysis.report`` from that table alone (``report_from_cells``): paired tests vs the ensemble,
Holm, the minimal detectable difference at the run's seeds, average ranks and Friedman. ``--from-csv``
re-renders the same tables from the CSV without MLflow.

A narrowed run gets its own ablation name (``reproduce-<hash of the narrowing>``), so its results never
mix with the full run's, and running the same command again with ``--resume`` continues it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mcrlab.config import ConfigError, read_yaml

__all__ = ["register", "narrow_spec", "results_tidy", "results_cells", "write_cells", "read_cells",
           "report_from_cells", "mcr_verdicts", "machine_info", "render_results", "split_moves_with_seed",
           "DEFAULT_SPEC", "BASE_METHOD", "CELL_COLUMNS"]

DEFAULT_SPEC = "search_spaces/reproduce.yaml"
BASE_METHOD = "ensemble"  # the spec's base arm: what every method is tested against
SMOKE_METHODS = ("ensemble", "mcr", "mcr_pre", "unimodal", "pre_frozen")
REPORT_METRICS = ("test/acc", "test/f1")
CELL_COLUMNS = ("arm", "dataset", "seed", "data_seed", "metric", "value", "run_id")


def _spec_path(path: str) -> Path:
    """The spec as given (relative to the working directory: the package never assumes a checkout)."""
    p = Path(path)
    if p.is_file():
        return p
    hint = " (the default is relative to a checkout's root: run from there or pass --spec PATH)" \
        if path == DEFAULT_SPEC else ""
    raise ConfigError(f"--spec: no such file {path}{hint}")


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it (no machine paths in reports)."""
    here = Path.cwd().resolve()
    full = path.resolve()
    return full.relative_to(here) if full.is_relative_to(here) else path


def _shown_uri(uri: str) -> str:
    """A tracking URI as a report may show it: a local SQLite file relative to the working directory (no
    machine paths in committed results); other URIs as they are."""
    if uri.startswith("sqlite:///"):
        return f"the local SQLite store {_relative(Path(uri.removeprefix('sqlite:///')))}"
    return uri


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


_KNOB = re.compile(r"^[a-z_]+=")


def dataset_list(text: str | None) -> list[str] | None:
    """``--datasets a,b,avdigits:n_train=1000,n_test=500`` -> names; a piece that starts ``key=`` is
    another knob of the dataset before it (no dataset name starts that way), so knobs keep their commas."""
    items = _csv(text)
    if items is None:
        return None
    out: list[str] = []
    for item in items:
        if _KNOB.match(item) and out:
            out[-1] += "," + item
        else:
            out.append(item)
    return out


def narrow_spec(raw: dict, source: str, *, methods: list[str] | None = None, datasets: list[str] | None = None,
                seeds: int | None = None, budget: int | None = None, epochs: int | None = None) -> dict:
    """The spec's raw mapping narrowed (or not); a narrowed spec is renamed ``<name>-<hash>``.

    methods: method names (arm names of the spec, plus the base arm's method ``ensemble``, always kept).
    seeds: the first N seeds 0..N-1. budget: tuning trials per knob where the spec's ``tune`` has
    ``num_samples_per_knob`` (the shipped spec), else per method and dataset; 0 = no tuning.
    """
    raw = copy.deepcopy(raw)
    arms = raw.get("arms") or {}
    changes: dict[str, Any] = {}
    if methods is not None:
        unknown = [m for m in methods if m != BASE_METHOD and m not in arms]
        if unknown:
            raise ConfigError(f"{source}: --methods: unknown method(s) {', '.join(unknown)} "
                              f"(known: {BASE_METHOD}, {', '.join(arms)})")
        raw["arms"] = {a: d for a, d in arms.items() if a in methods}
        if not raw["arms"]:
            raise ConfigError(f"{source}: --methods: name at least one method besides {BASE_METHOD}")
        changes["methods"] = sorted({BASE_METHOD, *methods})
        if isinstance((raw.get("tune") or {}).get("params"), dict):
            raw["tune"] = {**raw["tune"], "params": _params_some_arm_has(raw, source)}
        if isinstance((raw.get("tune") or {}).get("arms"), dict):  # fixed points of arms that left go too
            raw["tune"]["arms"] = {a: v for a, v in raw["tune"]["arms"].items() if a in raw["arms"]}
    if datasets is not None:
        if not datasets:
            raise ConfigError(f"{source}: --datasets: empty list")
        raw["datasets"] = list(datasets)
        changes["datasets"] = list(datasets)
        if isinstance(raw.get("dataset_overrides"), dict):  # the overrides of datasets that left go too
            raw["dataset_overrides"] = {d: v for d, v in raw["dataset_overrides"].items() if d in datasets}
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"{source}: --seeds: need at least 1 seed, got {seeds}")
        raw["seeds"] = list(range(seeds))
        changes["seeds"] = seeds
    if budget is not None:
        if budget < 0:
            raise ConfigError(f"{source}: --budget: must be >= 0, got {budget}")
        if budget == 0:
            raw.pop("tune", None)
        elif "tune" in raw and "num_samples_per_knob" in raw["tune"]:
            raw["tune"] = {**raw["tune"], "num_samples_per_knob": budget}  # the spec caps the start-up trials
        elif "tune" in raw:
            raw["tune"] = {**raw["tune"], "num_samples": budget}
            sampler = raw["tune"].get("sampler")
            if isinstance(sampler, dict) and sampler.get("n_startup_trials", 0) > budget:
                raw["tune"]["sampler"] = {**sampler, "n_startup_trials": max(1, budget // 2)}
        changes["budget"] = budget
    if epochs is not None:
        raw["base_overrides"] = {**(raw.get("base_overrides") or {}), "train.epochs": epochs}
        changes["epochs"] = epochs
    if changes:
        digest = hashlib.sha1(json.dumps(changes, sort_keys=True).encode()).hexdigest()[:8]
        raw["name"] = f"{raw.get('name', 'reproduce')}-{digest}"
    return raw


def _params_some_arm_has(raw: dict, source: str) -> dict:
    """The tune params that at least one remaining arm has (a method's own knobs leave with it)."""
    from mcrlab.config import RunConfig

    base = RunConfig.from_dict(raw.get("base") or {}, f"{source}: base")
    keys = set(base.flat())
    for delta in raw["arms"].values():
        keys |= set(base.replace(dict(delta)).flat())
    return {name: p for name, p in raw["tune"]["params"].items()
            if ".".join(str(p.get("path", name) if isinstance(p, dict) else name).split(".")[:2]) in keys}


def results_tidy(uri: str, ablation_run_id: str):
    """The tidy table (arm, dataset, seed, metric, value) of an ablation run, the base arm named ensemble."""
    from mcrlab.ablate.spec import BASE_ARM
    from mcrlab.analysis.runs import collect_runs, tidy_from_runs

    tidy, _ = tidy_from_runs(collect_runs(uri, run_id=ablation_run_id), uri=uri, history=False)
    tidy["arm"] = tidy["arm"].replace({BASE_ARM: BASE_METHOD})
    return tidy


def results_cells(uri: str, ablation_run_id: str):
    """Every measured value of an ablation run with its provenance: one row per (cell, metric), columns
    ``CELL_COLUMNS`` (arm, dataset, seed, data_seed, metric, value, run_id), sorted, the base arm named
    ensemble. Its first five columns minus data_seed are exactly ``results_tidy``'s table: the report is
    built from this table, so the CSV written from it recomputes the report (``report_from_cells``)."""
    import pandas as pd

    from mcrlab.ablate.spec import BASE_ARM
    from mcrlab.analysis.runs import PARENT, collect_runs, tidy_from_runs

    runs = collect_runs(uri, run_id=ablation_run_id)
    parents = {r.data.tags.get(PARENT) for r in runs}  # containers (ablation, arm runs) hold no cell
    rows = []
    for run in runs:
        if run.info.run_id in parents:
            continue
        tidy, _ = tidy_from_runs([run], uri=uri, history=False)  # the report's own filters, run by run
        if tidy.empty:
            continue
        data_seed = run.data.params.get("data.seed", "")
        tidy["data_seed"] = int(data_seed) if str(data_seed).lstrip("-").isdigit() else data_seed
        tidy["run_id"] = run.info.run_id
        rows.append(tidy)
    if not rows:
        return pd.DataFrame(columns=list(CELL_COLUMNS))
    cells = pd.concat(rows, ignore_index=True)[list(CELL_COLUMNS)]
    cells["arm"] = cells["arm"].replace({BASE_ARM: BASE_METHOD})
    return _sorted_cells(cells)


def _sorted_cells(cells):
    return cells.sort_values(["dataset", "arm", "seed", "metric"], key=lambda c: c.astype(str),
                             kind="stable").reset_index(drop=True)


def write_cells(cells, path: str | Path) -> Path:
    """The per-seed CSV (floats written as their shortest round-trip repr: reading it back is exact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sorted_cells(cells)[list(CELL_COLUMNS)].to_csv(path, index=False)
    return path


def read_cells(path: str | Path):
    """A per-seed CSV written by ``write_cells``; a missing column or file is a ConfigError."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--from-csv: no such file {path}")
    try:
        cells = pd.read_csv(path, dtype={"arm": str, "dataset": str, "metric": str, "run_id": str})
    except (ValueError, pd.errors.ParserError) as err:
        raise ConfigError(f"--from-csv: {path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise ConfigError(f"--from-csv: {path}: missing columns {', '.join(missing)} "
                          f"(need {', '.join(CELL_COLUMNS)})")
    if cells.empty:
        raise ConfigError(f"--from-csv: {path}: no rows")
    return cells


PROVENANCE_SUFFIX = "_provenance.json"  # beside <out>_cells.csv: the run's command, label, machine and meta


def _provenance_path(cells_path: Path) -> Path:
    return cells_path.with_name(cells_path.name.removesuffix("_cells.csv").removesuffix(".csv") + PROVENANCE_SUFFIX)


def write_provenance(cells_path: Path, provenance: dict) -> Path:
    path = _provenance_path(Path(cells_path))
    path.write_text(json.dumps(provenance, indent=2) + "\n")  # key order kept: the page lists meta in it
    return path


def read_provenance(cells_path: Path) -> dict | None:
    """The run's header written beside its CSV, or None when there is none (a hand-made CSV)."""
    path = _provenance_path(cells_path)
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"--from-csv: {path}: not readable JSON ({str(err)[:80]})") from None
    if not isinstance(loaded, dict) or not {"command", "label", "machine", "meta"} <= set(loaded) \
            or not isinstance(loaded["meta"], dict) or not isinstance(loaded["machine"], dict):
        raise ConfigError(f"--from-csv: {path}: expected an object with command, label, machine and meta")
    return loaded


def report_from_cells(cells):
    """The comparison report of a per-seed table (from MLflow or from its CSV: the same statistics)."""
    from mcrlab.analysis.report import build_report

    tidy = _sorted_cells(cells)[["arm", "dataset", "seed", "metric", "value"]]
    metrics = [m for m in dict.fromkeys(tidy["metric"]) if m in REPORT_METRICS or m.startswith("test/probe/")]
    return build_report(tidy, base=BASE_METHOD, metrics=sorted(metrics, key=lambda m: (m not in REPORT_METRICS, m)),
                        rank_metrics=["test/acc"])


def mcr_verdicts(rep, metric: str = "test/acc") -> list[dict]:
    """Per dataset: MCR's mean, the ensemble's, the difference with its power statement (sd of the paired
    differences, Holm's worst-case alpha, the MDD at power 0.8), Holm p, MCR's rank among the methods.

    "significant" is the report's rule: Holm p < 0.05 and a test that can reach it with these seeds; where
    it cannot (too few seeds), the verdict says so instead of calling the difference a tie or a trend."""
    table = rep.tables.get(metric)
    if table is None or "mcr" not in set(table["arm"]):
        return []
    out = []
    for dataset, d in table.groupby("dataset", sort=True):
        means = d.set_index("arm")["mean"]
        if "mcr" not in means or BASE_METHOD not in means:
            continue
        r = d[d["arm"] == "mcr"].iloc[0]
        rank = int((means > means["mcr"]).sum()) + 1
        sig = bool(r.significant)
        verdict = ("MCR better, significant" if sig and r["diff"] > 0 else
                   "MCR worse, significant" if sig else
                   f"too few seeds to test (n = {int(r.n)})" if not r.can_reject else
                   "MCR higher, not significant" if r["diff"] > 0 else
                   "tie" if r["diff"] == 0 else "MCR lower, not significant")
        out.append({"dataset": dataset, "mcr": float(means["mcr"]), "ensemble": float(means[BASE_METHOD]),
                    "diff": float(r["diff"]), "sd_diff": float(r.sd_diff), "mdd": float(r.mdd),
                    "alpha_adj": float(r.alpha_adj), "n": int(r.n), "p_holm": float(r.p_holm), "rank": rank,
                    "methods": len(means), "best": str(means.idxmax()), "verdict": verdict})
    return out


NOGAME_ARM = "mcr_nogame"  # MCR with lambda_m = 0: what MCR gains over it is the game term's own
FOCUS_FAMILY = 3  # MCR vs the ensemble, vs the best other method, vs itself without the game


def _per_seed(tidy, arm: str, dataset: str, metric: str) -> dict:
    d = tidy[(tidy["arm"] == arm) & (tidy["dataset"] == dataset) & (tidy["metric"] == metric)]
    return dict(zip(d["seed"], d["value"].astype(float), strict=True))


def contrast(arm: dict, other: dict, m: int) -> dict:
    """``arm`` minus ``other`` (dicts seed -> value over the same seeds): mean Δ, raw two-sided paired-t p,
    and the power statement at alpha / m (m = the size of its Holm family)."""
    from mcrlab.analysis import stats

    r = stats.paired_test(arm, other)
    pw = stats.power_of(stats.paired_diffs(arm, other), "t", m=m)
    return {"diff": r.diff, "p": r.p, "mdd": pw.mdd, "n": r.n, "can_reject": pw.can_reject}


def focused_comparisons(cells, metric: str = "test/acc") -> list[dict]:
    """Per dataset, MCR's three planned contrasts, Holm-corrected together (m = 3):

    - vs the ensemble (the base arm);
    - vs the best other method by mean (every arm but the ensemble and MCR's own arms ``mcr*``; chosen
      after seeing the means, so this contrast favours the other method: a win over it is conservative);
    - vs ``mcr_nogame`` (the same arm with lambda_m = 0), so a win is credited to the game itself.

    And the weak modality: the one whose unimodal model (the ensemble's member, ``test/probe/<m>``) is
    worse; its linear-probe accuracy under MCR, joint training and the ensemble, and MCR − joint on it.
    Rows need MCR and the ensemble on the dataset; absent arms leave their contrast empty.
    """
    from mcrlab.analysis import stats

    tidy = _sorted_cells(cells)
    out = []
    for dataset in sorted(tidy["dataset"].unique(), key=str):
        d = tidy[(tidy["dataset"] == dataset) & (tidy["metric"] == metric)]
        means = d.groupby("arm")["value"].mean()
        if "mcr" not in means or BASE_METHOD not in means:
            continue
        mcr = _per_seed(tidy, "mcr", dataset, metric)
        others = means[[a for a in means.index if a != BASE_METHOD and not a.startswith("mcr")]]
        best = str(others.idxmax()) if len(others) else ""
        row: dict[str, Any] = {"dataset": dataset, "mcr": float(means["mcr"]), "n": len(mcr), "best_arm": best}
        targets = {"ensemble": BASE_METHOD, "best": best, "nogame": NOGAME_ARM if NOGAME_ARM in means else ""}
        for key, arm in targets.items():
            row[key] = contrast(mcr, _per_seed(tidy, arm, dataset, metric), FOCUS_FAMILY) if arm else None
            if arm:
                row[key]["mean"] = float(means[arm])
        ps = [row[k]["p"] if row[k] else math.nan for k in targets]
        for k, ph in zip(targets, stats.holm(ps), strict=True):
            if row[k]:
                row[k]["p_holm"] = float(ph)
                row[k]["significant"] = bool(row[k]["can_reject"] and ph < stats.ALPHA)
        probes = sorted({m for m in tidy.loc[tidy["dataset"] == dataset, "metric"] if m.startswith("test/probe/")})
        ens_probe = {m: float(tidy[(tidy["dataset"] == dataset) & (tidy["arm"] == BASE_METHOD)
                                   & (tidy["metric"] == m)]["value"].mean()) for m in probes}
        ens_probe = {m: v for m, v in ens_probe.items() if not math.isnan(v)}
        row["weak"] = None
        if len(ens_probe) >= 2:
            weak = min(ens_probe, key=lambda m: ens_probe[m])
            w = {"modality": weak.removeprefix("test/probe/"), "ensemble": ens_probe[weak],
                 "mcr": float(tidy[(tidy["dataset"] == dataset) & (tidy["arm"] == "mcr")
                                   & (tidy["metric"] == weak)]["value"].mean())}
            joint = _per_seed(tidy, "joint", dataset, weak)
            if joint:
                w["joint"] = float(np.mean(list(joint.values())))
                w["vs_joint"] = contrast(_per_seed(tidy, "mcr", dataset, weak), joint, 1)
            row["weak"] = w
        out.append(row)
    return out


def _contrast_cell(c: dict | None, with_mean: str = "") -> str:
    from mcrlab.analysis.report import mdd_text

    if not c:
        return "—"
    star = "*" if c.get("significant") else ""
    head = f"{with_mean} {c['mean']:.4f}: " if with_mean else ""
    return f"{head}{c['diff']:+.4f}{star} (p {_p(c.get('p_holm', c['p']))}, MDD {mdd_text(c['mdd'])})"


def render_focus(rows: list[dict]) -> list[str]:
    """The focused section of RESULTS.md: a table of ``focused_comparisons`` and how to read it."""
    if not rows:
        return []
    lines = ["## MCR against the ensemble, the best other method and itself without the game (test/acc)", "",
             "Each cell: Δ = MCR − that arm (mean over seeds), the p-value of the paired t-test over matched "
             f"seeds Holm-corrected over these {FOCUS_FAMILY} contrasts per dataset (* = p < 0.05), and the "
             "minimal detectable difference (power 0.8) at that correction. The best other method is chosen "
             "by its mean after the fact, which favours it.", "",
             "| dataset | seeds | MCR | vs ensemble | vs best other method | vs MCR without the game "
             "| weak modality: probe MCR / joint / ensemble (Δ MCR − joint) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        w = r["weak"]
        if w:
            vj = w.get("vs_joint")
            weak = (f"{w['modality']}: {w['mcr']:.4f} / {w.get('joint', math.nan):.4f} / {w['ensemble']:.4f}"
                    + (f" ({vj['diff']:+.4f}, p {_p(vj['p'])})" if vj else ""))
        else:
            weak = "—"
        lines.append(f"| {r['dataset']} | {r['n']} | {r['mcr']:.4f} | {_contrast_cell(r['ensemble'])} | "
                     f"{_contrast_cell(r['best'], r['best_arm'])} | {_contrast_cell(r['nogame'])} | {weak} |")
    return lines


def split_moves_with_seed(data_cfgs: list[dict]) -> bool:
    """Whether these data sections (one dataset, different data.seed) give different data: the split
    (and, for synthetic presets, the world) is resampled. A shard folder keeps its stored split."""
    from mcrlab.config import RunConfig
    from mcrlab.data import load_dataset

    prints = {load_dataset(RunConfig.from_dict({"data": d}).data).fingerprint() for d in data_cfgs}
    return len(prints) == len(data_cfgs)


def _split_note(spec) -> str:
    """One line for the report: on which datasets the evaluation seeds resample the data split."""
    if "data.seed" not in spec.seed_keys:
        return "fixed (data.seed is not a seed key): only the initialisation varies between seeds"
    if len(spec.seeds) < 2:
        return "one seed: nothing to compare"
    moved: list[str] = []
    fixed: list[str] = []
    for dataset in spec.datasets:
        cfgs = [c.config["data"] for c in spec.cells if c.arm == spec.arms[0].name and c.dataset == dataset]
        (moved if split_moves_with_seed(cfgs[:2]) else fixed).append(dataset)
    return (f"resampled by every seed (data.seed) on {', '.join(moved) or 'none'}"
            + (f"; FIXED on {', '.join(fixed)} (the dataset stores its split: only the initialisation varies)"
               if fixed else ""))


def machine_info() -> dict[str, str]:
    """CPU model, cores, load average, Python/torch versions, GPU (if any)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "os": platform.platform(),
            "python": platform.python_version()}
    with contextlib.suppress(OSError):
        info["load_average"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    except ImportError:
        pass
    return info


def _p(v: float) -> str:
    return "" if math.isnan(v) else ("<1e-4" if v < 1e-4 else f"{v:.4f}")


def _f(v: float, spec: str = ".4f") -> str:
    return "" if math.isnan(v) else format(v, spec)


def render_results(rep, *, title: str, command: str, full_command: str, label: str, machine: dict,
                   meta: dict, cells=None) -> str:
    """docs/RESULTS.md: provenance, the MCR-vs-ensemble verdicts, then the full comparison report."""
    from mcrlab.analysis.report import render_markdown

    lines = [f"# {title}", "", label, "", "## How this was produced", "",
             f"- command: `{command}`", f"- full run: `{full_command}`"]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    if machine:
        lines.append(f"- machine: {machine.get('cpu')}, {machine.get('cores')} cores, GPU: {machine.get('gpu', '?')}; "
                     f"{machine.get('os')}; Python {machine.get('python')}, torch {machine.get('torch', '?')}")
    lines += ["", "## MCR against the ensemble of unimodal models (test/acc)", ""]
    verdicts = mcr_verdicts(rep)
    if verdicts:
        from mcrlab.analysis.report import mdd_text

        lines += ["| dataset | MCR | ensemble | Δ (MCR − ens.) | MDD (power 0.8) | sd Δ | seeds | α / m | p Holm "
                  "| MCR's rank | best method | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {v['dataset']} | {v['mcr']:.4f} | {v['ensemble']:.4f} | {v['diff']:+.4f} | "
                  f"{mdd_text(v['mdd'])} | {_f(v['sd_diff'])} | {v['n']} | {_f(v['alpha_adj'], '.5f')} | "
                  f"{_p(v['p_holm'])} | {v['rank']} of {v['methods']} | {v['best']} | {v['verdict']} |"
                  for v in verdicts]
        wins = [v["dataset"] for v in verdicts if v["verdict"] == "MCR better, significant"]
        not_beat = [v["dataset"] for v in verdicts if v["verdict"] != "MCR better, significant"]
        lines += ["", f"MCR beats the ensemble significantly (paired t-test over seeds, Holm, p < 0.05) on "
                      f"{len(wins)} of {len(verdicts)} datasets" + (f" ({', '.join(wins)})" if wins else "") + "; "
                      f"it does not on {len(not_beat)}" + (f" ({', '.join(not_beat)})" if not_beat else "") + "."]
        lines += ["", "Power: MDD is the smallest true mean difference that this many seeds detect with "
                      "probability 0.8 at α / m (Holm's strictest step, m = methods compared with the ensemble "
                      "on the dataset), given the observed seed-to-seed sd of the paired differences (sd Δ); "
                      "a |Δ| below the MDD that is not significant is not evidence of no effect. "
                      "∞: no difference can be significant with these seeds."]
    else:
        lines.append("(no MCR or ensemble results in this run)")
    if cells is not None:
        focus = render_focus(focused_comparisons(cells))
        if focus:
            lines += ["", *focus]
    body = render_markdown(rep).splitlines()
    body = ["#" + ln if ln.startswith("#") else ln for ln in body]  # the report's sections go one level down
    return "\n".join(lines + ["", *body, ""])


def _command_line(args: argparse.Namespace) -> str:
    parts = ["mcrlab", "reproduce"]
    for flag in ("spec", "methods", "datasets", "seeds", "budget", "epochs", "out"):
        value = getattr(args, flag)
        if value is not None and not (flag == "spec" and value == DEFAULT_SPEC):
            parts += [f"--{flag}", str(value)]
    parts += ["--smoke"] * args.smoke + ["--resume"] * args.continue_run
    return " ".join(shlex.quote(p) for p in parts)


TITLE = "Results: MCR against the ensemble and the balancing baselines"


def cmd_from_csv(args: argparse.Namespace) -> int:
    """``--from-csv FILE``: the report again from the per-seed CSV alone (no MLflow, nothing runs)."""
    cells = read_cells(args.from_csv)
    rep = report_from_cells(cells)
    src = _relative(Path(args.from_csv))
    runs = cells["run_id"].nunique()
    provenance = read_provenance(Path(args.from_csv))
    if provenance is not None:  # the run's own header, so the committed page is exactly this re-render
        text = render_results(rep, title=TITLE, command=provenance["command"], full_command="mcrlab reproduce",
                              machine=provenance["machine"], label=provenance["label"],
                              meta={**provenance["meta"], "rendered by": f"`mcrlab reproduce --from-csv {src}` "
                                    f"(from the per-seed table and {_provenance_path(Path(args.from_csv)).name} "
                                    "beside it)"}, cells=cells)
    else:
        text = render_results(rep, title=TITLE, command=f"mcrlab reproduce --from-csv {src}",
                              full_command="mcrlab reproduce", machine={},
                              label=f"**Re-rendered** from the per-seed table `{src}` ({len(cells)} values of {runs} "
                                    "runs); the statistics below are recomputed from it alone.",
                              meta={"cells": f"{src}"}, cells=cells)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"mcrlab reproduce: wrote {out}", file=sys.stderr)
    else:
        print(text)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    if args.from_csv:
        return cmd_from_csv(args)
    from mcrlab.ablate.spec import parse_spec
    from mcrlab.tracking import check_tracking, git_commit, resolve_tracking_uri

    spec_path = _spec_path(args.spec)
    raw = read_yaml(spec_path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{args.spec}: must be an ablation spec mapping")
    methods = _csv(args.methods)
    if args.smoke and methods is None:
        methods = list(SMOKE_METHODS)
    narrowed = narrow_spec(raw, args.spec, methods=methods, datasets=dataset_list(args.datasets), seeds=args.seeds,
                           budget=args.budget, epochs=args.epochs)
    uri = resolve_tracking_uri(args.tracking_uri)
    spec = parse_spec(narrowed, args.spec, smoke=args.smoke, tracking_uri=uri)
    trials = {BASE_METHOD if a == spec.arms[0].name else a: t["num_samples"] for a, t in spec.tuning.items()}
    grid: dict[str, Any] = {  # JSON-ready; its "methods" is a list[str]
        "ablation_id": spec.ablation_id, "methods": [BASE_METHOD] + [a.name for a in spec.arms[1:]],
        "datasets": spec.datasets, "seeds": spec.seeds, "seed_keys": spec.seed_keys, "cells": len(spec.cells),
        "tuning_trials_per_dataset": trials}
    budget_text = (f"{min(trials.values())}-{max(trials.values())} tuning trials per method and dataset "
                   "(4 per knob in the full run)") if trials else "no tuning"
    if args.dry_run:
        print(json.dumps(grid, indent=2))
        return 0
    check_tracking(uri)
    out = Path(args.out) if args.out else Path(args.storage) / spec.ablation_id / "RESULTS.md"
    print(f"mcrlab reproduce: {spec.ablation_id}: {len(grid['methods'])} methods x {len(spec.datasets)} datasets "
          f"x {len(spec.seeds)} seeds = {len(spec.cells)} cells, {budget_text}; tracking {uri}",
          file=sys.stderr)
    from mcrlab.ablate.runner import run_ablation
    from mcrlab.analysis.files import write_report

    machine = machine_info()
    t0, started = time.time(), dt.datetime.now(dt.timezone.utc)
    from mcrlab.trials.display import quiet_libraries
    from mcrlab.trials.session import start_ray

    quiet_libraries(verbose=args.verbose > 0)
    start_ray(include_dashboard=False)
    outcome = run_ablation(spec, uri, resume=args.continue_run, storage_path=args.storage, verbose=args.verbose)
    wall = time.time() - t0
    if outcome.failed:
        print(f"mcrlab reproduce: failed cells {outcome.failed}; rerun the same command with --resume",
              file=sys.stderr)
        return 1
    cells = results_cells(uri, outcome.ablation_run_id)
    cells_path = write_cells(cells, out.parent / f"{out.stem}_cells.csv")
    rep = report_from_cells(cells)
    write_report(rep, out.parent / f"{out.stem}_report", ("md", "csv"), plots=False)
    reduced = args.smoke or spec.ablation_id != raw.get("name")
    label = (("**Smoke run** (seconds; not evidence): " if args.smoke else "**Reduced run** of the full grid: ")
             + f"methods {', '.join(grid['methods'])}; datasets {', '.join(spec.datasets)}; seeds {spec.seeds}; "
             f"{budget_text}; "
             f"{spec.cells[0].config['train']['epochs']} epochs.") if reduced else (
        "**Full run** of search_spaces/reproduce.yaml.")
    meta = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "git commit": git_commit(),
            "wall time": f"{wall / 60:.1f} min ({len(outcome.ran)} cells run now, {len(outcome.skipped)} reused)",
            "load average at the end (1, 5, 15 min)": machine_info().get("load_average", "?"),
            "MLflow": f"{_shown_uri(uri)}, experiment `{spec.experiment}`, ablation run `{outcome.ablation_run_id}`",
            "spec": f"{_relative(spec_path)}",
            "per-arm tuned configs": "artifact `tuned.json` of each arm run",
            "tuning trials per arm and dataset": ", ".join(
                f"{a} {t['num_samples']}" for a, t in spec.tuning.items()) or "none",
            "data split per seed": _split_note(spec),
            "per-seed values": f"`{_relative(cells_path)}` (every cell: arm, dataset, seed, data seed, metric, "
                               f"value, MLflow run id); `mcrlab reproduce --from-csv {_relative(cells_path)}` "
                               "recomputes every table below from it"}
    command = _command_line(args)
    write_provenance(cells_path, {"command": command, "label": label, "machine": machine, "meta": meta})
    text = render_results(rep, title=TITLE, command=command, full_command="mcrlab reproduce", label=label,
                          machine=machine, meta=meta, cells=cells)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"mcrlab reproduce: wrote {out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="MCR vs the ensemble and every baseline, the paper's protocol, 10 seeds: writes RESULTS.md",
        description="Run search_spaces/reproduce.yaml (every method, from scratch and from unimodal pre-training, "
                    "the best unimodal model, pre-frozen and pre-finetuned, x every synthetic preset and two mfeat "
                    "view pairs x 10 seeds that also resample the data split, each method tuned per dataset with "
                    "4 trials per knob, MCR from the paper's weights) through the ablation runner, then write the "
                    "comparison report (paired tests vs the ensemble with Holm and the minimal detectable "
                    "difference, average ranks, Friedman) as Markdown with the command, machine, date and git "
                    "commit, and every per-seed value as a CSV beside it (--from-csv re-renders from it). The "
                    "options narrow the grid; a narrowed run is labelled as such and tracked under its own name.")
    p.add_argument("--smoke", action="store_true",
                   help=f"the spec's smoke variant (1 dataset, 2 seeds, 1 epoch; methods {', '.join(SMOKE_METHODS)} "
                        "unless --methods): seconds")
    p.add_argument("--seeds", type=int, help="evaluation seeds 0..N-1 (default: the spec's, 10)")
    p.add_argument("--budget", type=int, help="tuning trials per knob of each method and dataset, or per method and "
                                              "dataset for a spec with tune.num_samples (default: the spec's; 0 = none)")
    p.add_argument("--methods", help="comma-separated methods (ensemble, the base, is always included)")
    p.add_argument("--datasets", help="comma-separated datasets, e.g. synthetic:competition,mfeat:pix+fou")
    p.add_argument("--epochs", type=int, help="training epochs of every run (tuning and evaluation)")
    p.add_argument("--out", help="Markdown output (default STORAGE/<ablation id>/RESULTS.md; the committed evidence "
                                     "is written with --out docs/RESULTS.md)")
    p.add_argument("--spec", default=DEFAULT_SPEC, help=f"the ablation spec (default {DEFAULT_SPEC})")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    p.add_argument("--storage", default="runs", help="run folder for Ray Tune state (default runs)")
    p.add_argument("--resume", action="store_true", dest="continue_run",
                   help="continue this (same-command) run: only missing cells run")
    p.add_argument("--dry-run", action="store_true", help="print the grid and exit; nothing runs")
    p.add_argument("--from-csv", metavar="FILE",
                   help="re-render the report from a per-seed CSV written by a run (RESULTS_cells.csv beside its "
                        "Markdown) alone: no MLflow, nothing runs; with --out X.md, else to stdout")
    p.add_argument("--verbose", type=int, nargs="?", const=1, default=0, choices=(0, 1, 2), metavar="LEVEL",
                   help="also show Ray Tune's tables (LEVEL 1 or 2), MLflow's and Optuna's logs")
    p.set_defaults(func=cmd_reproduce)
