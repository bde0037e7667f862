"""The ``params:`` section of a search space: one ``Param`` per dotted RunConfig path, and its checks.

A path is ``section.key`` (``method.lambda_m``) or ``section.key.N`` for element N of a list field
(``train.player_lr.0``). Each path is checked against the RunConfig of every method it can apply to:
when ``method.name`` is itself searched, a ``method.*`` parameter applies to the method choices its
``when:`` conditions (followed through their own conditions) allow.

A parameter's name is its path, or ``path@label`` when one path needs several entries, e.g. a
different range of ``method.alpha`` for each method (``method.alpha@ogm_ge``, ``method.alpha@agm``);
such entries must have ``when:`` conditions that exclude each other. Optuna sees the name.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from mcrlab.config import ConfigError, RunConfig, build_dataclass, cut, field_default, short

__all__ = ["Param", "parse_params", "check_paths", "set_path", "apply_values", "same_value"]

KINDS = ("float", "int", "categorical")
PATH_RE = re.compile(r"^(data|model|method|train)\.([A-Za-z_][A-Za-z0-9_]*)(?:\.(\d+))?$")
LABEL_RE = re.compile(r"^[A-Za-z0-9_]+$")
KEYS = {"float": {"type", "low", "high", "log", "step", "when", "grid"},
        "int": {"type", "low", "high", "log", "step", "when", "grid"},
        "categorical": {"type", "choices", "when"},
        "fixed": {"type", "fixed", "when"}}
RESERVED = {"data.name": "list datasets under datasets:",
            "train.seed": "use objective.seeds / objective.seed"}
_MISSING = object()
MAX_GRID = 10_000  # values of one parameter's grid:
MAX_INDEX = 63  # list elements (one per modality): an index is checked before any list is padded to it


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps true apart from 1 (YAML scalars compared as Optuna would store them)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def param_path(name: str) -> str:
    """The config path a ``params:`` entry sets: its name without an ``@label`` (``method.alpha@ogm`` ->
    ``method.alpha``). Sweeps and ablations' ``tune:`` sections read names through this one function."""
    return name.split("@", 1)[0]


@dataclass(frozen=True, eq=False)
class Param:
    """One entry of ``params:``. ``when`` maps earlier categorical params to their allowed values (AND)."""

    name: str  # as written in params: and seen by Optuna: the path, or path@label
    kind: str  # float | int | categorical | fixed
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    value: Any = None  # the fixed value
    when: dict[str, tuple] = field(default_factory=dict)  # keyed by parameter name
    grid: tuple = ()  # explicit values for the grid sampler (float and int ranges)

    @property
    def path(self) -> str:
        """The config path this parameter sets (the name without its @label)."""
        return param_path(self.name)

    def active(self, values: dict[str, Any]) -> bool:
        """Whether every condition holds in ``values`` (an absent, i.e. inactive, parent fails it)."""
        return all(any(same_value(values.get(k, _MISSING), a) for a in allowed)
                   for k, allowed in self.when.items())

    def contains(self, v: Any) -> bool:
        if self.kind == "categorical":
            return any(same_value(v, c) for c in self.choices)
        if self.kind == "fixed":
            return same_value(v, self.value)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.kind == "int" and
                                                                      not isinstance(v, int)):
            return False
        assert self.low is not None and self.high is not None  # a float/int range always has both ends
        if self.kind == "int" and self.step is not None and (v - self.low) % self.step:
            return False  # off the step lattice: Optuna's IntDistribution would not contain it
        return self.low <= v <= self.high

    def grid_values(self) -> list | None:
        """The grid sampler's values: ``grid:``, the choices, or every step of a non-log int range; None
        for a range with no finite grid (float, log int)."""
        if self.grid:
            return list(self.grid)
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            assert isinstance(self.low, int) and isinstance(self.high, int)
            return list(range(self.low, self.high + 1, int(self.step or 1)))
        return None

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"choices {list(self.choices)}"
        if self.kind == "fixed":
            return f"fixed value {short(self.value)}"
        return f"{'log ' if self.log else ''}range [{self.low}, {self.high}] ({self.kind})"

    def probes(self) -> list[tuple[str, Any]]:
        """The values pushed through RunConfig at load time: the ends of a range, each choice, the fixed."""
        if self.kind == "categorical":
            return [("choice", c) for c in self.choices]
        if self.kind == "fixed":
            return [("fixed value", self.value)]
        assert self.low is not None and self.high is not None  # a float/int range always has both ends
        if self.grid:
            return [("grid value", v) for v in self.grid]
        if self.kind == "float":  # as Optuna will suggest them: floats, even when written 1 and 8
            return [("low", float(self.low)), ("high", float(self.high))]
        return [("low", self.low), ("high", self.high)]


# --------------------------------------------------------------------------------------------------
# parsing one entry


def _number(spec: dict, key: str, where: str, integer: bool) -> Any:
    if key not in spec:
        raise ConfigError(f"{where}.{key}: missing (a {'int' if integer else 'float'} range needs low "
                          f"and high)")
    v = spec[key]
    if integer and (isinstance(v, bool) or not isinstance(v, int)):
        raise ConfigError(f"{where}.{key}: expected an integer, got {short(v)}")
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**53:
        raise ConfigError(f"{where}.{key}: {short(v)} is too large (at most 2**53 in magnitude)")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}.{key}: expected a finite number, got {short(v)} "
                          f"(YAML reads 1e-3 as a string: write 1.0e-3)")
    return v


def _index_ok(path: str, where: str) -> None:
    m = PATH_RE.match(path)
    index = m.group(3) if m else None
    if index is not None and (len(index) > 3 or int(index) > MAX_INDEX):
        raise ConfigError(f"{where}: list index {cut(index, 20)} is too large (at most {MAX_INDEX})")


def _entry(name: Any, spec: Any, source: str, earlier: dict[str, Param]) -> Param:
    where = f"{source}: params.{cut(name)}"
    path, _, label = name.partition("@") if isinstance(name, str) else (name, "", "")
    if isinstance(path, str) and PATH_RE.match(path):
        _index_ok(path, where)
    if not isinstance(path, str) or not PATH_RE.match(path) or ("@" in name and not LABEL_RE.match(label)):
        raise ConfigError(f"{source}: params.{cut(name)}: a parameter name is a config path like method.lambda_m "
                          f"or train.player_lr.0 (sections: data, model, method, train), optionally "
                          f"followed by @label")
    if path == "method.name" and label:
        raise ConfigError(f"{where}: method.name takes no @label")
    if path in RESERVED:
        raise ConfigError(f"{where}: cannot be searched here, {RESERVED[path]}")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: float, low: .., high: ..}} or "
                          f"{{fixed: value}}, got {short(spec)}")
    kind = "fixed" if "fixed" in spec else spec.get("type")
    if kind not in KINDS and kind != "fixed":
        raise ConfigError(f"{where}.type: {'missing' if kind is None else f'unknown type {short(kind)}'} "
                          f"(known: float, int, categorical, or {{fixed: value}})")
    if kind == "fixed" and spec.get("type", "fixed") != "fixed":
        raise ConfigError(f"{where}: has both type: {spec['type']} and fixed:; keep one")
    for key in spec:
        if key not in KEYS[kind]:
            raise ConfigError(f"{where}.{key}: unknown key for a {kind} parameter "
                              f"(known: {', '.join(sorted(KEYS[kind]))})")
    when = _when(spec.get("when"), where, earlier)
    if kind == "fixed":
        return Param(name, "fixed", value=copy.deepcopy(spec["fixed"]), when=when)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list, got {short(choices)}")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise ConfigError(f"{where}.choices: {short(c)} is not a scalar (Optuna stores only "
                                  f"null, bool, int, float, string choices)")
            if sum(same_value(c, d) for d in choices) > 1:
                raise ConfigError(f"{where}.choices: {short(c)} is listed twice")
        if path == "method.name" and when:
            raise ConfigError(f"{where}.when: method.name cannot be conditional")
        return Param(name, "categorical", choices=tuple(choices), when=when)
    integer = kind == "int"
    grid = _grid_list(spec, where, integer)
    if grid:  # the range defaults to the grid's ends
        spec = {"low": min(grid), "high": max(grid), **spec}
    low, high = _number(spec, "low", where, integer), _number(spec, "high", where, integer)
    if low > high:
        raise ConfigError(f"{where}: low ({low}) must be <= high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {short(log)}")
    if log and (low <= 0 or (integer and low < 1)):
        raise ConfigError(f"{where}.low: a log range needs low > 0{' (>= 1 for int)' if integer else ''}, "
                          f"got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(spec, "step", where, integer)
        if step <= 0 or log:
            raise ConfigError(f"{where}.step: must be > 0 and cannot be combined with log: true")
    param = Param(name, kind, low=low, high=high, log=log, step=step, when=when, grid=grid)
    for v in grid:
        if not param.contains(v):
            raise ConfigError(f"{where}.grid: {short(v)} is outside the parameter's {param.describe()}"
                              f"{f' (step {step})' if step is not None else ''}")
    return param


def _grid_list(spec: dict, where: str, integer: bool) -> tuple:
    """``grid: [values]`` of a float or int parameter: distinct finite numbers (floats stay floats)."""
    if "grid" not in spec:
        return ()
    raw = spec["grid"]
    if not isinstance(raw, list) or not raw or len(raw) > MAX_GRID:
        raise ConfigError(f"{where}.grid: expected a non-empty list of at most {MAX_GRID} values, "
                          f"got {short(raw)}")
    out: list = []
    for v in raw:
        v = _number({"grid": v}, "grid", where, integer)
        v = v if integer else float(v)
        if v in out:
            raise ConfigError(f"{where}.grid: {short(v)} is listed twice")
        out.append(v)
    return tuple(out)


def _when(raw: Any, where: str, earlier: dict[str, Param]) -> dict[str, tuple]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}.when: expected a mapping {{earlier_param: value or [values]}}, "
                          f"got {short(raw)}")
    out = {}
    for key, allowed in raw.items():
        parent = earlier.get(key)
        if parent is None:
            raise ConfigError(f"{where}.when.{key}: no categorical parameter '{key}' is defined before it")
        if parent.kind != "categorical":
            raise ConfigError(f"{where}.when.{key}: conditions must refer to a categorical parameter; "
                              f"'{key}' is {parent.kind}")
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if not allowed:
            raise ConfigError(f"{where}.when.{key}: empty list of values, the condition could never hold")
        for a in allowed:
            if not parent.contains(a):
                raise ConfigError(f"{where}.when.{key}: {short(a)} is not one of its choices "
                                  f"{list(parent.choices)}")
        out[key] = tuple(allowed)
    return out


def parse_params(raw: Any, source: str) -> tuple[Param, ...]:
    """Parse ``params:`` in file order; conditions may refer only to earlier categorical params."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: params: expected a non-empty mapping of config path -> parameter, "
                          f"got {short(raw)}")
    earlier: dict[str, Param] = {}
    for name, spec in raw.items():
        earlier[name] = _entry(name, spec, source, earlier)
    params = tuple(earlier.values())
    if all(p.kind == "fixed" for p in params):
        raise ConfigError(f"{source}: params: every parameter is fixed, nothing would be searched")
    return params


# --------------------------------------------------------------------------------------------------
# checking paths against the RunConfig, per method


def _section_cls(section: str, method: str) -> type:
    from mcrlab.methods import REGISTRY

    return REGISTRY[method].Params if section == "method" else RunConfig.SECTIONS[section]


def _default_list(section: str, key: str, method: str) -> list:
    f = {f.name: f for f in dataclasses.fields(_section_cls(section, method))}[key]
    return list(field_default(f))


def check_paths(params: tuple[Param, ...], base: dict, source: str) -> None:
    """Every path exists for every method it applies to, and every probe value builds a RunConfig."""
    from mcrlab.methods import REGISTRY

    by_name = {p.name: p for p in params}
    paths = {p.path for p in params}
    mp = by_name.get("method.name")
    base_method = (base.get("method") or {}).get("name", "mcr")
    if mp is not None and mp.kind == "categorical":
        for c in mp.choices:
            if c not in REGISTRY:
                raise ConfigError(f"{source}: params.method.name.choices: unknown method {short(c)} "
                                  f"(known: {', '.join(sorted(REGISTRY))})")
        extra = sorted(set(base.get("method") or {}) - {"name"})
        if extra:
            raise ConfigError(f"{source}: base.method.{extra[0]}: method.name is searched, so method "
                              f"parameters belong in params: with when: {{method.name: ...}}")
    methods: dict[str, list[str]] = {}
    for p in params:
        if mp is None or mp.kind == "fixed":
            allowed = [mp.value if mp is not None else base_method]
        else:
            allowed = list(mp.choices)
            for parent, values in p.when.items():
                keep = values if parent == "method.name" else methods[parent]
                allowed = [m for m in allowed if m in keep]
        if not allowed:
            raise ConfigError(f"{source}: params.{p.name}.when: its conditions can never hold together")
        methods[p.name] = allowed
        for q in params[: params.index(p)]:
            if q.path == p.path and not _exclusive(p, q, methods):
                raise ConfigError(f"{source}: params.{p.name}: sets {p.path} like params.{q.name}; give "
                                  f"them when: conditions that exclude each other")
        _check_one(p, allowed, base, paths, source)


def _exclusive(p: Param, q: Param, methods: dict[str, list[str]]) -> bool:
    """Whether p and q can never be active together (disjoint values of a shared condition or methods)."""
    if not set(methods[p.name]) & set(methods[q.name]):
        return True
    return any(not {*p.when[k]} & {*q.when[k]} for k in p.when.keys() & q.when.keys())


def _check_one(p: Param, methods: list[str], base: dict, paths: set[str], source: str) -> None:
    from mcrlab.methods import REGISTRY

    where = f"{source}: params.{p.name}"
    match = PATH_RE.match(p.path)
    assert match is not None  # parse_params accepts only names whose path matches PATH_RE
    section, key, index = match.groups()
    if index is not None and f"{section}.{key}" in paths:
        raise ConfigError(f"{where}: the whole list {section}.{key} is a parameter too; keep one")
    for m in methods if p.path != "method.name" else [methods[0]]:
        cls = _section_cls(section, m)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        if section == "method" and key != "name" and key not in names:
            having = [n for n in sorted(REGISTRY)
                      if key in {f.name for f in dataclasses.fields(REGISTRY[n].Params)}]
            hint = f"; add when: {{method.name: {having}}}" if having and len(methods) > 1 else ""
            raise ConfigError(f"{where}: '{key}' is not a parameter of method '{m}' "
                              f"(its parameters: {', '.join(names) or 'none'}){hint}")
        if section != "method" and key not in names:
            raise ConfigError(f"{where}: '{key}' is not a key of {section} (known: {', '.join(names)})")
        key_type = typing.get_type_hints(cls)[key] if key in names else None
        if p.kind == "float" and index is None and key_type is int:
            raise ConfigError(f"{where}: {section}.{key} is an integer; use type: int")
        if index is not None:
            if key_type is not list and typing.get_origin(key_type) is not list:
                raise ConfigError(f"{where}: {section}.{key} is not a list; an index applies only to lists")
            current = _current_list(base, section, key, m)
            missing = [j for j in range(len(current), int(index)) if f"{section}.{key}.{j}" not in paths]
            if missing:
                raise ConfigError(f"{where}: {section}.{key} has {len(current)} element(s) before the "
                                  f"search; "
                                  f"set {section}.{key}.{missing[0]} too (as a parameter or fixed)")
        for label, value in p.probes():
            raw = copy.deepcopy(base)
            if (raw.get("method") or {}).get("name", "mcr") != m:
                raw["method"] = {"name": m}
            try:
                set_path(raw, p.path, value, pad=True)
                _build_section(raw, section, key, m)
            except ConfigError as err:
                raise ConfigError(f"{where}: {label} {short(value)} is rejected"
                                  f"{f' for method {m}' if len(methods) > 1 else ''}: "
                                  f"{str(err).replace('<p>: ', '')}") from None


def _build_section(raw: dict, section: str, key: str, method: str) -> None:
    """Validate one section of a raw config (4x cheaper than a whole RunConfig; same messages)."""
    if section == "method" and key == "name":
        RunConfig.from_dict(raw, "<p>")
        return
    sec = dict(raw.get(section) or {})
    if section == "method":
        sec.pop("name", None)
    build_dataclass(_section_cls(section, method), sec, "<p>", section)


def _current_list(raw: dict, section: str, key: str, method: str) -> list:
    sec = raw.get(section) or {}
    return list(sec[key]) if isinstance(sec.get(key), list) else _default_list(section, key, method)


# --------------------------------------------------------------------------------------------------
# writing values into a nested raw config


def set_path(raw: dict, path: str, value: Any, source: str = "<space>", pad: bool = False) -> None:
    """Set a dotted path (``train.lr``, ``train.player_lr.0``) in a nested raw config dict.

    An element one past the end of a list is appended; further ones need ``pad`` (validation probes
    only: the gap is filled with the same value) or raise ConfigError.
    """
    m = PATH_RE.match(path) if isinstance(path, str) else None
    if m is None:
        raise ConfigError(f"{source}: {cut(path)}: not a config path like train.epochs or train.player_lr.0")
    _index_ok(path, f"{source}: {path}")
    section, key, index = m.groups()
    sec = raw.setdefault(section, {})
    if not isinstance(sec, dict):
        raise ConfigError(f"{source}: {section}: must be a mapping")
    value = copy.deepcopy(value)
    if section == "method" and key == "name":
        if sec.get("name", "mcr") != value:
            sec.clear()  # switching method: the old method's parameters do not carry over
        sec["name"] = value
        return
    if index is None:
        sec[key] = value
        return
    method = (raw.get("method") or {}).get("name", "mcr")
    try:
        current = _current_list(raw, section, key, method)
    except (KeyError, TypeError):
        raise ConfigError(f"{source}: {path}: no list field {section}.{key}") from None
    i = int(index)
    if i > len(current) and not pad:
        raise ConfigError(f"{source}: {path}: the list has {len(current)} element(s); set the ones before "
                          f"element {i} too")
    current.extend([value] * (i + 1 - len(current)))
    current[i] = value
    sec[key] = current


def apply_values(raw: dict, values: dict[str, Any], source: str = "<space>") -> None:
    """Set many paths: method.name first (a switch clears method keys), list elements in index order."""
    def order(key: str) -> tuple:
        m = PATH_RE.match(key) if isinstance(key, str) else None
        index = int(m.group(3)) if m and m.group(3) is not None else -1
        return (key != "method.name", index)

    for key in sorted(values, key=order):
        set_path(raw, key, values[key], source)
