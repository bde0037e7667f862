"""``mcrlab check SPACE``: validate a search-space file and show what it samples, without running anything.

It loads the file (every static check), compiles it, asks an in-memory Optuna study with the space's
own seeded sampler for N points (the ``points_to_evaluate`` first), and builds each point's RunConfig
for every dataset, printing the config hashes. Exit code 0 when all is well, 2 on any user mistake.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any

from mcrlab.config import ConfigError, cut

__all__ = ["register", "check_space", "main", "preflight", "reported_metrics", "present_info_types"]

# what fit reports (engine: train.fit / evaluate / _final_metrics); a test runs fit and compares
SPLIT_METRICS = ("acc", "f1")
PER_MODALITY = ("head", "D")


def reported_metrics(modalities: list[str], info_types: list[str] | None, probes: bool) -> set[str]:
    """The val/ and test/ metric names a trial reports for a dataset with these modalities (and
    information types), ``probes`` when ``train.probe_epochs > 0``. ``train/*`` names depend on the
    method's step logs and are not listed here."""
    names = {"val/best_acc", "train/loss"}
    for split in ("val", "test"):
        names |= {f"{split}/{m}" for m in SPLIT_METRICS}
        names |= {f"{split}/{kind}/{m}" for kind in PER_MODALITY for m in modalities}
    if probes:
        names |= {f"test/probe/{m}" for m in modalities}
    names |= {f"test/acc_type/{t}" for t in info_types or []}
    return names


def present_info_types(data: Any) -> list[str]:
    """Information types with samples in the test split (``test/acc_type/<t>`` is reported for those)."""
    import numpy as np

    types = data.splits["test"].info_type
    if types is None or not data.info_types:
        return []
    present = set(np.unique(np.asarray(types)).tolist())
    return [t for k, t in enumerate(data.info_types) if k in present]


def preflight(space: Any, layouts: dict | None = None) -> dict[str, str]:
    """Load every dataset of ``space`` and check its metric against what training reports for it, and
    build the base configuration's model against its shapes, before anything starts (no Ray, no MLflow,
    nothing written). Returns ``{dataset: fingerprint}``; fills ``layouts`` (when given) with
    ``{dataset: (shapes, num_classes)}``.

    A missing shard folder, an unknown mfeat view, a typo in ``metric:`` (``val/accuracy``), an encoder
    that cannot take a modality's shape, a plug-in that does not import or breaks its contract, or a count
    of ``model.encoders`` that does not match the modalities fails here with one ConfigError line instead
    of after every trial has trained.
    """
    from mcrlab.data import load_dataset
    from mcrlab.engine.preflight import check_model_fits
    from mcrlab.tune.space import trial_config

    fingerprints = {}
    probes_searched = any(p.path == "train.probe_epochs" for p in space.params)
    for i, dataset in enumerate(space.datasets):
        where = f"{space.source}: datasets[{i}] ({cut(dataset)})"
        try:
            cfg = trial_config(space, dataset, {}, space.objective.seed)
            data = load_dataset(cfg.data)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        except OSError as err:
            raise ConfigError(f"{where}: cannot read it: {err.strerror or type(err).__name__}") from None
        fingerprints[dataset] = data.fingerprint()
        layout = ([tuple(sh) for sh in data.shapes], data.num_classes)
        try:
            check_model_fits(cfg, layout)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        if layouts is not None:
            layouts[dataset] = layout
        known = reported_metrics(list(data.modalities), present_info_types(data),
                                 cfg.train.probe_epochs > 0 or probes_searched)
        for k, (metric, _) in enumerate(space.objectives):
            split = metric.split("/", 1)[0]
            if split == "train" or metric in known:
                continue  # train/*: method-dependent step logs
            close = difflib.get_close_matches(metric, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            key = f"metric[{k}]" if space.multi_objective else "metric"
            raise ConfigError(f"{space.source}: {key}: '{cut(metric)}' is not reported by training on "
                              f"{cut(dataset)}{hint}; on {split}: {cut(', '.join(sorted(n for n in known if n.startswith(split))), 120)}")
    return fingerprints


def check_init_runs(space: Any, layouts: dict, uri: str) -> None:
    """The base configuration's ``model.init=<MLflow run id>`` against the store at ``uri``, per dataset
    (``layouts`` from ``preflight``): ConfigError naming the space, the dataset and ``model.init``."""
    from mcrlab.trials.init_source import check_run_init
    from mcrlab.tune.space import trial_config

    for i, dataset in enumerate(space.datasets):
        cfg = trial_config(space, dataset, {}, space.objective.seed)
        try:
            check_run_init(cfg, layouts[dataset], uri)
        except ConfigError as err:
            raise ConfigError(f"{space.source}: datasets[{i}] ({cut(dataset)}): {err}") from None


def check_space(path: str, n: int = 5, smoke: bool = False, out: Any = None,
                tracking_uri: str | None = None, check_uri: bool = True) -> list[dict]:
    """Load, compile and sample ``n`` points; print them; return ``[{"params", "hashes"}]``.

    Also loads every dataset, checks the metric against what training reports, and checks the form of
    the tracking URI (``tracking_uri``, else $MLFLOW_TRACKING_URI; a server must answer). Raises
    ConfigError for any mistake (including a sampled point that builds no RunConfig). Creates nothing.
    ``check_uri=False`` leaves the tracking URI alone (``mcrlab submit``: the job uses the cluster's).
    """
    import os

    import optuna

    from mcrlab.engine.preflight import check_model_fits
    from mcrlab.tracking import check_tracking, check_tracking_uri, resolve_tracking_uri
    from mcrlab.tune.space import load_space, make_sampler, sample_point, trial_config

    out = out or sys.stdout
    space = load_space(path)
    if smoke:
        space = space.smoked()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and check_uri:
        uri = resolve_tracking_uri(uri)
        (check_tracking if uri.startswith(("http://", "https://")) else check_tracking_uri)(uri)
    layouts: dict = {}  # each sampled point's model is built against its dataset's shapes below
    preflight(space, layouts)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize" if m == "max" else "minimize" for _, m in space.objectives],
                                sampler=make_sampler(space))
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)

    print(f"{space.source}: ok: '{space.name}'{' (smoke)' if smoke else ''}", file=out)
    metrics = ", ".join(f"{m} ({d})" for m, d in space.objectives)
    print(f"  datasets: {', '.join(space.datasets)}   {'objectives' if space.multi_objective else 'metric'}: "
          f"{metrics}   "
          f"samples: {space.num_samples} per dataset", file=out)
    obj = space.objective
    print(f"  objective: {obj.aggregate} over {obj.seeds} seed(s) {obj.seed_list()}   sampler: "
          f"{space.sampler.name} (seed {space.sampler.seed})   scheduler: {space.scheduler.name}   "
          f"workers/trial: {space.scaling.workers}", file=out)
    for p in space.params:
        cond = " when " + ", ".join(f"{k} in {list(v)}" for k, v in p.when.items()) if p.when else ""
        print(f"  {p.name}: {p.describe()}{cond}", file=out)
    rows = []
    if space.sampler.name == "grid":  # a grid has num_samples points; asking more would repeat one
        n = min(n, space.num_samples)
    for i in range(n):
        _, point = sample_point(study, space)
        hashes = {}
        for ds in space.datasets:
            try:
                cfg = trial_config(space, ds, point, obj.seed)
                check_model_fits(cfg, layouts[ds])
            except ConfigError as err:
                raise ConfigError(f"{space.source}: sampled point {i} {point} builds no valid config: "
                                  f"{err}") from None
            hashes[ds] = cfg.hash()
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
        print(f"  [{i}] {shown}", file=out)
        print(f"      config hash: {'  '.join(f'{ds}={h}' for ds, h in hashes.items())}", file=out)
        rows.append({"params": point, "hashes": hashes})
    return rows


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _handler(args: argparse.Namespace) -> int:
    try:
        check_space(args.space, n=args.num_points, smoke=args.smoke, tracking_uri=args.tracking_uri)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _points(text: str) -> int:
    n = int(text)
    if not 0 <= n <= 10_000:
        raise argparse.ArgumentTypeError("expected 0 to 10000")
    return n


def register(sub: Any) -> None:
    """Add ``check SPACE [-n N] [--smoke]`` to the CLI's sub-parsers."""
    p = sub.add_parser("check", help="validate a search-space YAML without running it",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("space", help="search-space YAML file (search_spaces/*.yaml)")
    p.add_argument("-n", "--num-points", type=_points, default=5, help="points to sample and show (default 5)")
    p.add_argument("--smoke", action="store_true", help="check the --smoke variant of the space")
    p.add_argument("--tracking-uri", default=None,
                   help="also check this MLflow tracking URI (default: $MLFLOW_TRACKING_URI when set)")
    p.set_defaults(func=_handler)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m mcrlab.tune.check SPACE``) until the CLI wires ``register``."""
    parser = argparse.ArgumentParser(prog="mcrlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["check", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
