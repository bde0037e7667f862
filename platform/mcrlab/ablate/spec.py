"""Ablation specs: a base configuration, named arms (deltas of dotted keys), datasets and seeds.

Schema (shipped examples: search_spaces/ablation_*.yaml, each starting with the command that runs it)::

    name: mcr_standard            # ablation id (``-smoke`` is appended under --smoke)
    experiment: ablations         # MLflow experiment (default: ablations)
    base: {data: ..., model: ..., method: {name: mcr, ...}, train: ...}   # inline base config, or
    base_run: <mlflow run id>     # a sweep's best trial: its logged config is the base and the run is
                                  # the lineage parent (tag mcrlab.base_run_id on every run)
    base_overrides: {train.epochs: 30}   # dotted keys applied on top of base / base_run
    generate: mcr_standard        # built-in arms (see ``mcr_standard``); optional
    exclude: [divergence_mse]     # generated arms to drop
    arms:                         # explicit arms: name -> delta (dotted keys); 'base' is implicit
      joint: {method.name: joint}
    datasets: [synthetic:competition, synthetic:imbalanced]
    dataset_overrides:            # what one dataset needs on top of base (arms' deltas still win)
      avdigits: {model.encoders: [cnn, conv1d]}
    seeds: [0, 1, 2, 3, 4]
    seed_keys: [train.seed]       # config keys a seed sets (add data.seed to resample splits too)
    metric: test/acc              # headline metric of the report
    resources: {workers: 1, cpus: 1, gpus: 0, max_concurrent: 0}   # workers > 1: data-parallel cells
    smoke: {overrides: {train.epochs: 1}, seeds: [0, 1], datasets: [synthetic:competition]}
    tune: {num_samples: 8, params: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}}

Every cell's configuration is built and validated when the spec loads, so a typo in any arm fails
with a ``ConfigError`` naming the file and key before anything starts.

Equal tuning budget (optional): ``tune:`` holds a small search space in the sweep schema
(``params`` required; ``num_samples`` default 8, ``metric`` val/acc, ``mode`` max, ``objective``,
``sampler``, ``scheduler``). Before its seeds, every arm gets its own sweep (``mcrlab.tune.run_sweep``)
with the same budget on each dataset, from the arm's own config; its best config per dataset is what
the arm's cells run. Parameters an arm fixes itself (its delta) or does not have (``method.*`` keys of
another method) are dropped from that arm's space. With ``num_samples_per_knob: K`` instead of ``num_samples``, an arm's budget is K times the number of
knobs it tunes (a four-knob method gets four times the trials of an lr-only one), and a sampler's
``n_startup_trials`` is capped at half of each arm's budget so the model-based sampler is used at all.
``arms: {arm: {points_to_evaluate: [...]}}`` gives one arm its own fixed first points (e.g. a paper's
published weights), which count toward its budget. Tuning uses ``objective.seed`` 1000 by default, so
that the tuning seeds are not the evaluation seeds (selection on the evaluation seeds would bias the
comparison toward the arm that got lucky there).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcrlab.config import ConfigError, RunConfig, build_dataclass, check_name, cut, opt, read_yaml, short
from mcrlab.trials.resources import check_gpu_share

__all__ = ["Arm", "Cell", "AblationSpec", "Resources", "SmokeSpec", "load_spec", "parse_spec", "mcr_standard",
           "GENERATORS", "TOP_LEVEL_KEYS", "BASE_ARM", "config_from_run"]

BASE_ARM = "base"
TOP_LEVEL_KEYS = ("name", "description", "experiment", "base", "base_run", "base_overrides", "generate",
                  "exclude", "arms", "datasets", "dataset_overrides", "seeds", "seed_keys", "metric", "resources",
                  "smoke", "tune")
MAX_CELLS = 10_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Resources:
    workers: int = opt(1, "workers per cell: 1 = single-process trial, > 1 = data-parallel (Ray Train)", ge=1)
    cpus: float = opt(1.0, "CPUs per worker", gt=0.0)
    gpus: float = opt(0.0, "GPUs per worker (fractions share a GPU in single-process cells)", ge=0.0)
    max_concurrent: int = opt(0, "cells running at once (0 = as many as resources allow)", ge=0)

    def __post_init__(self) -> None:
        check_gpu_share(self.workers, self.gpus, "gpus")


@dataclass
class SmokeSpec:
    overrides: dict = opt({"train.epochs": 1}, "dotted config keys pinned under --smoke")
    seeds: list = opt([], "seeds under --smoke (empty = the first two)")
    datasets: list = opt([], "datasets under --smoke (empty = the first one)")


@dataclass(frozen=True)
class Arm:
    name: str
    delta: dict  # dotted key -> value, applied to the base

    def delta_json(self) -> str:
        return json.dumps(self.delta, sort_keys=True, default=str)


@dataclass(frozen=True)
class Cell:
    """One (arm, dataset, seed) run of the grid with its resolved configuration."""

    arm: str
    dataset: str
    seed: int
    config: dict = field(compare=False, repr=False)   # nested, RunConfig.to_dict()
    config_hash: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.arm, self.dataset, str(self.seed))


@dataclass
class AblationSpec:
    name: str
    path: str
    experiment: str
    base: RunConfig
    base_run: str | None
    arms: list[Arm]
    datasets: list[str]
    seeds: list[int]
    seed_keys: list[str]
    metric: str
    resources: Resources
    cells: list[Cell]
    description: str = ""
    smoke: bool = False
    raw: dict = field(default_factory=dict, repr=False)
    tuning: dict = field(default_factory=dict, repr=False)     # arm -> sweep search space (raw mapping)
    overrides: dict = field(default_factory=dict, repr=False)  # smoke overrides pinned on every cell

    @property
    def ablation_id(self) -> str:
        return self.name + ("-smoke" if self.smoke else "")

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


# --------------------------------------------------------------------------------------------------
# built-in generators


def mcr_standard(base: RunConfig) -> dict[str, dict]:
    """The standard MCR ablations relative to ``base`` (which must use method.name=mcr).

    Game strategy (the two strategies other than the base's), each loss term toggled (on -> 0; the
    off-by-default irrelevant bound -> 0.01), the other perturbation types, the other reference-
    gradient option and the other divergences. Arms equal to the base are not generated.
    """
    if base.method.name != "mcr":
        raise ConfigError(f"generate: mcr_standard needs a base with method.name=mcr, got '{base.method.name}'")
    p = base.method.params
    arms: dict[str, dict] = {}
    for strategy in ("greedy", "independent", "collaborative"):
        if strategy != p.strategy:
            arms[f"strategy_{strategy}"] = {"method.strategy": strategy}
    for term, key in (("game", "lambda_m"), ("shared", "lambda_c"), ("unimodal_heads", "w_uni")):
        if getattr(p, key) > 0:
            arms[f"no_{term}"] = {f"method.{key}": 0.0}
    arms["irrelevant_on" if p.lambda_b == 0 else "no_irrelevant"] = {
        "method.lambda_b": 0.01 if p.lambda_b == 0 else 0.0}
    for pert in ("permute", "noise", "zero"):
        if pert != p.perturbation:
            arms[f"perturb_{pert}"] = {"method.perturbation": pert}
    other_ref = "full" if p.reference_grad == "same" else "same"
    arms[f"reference_grad_{other_ref}"] = {"method.reference_grad": other_ref}
    for div in ("jsd", "kl", "mse"):
        if div != p.divergence:
            arms[f"divergence_{div}"] = {"method.divergence": div}
    return arms


GENERATORS = {"mcr_standard": mcr_standard}


# --------------------------------------------------------------------------------------------------
# loading


def config_from_run(uri: str, run_id: str, source: str = "base_run") -> dict:
    """The nested config dict of an MLflow run: its logged config artifact, else its ``section.key`` params.

    Artifacts tried: config.json, config.yaml, resolved_config.json/yaml (any of the names the platform's
    writers use). Params are strings; they are parsed back as YAML scalars/lists.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{source}: no MLflow run '{run_id}' in {uri}") from None
    import tempfile

    names = {a.path for a in client.list_artifacts(run_id)}
    for name in ("config.json", "config.yaml", "resolved_config.json", "resolved_config.yaml"):
        if name in names:
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(run_id, name, tmp)
                loaded = yaml.safe_load(Path(local).read_text())  # JSON is YAML
            if isinstance(loaded, dict) and "config" in loaded and isinstance(loaded["config"], dict):
                loaded = loaded["config"]
            return loaded
    sections = ("data", "model", "method", "train")
    raw: dict[str, dict] = {}
    for key, text in run.data.params.items():
        section, _, name = key.partition(".")
        if section in sections and name and "." not in name:
            try:
                raw.setdefault(section, {})[name] = yaml.safe_load(text)
            except yaml.YAMLError:
                raw.setdefault(section, {})[name] = text
    if not raw:
        raise ConfigError(f"{source}: run '{run_id}' has no config artifact and no section.key params")
    return raw


def _dotted(raw: Any, where: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of section.key: value")
    for key in raw:
        if not isinstance(key, str) or key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f"{where}.{key}: keys must look like section.key (e.g. method.lambda_m)")
    return dict(raw)


def load_spec(path: str | Path, smoke: bool = False, tracking_uri: str | None = None) -> AblationSpec:
    """Read and fully validate an ablation spec file (every cell's config is built once)."""
    raw = read_yaml(path)
    return parse_spec(raw, str(path), smoke=smoke, tracking_uri=tracking_uri)


def parse_spec(raw: Any, source: str = "<spec>", smoke: bool = False,
               tracking_uri: str | None = None) -> AblationSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: an ablation spec must be a mapping")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{source}: {key}: unknown key (known: {', '.join(TOP_LEVEL_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{source}: name: required, letters/digits/._- (got {short(name)})")
    check_name(name, f"{source}: name")  # it names a folder: no '..', at most 100 characters
    experiment = raw.get("experiment", "ablations")
    if not isinstance(experiment, str) or not experiment.strip() or len(experiment) > 100 \
            or not experiment.isprintable():
        raise ConfigError(f"{source}: experiment: expected a printable MLflow experiment name of at most 100 "
                          f"characters, got {short(experiment)}")

    # base: inline, or a sweep's trial run (the lineage parent)
    base_run = raw.get("base_run")
    if ("base" in raw) == (base_run is not None):
        raise ConfigError(f"{source}: base: give exactly one of base (inline config) or base_run (run id)")
    if base_run is not None:
        if not isinstance(base_run, str) or not base_run:
            raise ConfigError(f"{source}: base_run: must be an MLflow run id")
        from mcrlab.tracking import resolve_tracking_uri

        base_raw = config_from_run(resolve_tracking_uri(tracking_uri), base_run, f"{source}: base_run")
        base = RunConfig.from_dict(base_raw, f"{source}: base_run {base_run}")
    else:
        base = RunConfig.from_dict(raw["base"], f"{source}: base")
    base = base.replace(_dotted(raw.get("base_overrides"), f"{source}: base_overrides"),
                        f"{source}: base_overrides")

    # arms: base + generated + explicit
    arms: dict[str, dict] = {BASE_ARM: {}}
    gen = raw.get("generate")
    if gen is not None:
        if gen not in GENERATORS:
            raise ConfigError(f"{source}: generate: unknown generator {short(gen)} (known: {', '.join(GENERATORS)})")
        try:
            arms.update(GENERATORS[gen](base))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list):
        raise ConfigError(f"{source}: exclude: must be a list of arm names")
    for ex in exclude:
        if ex not in arms or ex == BASE_ARM:
            raise ConfigError(f"{source}: exclude: '{ex}' is not a generated arm (generated: "
                              f"{', '.join(a for a in arms if a != BASE_ARM) or 'none'})")
        del arms[ex]
    explicit = raw.get("arms") or {}
    if not isinstance(explicit, dict):
        raise ConfigError(f"{source}: arms: must be a mapping of arm name -> {{section.key: value}}")
    for arm_name, delta in explicit.items():
        if not isinstance(arm_name, str) or not _NAME.match(arm_name) or arm_name == BASE_ARM:
            raise ConfigError(f"{source}: arms.{cut(arm_name)}: arm names are letters/digits/._- and not 'base'")
        check_name(arm_name, f"{source}: arms.{arm_name}")
        arms[arm_name] = _dotted(delta, f"{source}: arms.{arm_name}")
    if len(arms) < 2:
        raise ConfigError(f"{source}: arms: need at least one arm besides the base (arms: or generate:)")

    datasets = _list(raw.get("datasets"), f"{source}: datasets", str) or [base.data.name]
    seeds = _list(raw.get("seeds", [0, 1, 2]), f"{source}: seeds", int)
    if not seeds:
        raise ConfigError(f"{source}: seeds: need at least one seed")
    for key, items in (("datasets", datasets), ("seeds", seeds)):
        if len(set(items)) != len(items):
            twice = next(x for x in items if items.count(x) > 1)
            raise ConfigError(f"{source}: {key}: {short(twice)} is listed twice")
    # the shape check sweeps share; the values are checked per cell below
    from mcrlab.tune.space import parse_dataset_overrides
    ds_over = parse_dataset_overrides(raw.get("dataset_overrides"), datasets, source,
                                      {"data.name": "the dataset's name is its key"})
    seed_keys = _list(raw.get("seed_keys", ["train.seed"]), f"{source}: seed_keys", str)
    for k in seed_keys:
        _dotted({k: 0}, f"{source}: seed_keys")
    resources = build_dataclass(Resources, raw.get("resources"), source, "resources")
    smoke_spec = build_dataclass(SmokeSpec, raw.get("smoke"), source, "smoke")
    metric = raw.get("metric", "test/acc")
    if not isinstance(metric, str) or "/" not in metric:
        raise ConfigError(f"{source}: metric: expected a metric name like test/acc, got {short(metric)}")
    overrides: dict = {}
    if smoke:
        overrides = _dotted(smoke_spec.overrides, f"{source}: smoke.overrides")
        seeds = _list(smoke_spec.seeds, f"{source}: smoke.seeds", int) or seeds[:2]
        datasets = _list(smoke_spec.datasets, f"{source}: smoke.datasets", str) or datasets[:1]

    arm_list = [Arm(n, d) for n, d in arms.items()]
    arm_cfgs = {}
    for arm in arm_list:
        try:
            arm_cfgs[arm.name] = base.replace(arm.delta, f"{source}: arms.{arm.name}")
        except ConfigError as err:
            raise ConfigError(str(err)) from None
    tuning = {}
    if raw.get("tune") is not None:
        tuning = tuning_spaces(raw["tune"], arm_cfgs, {a.name: a.delta for a in arm_list}, datasets, overrides,
                               f"{name}-smoke" if smoke else name, source, smoke, ds_over)
    n_cells = len(arm_cfgs) * len(datasets) * len(seeds)
    if n_cells > MAX_CELLS:  # checked before a RunConfig is built per cell
        raise ConfigError(f"{source}: {len(arm_cfgs)} arms x {len(datasets)} datasets x {len(seeds)} seeds = "
                          f"{n_cells} cells; at most {MAX_CELLS} (split the ablation)")
    configs = {}
    for arm in arm_list:
        for d in datasets:
            where = f"{source}: arms.{arm.name} on {d}"  # base + the dataset's overrides + the arm's delta
            configs[(arm.name, d)] = (base.replace({"data.name": d, **ds_over[d], **arm.delta}, where) if d in ds_over
                                      else arm_cfgs[arm.name])
    cells = make_cells(configs, seeds, seed_keys, overrides, source)
    return AblationSpec(name=name, path=source, experiment=experiment, base=base,
                        base_run=base_run, arms=arm_list, datasets=datasets, seeds=seeds, seed_keys=seed_keys,
                        metric=metric, resources=resources, cells=cells, tuning=tuning, overrides=overrides,
                        description=str(raw.get("description", "")), smoke=smoke, raw=copy.deepcopy(raw))


def make_cells(configs: dict[tuple[str, str], RunConfig], seeds: list[int], seed_keys: list[str],
               overrides: dict, source: str) -> list[Cell]:
    """``{(arm, dataset): config}`` -> one validated cell per seed (data.name, seed keys, overrides set)."""
    cells = []
    for (arm, dataset), arm_cfg in configs.items():
        for seed in seeds:
            cfg = arm_cfg.replace({"data.name": dataset, **{k: seed for k in seed_keys}, **overrides},
                                  f"{source}: arms.{arm} on {dataset}")
            cells.append(Cell(arm, dataset, seed, cfg.to_dict(), cfg.hash()))
    return cells


TUNE_KEYS = ("params", "num_samples", "metric", "mode", "objective", "sampler", "scheduler", "points_to_evaluate",
             "num_samples_per_knob", "arms")
TUNE_ARM_KEYS = ("points_to_evaluate",)


def tuning_spaces(tune: Any, arm_cfgs: dict[str, RunConfig], deltas: dict[str, dict], datasets: list[str],
                  overrides: dict, ablation_id: str, source: str, smoke: bool,
                  dataset_overrides: dict[str, dict] | None = None) -> dict[str, dict]:
    """One validated sweep search space (raw mapping) per arm that has something left to tune.

    ``dataset_overrides`` go into each space minus the keys the arm's delta sets (the delta wins, as in
    the cells)."""
    from mcrlab.tune.params import param_path
    from mcrlab.tune.space import parse_space

    where = f"{source}: tune"
    if not isinstance(tune, dict) or not isinstance(tune.get("params"), dict) or not tune["params"]:
        raise ConfigError(f"{where}: must be a mapping with a non-empty params: section (sweep schema)")
    for key in tune:
        if key not in TUNE_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(TUNE_KEYS)})")
    per_knob = tune.get("num_samples_per_knob")
    if per_knob is not None and (not isinstance(per_knob, int) or isinstance(per_knob, bool) or per_knob < 1):
        raise ConfigError(f"{where}.num_samples_per_knob: must be an integer >= 1, got {per_knob!r}")
    per_arm = tune.get("arms") or {}
    if not isinstance(per_arm, dict):
        raise ConfigError(f"{where}.arms: must be a mapping of arm name -> {{points_to_evaluate: [...]}}")
    for arm, extra in per_arm.items():
        if arm not in arm_cfgs:
            raise ConfigError(f"{where}.arms.{arm}: no such arm (arms: {', '.join(arm_cfgs)})")
        if not isinstance(extra, dict) or set(extra) - set(TUNE_ARM_KEYS):
            raise ConfigError(f"{where}.arms.{arm}: must be a mapping with keys among {', '.join(TUNE_ARM_KEYS)}")
    known = set().union(*(cfg.flat() for cfg in arm_cfgs.values()))
    for pname in tune["params"]:
        path = param_path(str(pname))
        if ".".join(path.split(".")[:2]) not in known:
            raise ConfigError(f"{where}.params.{pname}: no arm has the config key {path}")
    spaces = {}
    for arm, cfg in arm_cfgs.items():
        flat = cfg.flat()
        delta_keys = set(deltas.get(arm, {}))
        params = {}
        for pname, pspec in tune["params"].items():
            top = ".".join(param_path(str(pname)).split(".")[:2])
            if top not in flat or top in delta_keys:
                continue  # e.g. method.lambda_m on a joint arm
            params[pname] = pspec
        if not params:
            continue
        knobs = sum(isinstance(q, dict) and q.get("type") in ("float", "int", "categorical") for q in params.values())
        budget = per_knob * max(1, knobs) if per_knob is not None else tune.get("num_samples", 8)
        space = {"name": f"{ablation_id}-tune-{arm}", "datasets": datasets,
                 "metric": tune.get("metric", "val/acc"), "mode": tune.get("mode", "max"),
                 "objective": {"seeds": 1, "seed": 1000, **(tune.get("objective") or {})},
                 "num_samples": min(2, budget) if smoke else budget,
                 "params": params, "smoke": {"num_samples": 2, "overrides": dict(overrides)}}
        own = {d: {k: v for k, v in ov.items() if k not in delta_keys}
               for d, ov in (dataset_overrides or {}).items() if d in datasets}
        if any(own.values()):
            space["dataset_overrides"] = {d: ov for d, ov in own.items() if ov}
        for key in ("sampler", "scheduler", "points_to_evaluate"):
            if key in tune:
                space[key] = copy.deepcopy(tune[key])
        space.update(copy.deepcopy(per_arm.get(arm, {})))  # the arm's own fixed points
        if "points_to_evaluate" in space:  # the fixed points come first and count toward the budget
            space["points_to_evaluate"] = space["points_to_evaluate"][:space["num_samples"]]
        sampler = space.get("sampler")
        if per_knob is not None and isinstance(sampler, dict) and "n_startup_trials" in sampler:
            # a budget that scales with the knobs keeps at most half of it as random start-up trials
            space["sampler"] = {**sampler, "n_startup_trials": min(sampler["n_startup_trials"],
                                                                   max(1, space["num_samples"] // 2))}
        base_cfg = (cfg.replace(overrides) if overrides else cfg).to_dict()
        del base_cfg["data"]["name"], base_cfg["train"]["seed"]  # the sweep sets them (datasets, objective)
        space["base"] = base_cfg
        parse_space(space, f"{where} (arm {arm})")  # validate now: nothing runs on a bad space
        spaces[arm] = space
    return spaces


def _list(value: Any, where: str, kind: type) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        value = [value]
    for v in value:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ConfigError(f"{where}: expected a list of {kind.__name__}, got {short(v)}")
    if len(set(map(str, value))) != len(value):
        raise ConfigError(f"{where}: duplicate entries")
    return list(value)
