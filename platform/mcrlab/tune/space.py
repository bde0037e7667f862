"""Search spaces: YAML schema -> typed ``SearchSpace`` -> Optuna define-by-run function -> RunConfig.

The language (documented in search_spaces/README.md)::

    params:
      method.lambda_m: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
      method.irrelevant_bound: {type: categorical, choices: [ceb_mse, club]}
      method.club_hidden: {type: int, low: 16, high: 128, log: true, when: {method.irrelevant_bound: club}}
      train.player_lr.0: {type: float, low: 0.1, high: 10, log: true}      # a list element by index
      method.divergence: {fixed: jsd}

A parameter name is the dotted RunConfig path it sets; Optuna sees the same name. Everything a user
can get wrong is caught at load time (``load_space``) with a ``ConfigError`` naming the file and key:
each path is checked against the RunConfig of every method it can apply to, and every bound, choice,
fixed value and point is pushed through ``RunConfig.from_dict`` once. The schema's smaller sections
(objective, sampler, scaling, scheduler, smoke) are dataclasses validated by ``config.build_dataclass``.
Optuna is imported lazily, so importing this module (and the CLI) stays cheap.
"""

from __future__ import annotations

import copy
import math
import statistics
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcrlab.config import (
    SEED_MAX,
    ConfigError,
    RunConfig,
    build_dataclass,
    check_name,
    cut,
    opt,
    read_yaml,
    short,
)
from mcrlab.trials.resources import check_gpu_share
from mcrlab.tune.params import Param, apply_values, check_paths, parse_params, same_value, set_path

if TYPE_CHECKING:
    import optuna

__all__ = ["Objective", "SamplerSpec", "Scaling", "SchedulerSpec", "Smoke", "SearchSpace", "Param",
           "load_space", "parse_space", "compile_space", "DefineByRun", "sample_point", "trial_config",
           "make_sampler", "grid_of", "parse_dataset_overrides", "SAMPLERS", "TOP_LEVEL_KEYS"]

SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2", "grid")
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "gp", "nsga2", "grid")  # Optuna's CMA-ES is single-objective
MAX_OBJECTIVES = 4
METRIC_SPLITS = ("train", "val", "test")
MAX_SAMPLES = 100_000  # trials per dataset
TOP_LEVEL_KEYS = ("name", "description", "datasets", "base", "metric", "mode", "objective", "sampler",
                  "num_samples", "scaling", "scheduler", "smoke", "params", "points_to_evaluate",
                  "dataset_overrides")


# --------------------------------------------------------------------------------------------------
# the small sections (validated by config.build_dataclass from their opt() metadata)


@dataclass(frozen=True)
class Objective:
    seeds: int = opt(1, "training seeds per trial (train.seed = seed, seed+1, ...)", ge=1, le=100)
    aggregate: str = opt("mean", "how the seeds' metrics become the trial's score: mean or lcb",
                         choices=("mean", "lcb"))
    z: float = opt(1.0, "lcb: mean - z * standard error (mean + z * se when mode is min)", gt=0.0, le=100.0)
    seed: int = opt(0, "first training seed", ge=0, le=SEED_MAX - 100)

    def __post_init__(self) -> None:
        if self.aggregate == "lcb" and self.seeds < 2:
            raise ConfigError("aggregate: lcb needs seeds >= 2 (a standard error needs two values)")

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def score(self, values: Sequence[float], mode: str) -> float:
        """The trial's score from its per-seed metric values: mean, or the pessimistic confidence bound.

        ``lcb`` = mean - z * s / sqrt(n) for mode max (mean + z * s / sqrt(n) for min), s the sample std.
        """
        vals = [float(v) for v in values]
        if not vals:
            raise ValueError("score: no values")
        mean = statistics.fmean(vals)
        if self.aggregate == "mean" or len(vals) < 2 or not all(map(math.isfinite, vals)):
            return mean
        se = statistics.stdev(vals) / math.sqrt(len(vals))
        return mean - self.z * se if mode == "max" else mean + self.z * se


@dataclass(frozen=True)
class SamplerSpec:
    name: str = opt("tpe", "Optuna sampler: tpe, random, cmaes, gp, nsga2 or grid", choices=SAMPLERS)
    seed: int | None = opt(0, "sampler seed (null = unseeded)", ge=0, le=SEED_MAX)
    n_startup_trials: int | None = opt(None, "random trials before the model is used (tpe, cmaes, gp)")
    multivariate: bool = opt(False, "tpe: multivariate TPE")
    group: bool = opt(False, "tpe: decompose conditional spaces into groups (needs multivariate)")
    sigma0: float | None = opt(None, "cmaes: initial step size")
    population_size: int | None = opt(None, "nsga2: individuals per generation (Optuna's default: 50)")

    def __post_init__(self) -> None:
        if self.seed is not None and not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed: must be null or in [0, {SEED_MAX}] (a 32-bit seed), got {self.seed}")
        if self.n_startup_trials is not None and not 0 <= self.n_startup_trials <= 1_000_000:
            raise ConfigError("n_startup_trials: must be in [0, 1000000]")
        if self.n_startup_trials is not None and self.name in ("random", "nsga2", "grid"):
            raise ConfigError(f"n_startup_trials: not an option of the {self.name} sampler")
        if (self.multivariate or self.group) and self.name != "tpe":
            raise ConfigError(f"{'group' if self.group else 'multivariate'}: only for the tpe sampler")
        if self.group and not self.multivariate:
            raise ConfigError("group: needs multivariate: true")
        if self.sigma0 is not None and (self.name != "cmaes" or self.sigma0 <= 0):
            raise ConfigError("sigma0: only for the cmaes sampler, and > 0")
        if self.population_size is not None and (self.name != "nsga2" or not 2 <= self.population_size <= 100_000):
            raise ConfigError("population_size: only for the nsga2 sampler, and in [2, 100000]")


@dataclass(frozen=True)
class Scaling:
    workers: int = opt(1, "training workers per trial (> 1 = data-parallel trial)", ge=1, le=4096)
    cpus_per_worker: float = opt(1.0, "CPUs per worker", gt=0.0, le=4096.0)
    gpus_per_worker: float = opt(0.0, "GPUs per worker", ge=0.0, le=64.0)
    max_concurrent: int = opt(0, "trials at once (0 = as many as the cluster's resources allow)", ge=0,
                              le=100_000)
    concurrent_studies: int | str = opt(1, "dataset studies run at once (1 = one after another; auto = as many "
                                        "as the cluster fits, each with its max_concurrent trials)", ge=1,
                                        le=1000)

    def __post_init__(self) -> None:
        check_gpu_share(self.workers, self.gpus_per_worker)
        if isinstance(self.concurrent_studies, str) and self.concurrent_studies != "auto":
            raise ConfigError(f"concurrent_studies: expected an integer >= 1 or auto, got "
                              f"{short(self.concurrent_studies)}")


@dataclass(frozen=True)
class SchedulerSpec:
    name: str = opt("none", "trial scheduler: asha or none", choices=("asha", "none"))
    grace_period: int = opt(1, "asha: epochs before a trial may be stopped", ge=1, le=100_000)
    reduction_factor: float = opt(3.0, "asha: halving rate", gt=1.0, le=1000.0)


@dataclass(frozen=True)
class Smoke:
    num_samples: int = opt(2, "trials per dataset with --smoke", ge=1, le=10_000)
    overrides: dict = opt({}, "config keys pinned with --smoke (win over sampled values)")
    datasets: list = opt([], "datasets with --smoke (empty = the same as the full sweep)")


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. ``params`` are in file order (conditions refer to earlier ones)."""

    name: str
    source: str  # the file it came from (messages and MLflow artifacts)
    datasets: tuple[str, ...]
    base: dict  # nested partial RunConfig, validated; never holds data.name or train.seed
    metric: str
    mode: str
    objective: Objective
    sampler: SamplerSpec
    num_samples: int
    scaling: Scaling
    scheduler: SchedulerSpec
    smoke: Smoke
    params: tuple[Param, ...]
    points_to_evaluate: tuple[dict, ...] = ()
    description: str = ""
    # a multi-objective search: every metric and its mode, in order (metric/mode are the first); () = one
    metrics: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict)  # pinned after sampling (set by smoked())
    dataset_overrides: dict = field(default_factory=dict)  # dataset -> {dotted key: value}, under the sampled params
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # the file as loaded

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def objectives(self) -> tuple[tuple[str, str], ...]:
        """(metric, mode) of every objective; the first is ``(metric, mode)``."""
        if self.metrics:
            return tuple(zip(self.metrics, self.modes, strict=True))
        return ((self.metric, self.mode),)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def searched(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.kind != "fixed")

    def define_by_run(self) -> DefineByRun:
        return compile_space(self)

    def smoked(self) -> SearchSpace:
        """The --smoke variant: fewer trials, pinned overrides (e.g. 2 epochs), maybe fewer datasets."""
        n = self.smoke.num_samples
        grid = grid_of(self.params) if self.sampler.name == "grid" else None
        if grid is not None:  # a smoke run of a grid visits part of it, never a point twice
            n = min(n, math.prod(len(v) for v in grid.values()))
        return replace(self, num_samples=n, points_to_evaluate=self.points_to_evaluate[:n],
                       datasets=tuple(self.smoke.datasets) or self.datasets,
                       overrides={**self.overrides, **self.smoke.overrides})


# --------------------------------------------------------------------------------------------------
# parsing


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; every mistake raises ConfigError naming file and key."""
    raw = read_yaml(path)
    return parse_space(raw, str(path), default_name=Path(path).stem)


def parse_space(raw: Any, source: str = "<space>", default_name: str = "space") -> SearchSpace:
    """Validate an already-loaded mapping (the YAML document) into a ``SearchSpace``."""
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise ConfigError(f"{source}: a search space must be a mapping of keys "
                          f"({', '.join(TOP_LEVEL_KEYS)}), "
                          f"got {got}")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{source}: {key}: unknown top-level key (known: {', '.join(TOP_LEVEL_KEYS)})")

    name = check_name(_string(raw, "name", source, default_name), f"{source}: name")  # it names the sweep folder
    _filterable(name, f"{source}: name")
    description = _string(raw, "description", source, "")
    metrics, modes = _objectives(raw, source)
    metric, mode = metrics[0], modes[0]
    num_samples = raw.get("num_samples", 10)
    if (isinstance(num_samples, bool) or not isinstance(num_samples, int)
            or not 1 <= num_samples <= MAX_SAMPLES):
        raise ConfigError(f"{source}: num_samples: expected an integer >= 1 (at most {MAX_SAMPLES}), "
                          f"got {short(num_samples)}")

    objective = build_dataclass(Objective, raw.get("objective"), source, "objective")
    sampler = _sampler(raw.get("sampler"), source)
    if len(metrics) > 1 and sampler.name not in MULTI_OBJECTIVE_SAMPLERS:
        raise ConfigError(f"{source}: sampler.name: {sampler.name} optimises one objective; with several "
                          f"metrics use one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)} (nsga2: NSGA-II)")
    scaling = build_dataclass(Scaling, raw.get("scaling"), source, "scaling")
    scheduler = _scheduler(raw.get("scheduler"), source)
    base = _base(raw.get("base"), source)
    datasets = _datasets(raw.get("datasets"), base, source)

    params = parse_params(raw.get("params"), source)
    check_paths(params, base, source)
    if len(metrics) > 1 and scheduler.name == "asha":
        raise ConfigError(f"{source}: scheduler: asha ranks trials by one metric and cannot stop trials of a "
                          f"multi-objective search ({len(metrics)} metrics); remove it (scheduler: none)")
    grid = _grid(params, sampler, source)
    if grid is not None and "num_samples" not in raw:
        num_samples = grid
    if grid is not None and num_samples > grid:
        raise ConfigError(f"{source}: num_samples: {num_samples} is more than the grid's {grid} points "
                          f"(a grid visits each point once; leave num_samples out to run the whole grid)")
    space = SearchSpace(name=name, source=source, datasets=datasets, base=base, metric=metric, mode=mode,
                        objective=objective, sampler=sampler, num_samples=num_samples, scaling=scaling,
                        scheduler=scheduler, smoke=Smoke(), params=params, description=description,
                        metrics=metrics if len(metrics) > 1 else (), modes=modes if len(metrics) > 1 else (),
                        raw=copy.deepcopy(raw))
    space = replace(space, dataset_overrides=_dataset_overrides(raw.get("dataset_overrides"), space, source))
    smoke = _smoke(raw.get("smoke"), space, source)
    points = _points(raw.get("points_to_evaluate"), space, source)
    if points and grid is not None:
        raise ConfigError(f"{source}: points_to_evaluate: not used with the grid sampler (it visits every "
                          f"point of the grid already)")
    if len(points) > num_samples:
        raise ConfigError(f"{source}: points_to_evaluate: {len(points)} points but num_samples is "
                          f"{num_samples}; the extra points would never run")
    return replace(space, smoke=smoke, points_to_evaluate=points)


def parse_dataset_overrides(raw: Any, datasets: Sequence[str], source: str,
                            reserved: dict[str, str]) -> dict[str, dict]:
    """The shape of ``dataset_overrides: {dataset: {section.key: value}}``, shared by search spaces and
    ablation specs: a mapping, each key one of ``datasets``, each value a mapping of ``section.key`` names,
    none of them in ``reserved`` (key -> why the caller sets it). Values are checked by the caller, which
    builds each dataset's config."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: dataset_overrides: must be a mapping of dataset -> {{section.key: value}}")
    out: dict[str, dict] = {}
    for dataset, values in raw.items():
        where = f"{source}: dataset_overrides.{cut(dataset)}"
        if dataset not in datasets:
            raise ConfigError(f"{where}: not one of datasets: ({', '.join(map(str, datasets))})")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: must be a mapping of section.key: value (e.g. model.encoder: cnn)")
        for key in values:
            if not isinstance(key, str) or key.count(".") != 1 or not all(key.split(".")):
                raise ConfigError(f"{where}.{cut(key)}: keys must look like section.key (e.g. model.encoder)")
            if key in reserved:
                raise ConfigError(f"{where}.{key}: {reserved[key]}")
        out[dataset] = dict(values)
    return out


def _dataset_overrides(raw: Any, space: SearchSpace, source: str) -> dict[str, dict]:
    """A space's ``dataset_overrides``: what one dataset needs on top of the base (e.g. conv encoders for an
    image dataset), each validated as that dataset's trial config."""
    reserved = dict.fromkeys(("data.name", "train.seed"), "set by the sweep (datasets: and objective.seed)")
    out = parse_dataset_overrides(raw, space.datasets, source, reserved)
    for dataset in out:
        trial_config(replace(space, dataset_overrides=out), dataset, {}, space.objective.seed)  # validates
    return out


def _metric_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a metric name like val/acc, got {short(value)}")
    if value.count("/") < 1 or value.split("/", 1)[0] not in METRIC_SPLITS or not value.split("/", 1)[1]:
        raise ConfigError(f"{where}: '{cut(value)}' must look like split/name with split one of "
                          f"{', '.join(METRIC_SPLITS)} (e.g. val/acc)")
    return value


def _objectives(raw: dict, source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``metric:`` and ``mode:``: one name and one direction, or lists of them (a multi-objective search).

    ``metric: [val/acc, val/head/audio]`` with ``mode: [max, max]`` (or one ``mode: max`` for all).
    """
    metric = raw.get("metric", "val/acc")
    mode = raw.get("mode", "max")
    if isinstance(metric, list):
        if not 1 <= len(metric) <= MAX_OBJECTIVES:
            raise ConfigError(f"{source}: metric: a list of 1 to {MAX_OBJECTIVES} metric names, got "
                              f"{len(metric)}")
        metrics = tuple(_metric_name(m, f"{source}: metric[{i}]") for i, m in enumerate(metric))
        for i, m in enumerate(metrics):
            if metrics.index(m) != i:
                raise ConfigError(f"{source}: metric[{i}]: '{m}' is listed twice")
    else:
        metrics = (_metric_name(metric, f"{source}: metric"),)
    if isinstance(mode, list):
        if not isinstance(metric, list) or len(mode) != len(metrics):
            raise ConfigError(f"{source}: mode: {len(mode)} directions for {len(metrics)} metric(s); give one "
                              f"per metric, in the same order (or one mode for all)")
        modes = tuple(mode)
        label = [f"mode[{i}]" for i in range(len(mode))]
    else:
        modes = (mode,) * len(metrics)
        label = ["mode"] * len(metrics)
    for where, m in zip(label, modes, strict=True):
        if not isinstance(m, str) or m not in ("max", "min"):
            raise ConfigError(f"{source}: {where}: {short(m)} is not one of max, min")
    return metrics, modes


def grid_of(params: Sequence[Param]) -> dict[str, list] | None:
    """The grid sampler's values per searched parameter, or None when one parameter has no finite grid.

    An explicit ``grid:`` list wins; a categorical's choices; an int range without log, every step.
    """
    out: dict[str, list] = {}
    for p in params:
        if p.kind == "fixed":
            continue
        values = p.grid_values()
        if values is None:
            return None
        out[p.name] = values
    return out


def _grid(params: tuple[Param, ...], sampler: SamplerSpec, source: str) -> int | None:
    """For the grid sampler: the number of grid points (every parameter must have a grid), else None."""
    if sampler.name != "grid":
        for p in params:
            if p.grid:
                raise ConfigError(f"{source}: params.{p.name}.grid: grid values are used only by the grid "
                                  f"sampler (sampler: grid); remove them or switch sampler")
        return None
    size = 1
    for p in params:
        if p.when:
            raise ConfigError(f"{source}: params.{p.name}.when: the grid sampler needs a space without "
                              f"conditions (each grid point sets every parameter)")
        if p.kind == "fixed":
            continue
        values = p.grid_values()
        if values is None:
            why = "a log int range" if p.kind == "int" else "a continuous float range"
            raise ConfigError(f"{source}: params.{p.name}: {why} has no grid; give its values as "
                              f"grid: [..] (or use another sampler)")
        size *= len(values)
        if size > MAX_SAMPLES:
            raise ConfigError(f"{source}: params: the grid has more than {MAX_SAMPLES} points")
    return size


def _string(raw: dict, key: str, source: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or (not value and key != "description"):
        raise ConfigError(f"{source}: {key}: expected a non-empty string, got {short(value)}")
    return value


def _filterable(value: str, where: str) -> None:
    """Names and datasets become MLflow tag values that runs are found by (see tracking.filter_value)."""
    from mcrlab.tracking import filter_value

    try:
        filter_value(value)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _sampler(raw: Any, source: str) -> SamplerSpec:
    if isinstance(raw, str):  # shorthand: sampler: random
        raw = {"name": raw}
    if isinstance(raw, dict) and raw.get("name", "tpe") not in SAMPLERS:
        raise ConfigError(f"{source}: sampler.name: unknown sampler {short(raw['name'])} "
                          f"(known: {', '.join(SAMPLERS)})")
    return build_dataclass(SamplerSpec, raw, source, "sampler")


def _scheduler(raw: Any, source: str) -> SchedulerSpec:
    if raw is None or isinstance(raw, str):  # scheduler: none / asha
        raw = {"name": raw or "none"}
    return build_dataclass(SchedulerSpec, raw, source, "scheduler")


def _base(raw: Any, source: str) -> dict:
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: base: must be a mapping of config sections, got {type(raw).__name__}")
    RunConfig.from_dict(raw, f"{source}: base")
    for section, key, instead in (("data", "name", "datasets:"), ("train", "seed", "objective.seed")):
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise ConfigError(f"{source}: base.{section}.{key}: set by the sweep, use {instead} instead")
    return copy.deepcopy(raw)


def _datasets(raw: Any, base: dict, source: str) -> tuple[str, ...]:
    if raw is None:
        return (RunConfig.from_dict(base).data.name,)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: datasets: expected a non-empty list of dataset names, got {short(raw)}")
    from mcrlab import data

    check = getattr(data, "check_data_name", None)
    presets: Collection[str] | None
    try:  # a typo in a synthetic preset is the commonest dataset mistake: catch it before any trial
        from mcrlab.data.synthetic import PRESETS as presets
    except ImportError:
        presets = None
    for i, name in enumerate(raw):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: datasets[{i}]: expected a dataset name, got {short(name)}")
        if raw.index(name) != i:
            raise ConfigError(f"{source}: datasets[{i}]: '{name}' is listed twice")
        _filterable(name, f"{source}: datasets[{i}]")
        preset = name.split(":", 1)[1] if name.startswith("synthetic:") else None
        if presets is not None and preset is not None and preset not in presets:
            raise ConfigError(f"{source}: datasets[{i}]: unknown synthetic preset '{preset}' "
                              f"(known: {', '.join(presets)})")
        if check is not None:
            try:
                check(name)
            except ConfigError as err:
                raise ConfigError(f"{source}: datasets[{i}]: {err}") from None
    return tuple(raw)


def _smoke(raw: Any, space: SearchSpace, source: str) -> Smoke:
    smoke = build_dataclass(Smoke, raw, source, "smoke")
    for key, value in smoke.overrides.items():
        where = f"{source}: smoke.overrides.{key}"
        if not isinstance(key, str) or key.count(".") < 1:
            raise ConfigError(f"{where}: the key must be a config path like train.epochs")
        raw_cfg = copy.deepcopy(space.base)
        try:
            set_path(raw_cfg, key, value)
            RunConfig.from_dict(raw_cfg, "<p>")
        except ConfigError as err:
            raise ConfigError(f"{where}: {str(err).replace('<p>: ', '')}") from None
    if smoke.datasets:
        _datasets(smoke.datasets, space.base, f"{source}: smoke")
    return smoke


def _points(raw: Any, space: SearchSpace, source: str) -> tuple[dict, ...]:
    """Each point sets searched params to allowed values; a conditional param needs its condition."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: points_to_evaluate: expected a list of mappings, got {short(raw)}")
    by_name = {p.name: p for p in space.params}
    out = []
    for i, point in enumerate(raw):
        where = f"{source}: points_to_evaluate[{i}]"
        if not isinstance(point, dict) or not point:
            raise ConfigError(f"{where}: expected a non-empty mapping of parameter: value, got {short(point)}")
        for key, value in point.items():
            p = by_name.get(key)
            if p is None:
                raise ConfigError(f"{where}.{key}: not a parameter of this space "
                                  f"(searched: {', '.join(q.name for q in space.searched)})")
            if p.kind == "fixed":
                raise ConfigError(f"{where}.{key}: is fixed to {short(p.value)}; a point cannot set it")
            if not p.contains(value):
                raise ConfigError(f"{where}.{key}: {short(value)} is outside the parameter's {p.describe()}")
            for cond, allowed in p.when.items():
                if cond not in point:
                    raise ConfigError(f"{where}.{key}: conditional on {cond}, which the point must set too")
                if not any(same_value(point[cond], a) for a in allowed):
                    raise ConfigError(f"{where}.{key}: its condition {cond} in {list(allowed)} does not hold "
                                      f"in this point ({cond}={short(point[cond])})")
        try:
            trial_config(space, space.datasets[0], _with_fixed(space, point), space.objective.seed)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        out.append(dict(point))
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# compilation and use


def _with_fixed(space: SearchSpace, sampled: dict) -> dict:
    """``sampled`` plus the fixed values whose conditions hold in it (keyed by parameter name)."""
    values = dict(sampled)
    for p in space.params:
        if p.kind == "fixed" and p.active(values):
            values[p.name] = p.value
    return values


class DefineByRun:
    """The Optuna define-by-run function of a space: suggests the active params in file order and
    returns the active fixed values. A plain picklable object (Tuner checkpoints pickle the searcher).

    Ray Tune's ``OptunaSearch(space=fn, metric=..., mode=...)`` merges the suggested and the returned
    values into the trial's flat config ``{"method.lambda_m": 0.01, ...}`` (dotted names stay flat).
    """

    def __init__(self, params: tuple[Param, ...]):
        self.params = params

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for p in self.params:
            if not p.active(values):
                continue
            if p.kind == "fixed":
                values[p.name] = constants[p.name] = copy.deepcopy(p.value)
            elif p.kind == "float":
                values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
            elif p.kind == "int":
                values[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step or 1)
            else:
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        return constants


def compile_space(space: SearchSpace) -> DefineByRun:
    """``define_by_run(trial) -> dict`` for Optuna / Ray Tune's OptunaSearch (see ``DefineByRun``)."""
    return DefineByRun(space.params)


def sample_point(study: optuna.Study, space: SearchSpace) -> tuple[optuna.Trial, dict]:
    """Ask ``study`` for a trial and return it with its full point (suggested + fixed values)."""
    trial = study.ask()
    constants = compile_space(space)(trial)
    return trial, {**trial.params, **constants}


def trial_config(space: SearchSpace, dataset: str, sampled: dict, seed: int) -> RunConfig:
    """base + dataset (+ its dataset_overrides) + sampled params (+ fixed values, + smoke overrides) + seed
    -> validated RunConfig."""
    by_name = {p.name: p for p in space.params}
    for key in sampled:
        if key not in by_name:
            raise ConfigError(f"{space.source}: trial parameter '{key}' is not a parameter of this space")
    values: dict[str, Any] = {}
    for name, value in _with_fixed(space, sampled).items():
        path = by_name[name].path
        if path in values:  # labelled entries of one path are exclusive; a hand-made point may not be
            raise ConfigError(f"{space.source}: {name}: {path} is set twice in this trial")
        values[path] = value
    raw = copy.deepcopy(space.base)
    raw.setdefault("data", {})["name"] = dataset
    raw.setdefault("train", {})["seed"] = seed
    apply_values(raw, space.dataset_overrides.get(dataset, {}), space.source)
    apply_values(raw, values, space.source)
    apply_values(raw, space.overrides, space.source)
    return RunConfig.from_dict(raw, f"{space.source} [dataset {dataset}]")


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """A fresh Optuna sampler for one study (one per dataset), seeded from ``sampler.seed``."""
    import optuna

    s = space.sampler
    startup = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.name == "grid":
        grid = grid_of(space.params)
        assert grid is not None  # parse_space refused a grid sampler over a space without a grid
        from mcrlab.tune.grid import QuietGridSampler

        return QuietGridSampler(grid, seed=s.seed)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, **({} if s.population_size is None else
                                                              {"population_size": s.population_size}))
    if s.name == "tpe":
        with warnings.catch_warnings():  # multivariate/group are "experimental" since optuna 2; documented
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=s.seed, multivariate=s.multivariate, group=s.group,
                                              **startup)
    # cmaes and gp model only the numeric / fixed part of the space; the rest is sampled independently
    # (seeded from the same seed), which is expected for conditional spaces, so do not warn every trial
    if s.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed, sigma0=s.sigma0, warn_independent_sampling=False,
                                            **startup)
    return optuna.samplers.GPSampler(seed=s.seed, warn_independent_sampling=False, **startup)

