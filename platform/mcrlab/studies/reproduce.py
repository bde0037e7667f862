"""``mcrlab reproduce``: the paper's claim (MCR beats the ensemble and the other balancing methods), tested.

The grid is the ablation spec ``search_spaces/reproduce.yaml``: the ensemble of unimodal models as the
base arm, one arm per other method of ``mcrlab.methods.REGISTRY``, every synthetic preset and two mfeat
view pairs, 5 seeds. Equal tuning budget: the ablation runner's ``tune:`` feature gives every method its
own Optuna sweep of the same size per dataset (tuning seed 1000) before its evaluation seeds. Nothing new
runs here: this module narrows the spec when asked (``--methods``, ``--datasets``, ``--seeds``,
``--budget``, ``--epochs``), runs it with ``mcrlab.ablate.runner.run_ablation`` (resumable, tracked in
MLflow), builds the comparison report of ``mcrlab.analysis.report`` with the ensemble as the base arm (paired
tests vs the ensemble, Holm; average ranks and Friedman) and writes it as Markdown with the exact
command, the machine, the date and the git commit.

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
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from mcrlab.config import ConfigError, read_yaml

__all__ = ["register", "narrow_spec", "results_tidy", "mcr_verdicts", "machine_info", "render_results",
           "DEFAULT_SPEC", "BASE_METHOD"]

DEFAULT_SPEC = "search_spaces/reproduce.yaml"
BASE_METHOD = "ensemble"  # the spec's base arm: what every method is tested against
SMOKE_METHODS = ("ensemble", "mcr", "joint")
REPORT_METRICS = ("test/acc", "test/f1")


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


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def narrow_spec(raw: dict, source: str, *, methods: list[str] | None = None, datasets: list[str] | None = None,
                seeds: int | None = None, budget: int | None = None, epochs: int | None = None) -> dict:
    """The spec's raw mapping narrowed (or not); a narrowed spec is renamed ``<name>-<hash>``.

    methods: method names (arm names of the spec, plus the base arm's method ``ensemble``, always kept).
    seeds: the first N seeds 0..N-1. budget: trials per method and dataset (0 = no tuning).
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
    if datasets is not None:
        if not datasets:
            raise ConfigError(f"{source}: --datasets: empty list")
        raw["datasets"] = list(datasets)
        changes["datasets"] = list(datasets)
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


def mcr_verdicts(rep, metric: str = "test/acc") -> list[dict]:
    """Per dataset: MCR's mean, the ensemble's, the difference, Holm p, MCR's rank among the methods."""
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
        sig = not math.isnan(r.p_holm) and r.p_holm < 0.05
        verdict = ("MCR better, significant" if sig and r["diff"] > 0 else
                   "MCR worse, significant" if sig else
                   "MCR higher, not significant" if r["diff"] > 0 else
                   "tie" if r["diff"] == 0 else "MCR lower, not significant")
        out.append({"dataset": dataset, "mcr": float(means["mcr"]), "ensemble": float(means[BASE_METHOD]),
                    "diff": float(r["diff"]), "p_holm": float(r.p_holm), "rank": rank, "methods": len(means),
                    "best": str(means.idxmax()), "verdict": verdict})
    return out


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


def render_results(rep, *, title: str, command: str, full_command: str, label: str, machine: dict,
                   meta: dict) -> str:
    """docs/RESULTS.md: provenance, the MCR-vs-ensemble verdicts, then the full comparison report."""
    from mcrlab.analysis.report import render_markdown

    lines = [f"# {title}", "", label, "", "## How this was produced", "",
             f"- command: `{command}`", f"- full run: `{full_command}`"]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [f"- machine: {machine.get('cpu')}, {machine.get('cores')} cores, GPU: {machine.get('gpu', '?')}; "
              f"{machine.get('os')}; Python {machine.get('python')}, torch {machine.get('torch', '?')}",
              "", "## MCR against the ensemble of unimodal models (test/acc)", ""]
    verdicts = mcr_verdicts(rep)
    if verdicts:
        lines += ["| dataset | MCR | ensemble | Δ (MCR − ens.) | p Holm | MCR's rank | best method | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {v['dataset']} | {v['mcr']:.4f} | {v['ensemble']:.4f} | {v['diff']:+.4f} | {_p(v['p_holm'])} "
                  f"| {v['rank']} of {v['methods']} | {v['best']} | {v['verdict']} |" for v in verdicts]
        wins = [v["dataset"] for v in verdicts if v["verdict"] == "MCR better, significant"]
        not_beat = [v["dataset"] for v in verdicts if v["verdict"] != "MCR better, significant"]
        lines += ["", f"MCR beats the ensemble significantly (paired t-test over seeds, Holm, p < 0.05) on "
                      f"{len(wins)} of {len(verdicts)} datasets" + (f" ({', '.join(wins)})" if wins else "") + "; "
                      f"it does not on {len(not_beat)}" + (f" ({', '.join(not_beat)})" if not_beat else "") + "."]
    else:
        lines.append("(no MCR or ensemble results in this run)")
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


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mcrlab.ablate.spec import parse_spec
    from mcrlab.tracking import check_tracking, git_commit, resolve_tracking_uri

    spec_path = _spec_path(args.spec)
    raw = read_yaml(spec_path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{args.spec}: must be an ablation spec mapping")
    methods = _csv(args.methods)
    if args.smoke and methods is None:
        methods = list(SMOKE_METHODS)
    narrowed = narrow_spec(raw, args.spec, methods=methods, datasets=_csv(args.datasets), seeds=args.seeds,
                           budget=args.budget, epochs=args.epochs)
    uri = resolve_tracking_uri(args.tracking_uri)
    spec = parse_spec(narrowed, args.spec, smoke=args.smoke, tracking_uri=uri)
    grid = {"ablation_id": spec.ablation_id, "methods": [BASE_METHOD] + [a.name for a in spec.arms[1:]],
            "datasets": spec.datasets, "seeds": spec.seeds, "cells": len(spec.cells),
            "tuning_trials_per_method_and_dataset": (spec.raw.get("tune") or {}).get("num_samples", 0)
            if not args.smoke else min(2, (spec.raw.get("tune") or {}).get("num_samples", 0))}
    if args.dry_run:
        print(json.dumps(grid, indent=2))
        return 0
    check_tracking(uri)
    out = Path(args.out) if args.out else Path(args.storage) / spec.ablation_id / "RESULTS.md"
    print(f"mcrlab reproduce: {spec.ablation_id}: {len(grid['methods'])} methods x {len(spec.datasets)} datasets "
          f"x {len(spec.seeds)} seeds = {len(spec.cells)} cells, tuning budget "
          f"{grid['tuning_trials_per_method_and_dataset']} trials per method and dataset; tracking {uri}",
          file=sys.stderr)
    from mcrlab.ablate.runner import run_ablation
    from mcrlab.analysis.files import write_report
    from mcrlab.analysis.report import build_report

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
    tidy = results_tidy(uri, outcome.ablation_run_id)
    metrics = [m for m in dict.fromkeys(tidy["metric"]) if m in REPORT_METRICS or m.startswith("test/probe/")]
    rep = build_report(tidy, base=BASE_METHOD, metrics=sorted(metrics, key=lambda m: (m not in REPORT_METRICS, m)),
                       rank_metrics=["test/acc"])
    write_report(rep, out.parent / f"{out.stem}_report", ("md", "csv"), plots=False)
    reduced = args.smoke or spec.ablation_id != raw.get("name")
    label = (("**Smoke run** (seconds; not evidence): " if args.smoke else "**Reduced run** of the full grid: ")
             + f"methods {', '.join(grid['methods'])}; datasets {', '.join(spec.datasets)}; seeds {spec.seeds}; "
             f"tuning budget {grid['tuning_trials_per_method_and_dataset']} trials per method and dataset; "
             f"{spec.cells[0].config['train']['epochs']} epochs.") if reduced else (
        "**Full run** of search_spaces/reproduce.yaml.")
    meta = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "git commit": git_commit(),
            "wall time": f"{wall / 60:.1f} min ({len(outcome.ran)} cells run now, {len(outcome.skipped)} reused)",
            "load average at the end (1, 5, 15 min)": machine_info().get("load_average", "?"),
            "MLflow": f"{uri}, experiment `{spec.experiment}`, ablation run `{outcome.ablation_run_id}`",
            "spec": f"{_relative(spec_path)}",
            "per-arm tuned configs": "artifact `tuned.json` of each arm run"}
    text = render_results(rep, title="Results: MCR against the ensemble and the balancing baselines",
                          command=_command_line(args), full_command="mcrlab reproduce", label=label,
                          machine=machine, meta=meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"mcrlab reproduce: wrote {out}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="MCR vs the ensemble and every baseline, equally tuned, 5 seeds: writes RESULTS.md",
        description="Run search_spaces/reproduce.yaml (every method x every synthetic preset and two mfeat view "
                    "pairs x 5 seeds, each method tuned per dataset on an equal budget) through the ablation "
                    "runner, then write the comparison report (paired tests vs the ensemble with Holm, average "
                    "ranks, Friedman) as Markdown with the command, machine, date and git commit. The options "
                    "narrow the grid; a narrowed run is labelled as such and tracked under its own name.")
    p.add_argument("--smoke", action="store_true",
                   help=f"the spec's smoke variant (1 dataset, 2 seeds, 1 epoch; methods {', '.join(SMOKE_METHODS)} "
                        "unless --methods): seconds")
    p.add_argument("--seeds", type=int, help="evaluation seeds 0..N-1 (default: the spec's, 5)")
    p.add_argument("--budget", type=int, help="tuning trials per method and dataset (default: the spec's; 0 = none)")
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
    p.add_argument("--verbose", type=int, nargs="?", const=1, default=0, choices=(0, 1, 2), metavar="LEVEL",
                   help="also show Ray Tune's tables (LEVEL 1 or 2), MLflow's and Optuna's logs")
    p.set_defaults(func=cmd_reproduce)
