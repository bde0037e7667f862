"""``mcrlab check SPACE``: validate a search-space file and show what it samples, without running anything.

It loads the file (every static check), compiles it, asks an in-memory Optuna study with the space's
own seeded sampler for N points (the ``points_to_evaluate`` first), and builds each point's RunConfig
for every dataset, printing the config hashes. Exit code 0 when all is well, 2 on any user mistake.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mcrlab.config import ConfigError

__all__ = ["register", "check_space", "main"]


def check_space(path: str, n: int = 5, smoke: bool = False, out: Any = None) -> list[dict]:
    """Load, compile and sample ``n`` points; print them; return ``[{"params", "hashes"}]``.

    Raises ConfigError for any mistake in the file (including a sampled point that builds no RunConfig).
    """
    import optuna

    from mcrlab.engine.preflight import check_model_fits, dataset_layout
    from mcrlab.tune.space import load_space, make_sampler, sample_point, trial_config

    out = out or sys.stdout
    space = load_space(path)
    if smoke:
        space = space.smoked()
    layouts = {}  # each point's model is built against its dataset's shapes (a folder not here is skipped)
    for ds in space.datasets:
        try:
            layouts[ds] = dataset_layout(trial_config(space, ds, {}, space.objective.seed).data, missing_ok=True)
        except ConfigError as err:
            raise ConfigError(f"{space.source}: {err}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize",
                                sampler=make_sampler(space))
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)

    print(f"{space.source}: ok: '{space.name}'{' (smoke)' if smoke else ''}", file=out)
    print(f"  datasets: {', '.join(space.datasets)}   metric: {space.metric} ({space.mode})   "
          f"samples: {space.num_samples} per dataset", file=out)
    obj = space.objective
    print(f"  objective: {obj.aggregate} over {obj.seeds} seed(s) {obj.seed_list()}   sampler: "
          f"{space.sampler.name} (seed {space.sampler.seed})   scheduler: {space.scheduler.name}   "
          f"workers/trial: {space.scaling.workers}", file=out)
    for p in space.params:
        cond = " when " + ", ".join(f"{k} in {list(v)}" for k, v in p.when.items()) if p.when else ""
        print(f"  {p.name}: {p.describe()}{cond}", file=out)
    for ds, layout in layouts.items():
        if layout is None:
            print(f"  note: dataset '{ds}' is not on this machine: models not checked against its shapes",
                  file=out)
    rows = []
    for i in range(n):
        _, point = sample_point(study, space)
        hashes = {}
        for ds in space.datasets:
            try:
                cfg = trial_config(space, ds, point, obj.seed)
                if layouts[ds] is not None:
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
        check_space(args.space, n=args.num_points, smoke=args.smoke)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def register(sub: Any) -> None:
    """Add ``check SPACE [-n N] [--smoke]`` to the CLI's sub-parsers."""
    p = sub.add_parser("check", help="validate a search-space YAML without running it",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("space", help="search-space YAML file (search_spaces/*.yaml)")
    p.add_argument("-n", "--num-points", type=int, default=5, help="points to sample and show (default 5)")
    p.add_argument("--smoke", action="store_true", help="check the --smoke variant of the space")
    p.set_defaults(func=_handler)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m mcrlab.tune.check SPACE``) until the CLI wires ``register``."""
    parser = argparse.ArgumentParser(prog="mcrlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["check", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
