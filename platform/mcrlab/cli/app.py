"""``mcrlab``: the command line. Each sub-command lives next to what it drives and registers itself here.

User mistakes (ConfigError) print one line naming the file and key and exit with code 2; nothing runs.
A full disk that stops a sweep (StorageFull) prints one line with the resume command and exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mcrlab.config import ConfigError, RunConfig, field_docs, load_config, read_yaml
from mcrlab.trials.diskfull import StorageFull

EPILOG = """\
examples:
  mcrlab train                                   one MCR run on embedded defaults (synthetic:competition)
  mcrlab train method.name=joint train.epochs=5  override any config key as section.key=value
  mcrlab train cfg.yaml --json out.json          a YAML config file, metrics written as JSON
  mcrlab sweep search_spaces/default.yaml        the main job: a Ray Tune + Optuna sweep, tracked in MLflow
  mcrlab report SWEEP_ID                         importances and Optuna's plots of a sweep, logged to MLflow
  mcrlab train --from-run RUN_ID train.epochs=50 retrain an MLflow run's config (e.g. a sweep's best trial)
  mcrlab <command> --help                        help for one command
"""


def _config_keys_help() -> str:
    from mcrlab.config import DataConfig, ModelConfig, TrainConfig
    from mcrlab.methods import REGISTRY

    lines = ["config keys (section.key=value; defaults shown):"]
    for section, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        for name, default, help_ in field_docs(cls):
            lines.append(f"  {section}.{name}={default!r:<24} {help_}")
    lines.append(f"  method.name='mcr'                  one of: {', '.join(REGISTRY)}")
    for mname, mcls in REGISTRY.items():
        for name, default, help_ in field_docs(mcls.Params):
            lines.append(f"  method.{name}={default!r:<22} [{mname}] {help_}")
    return "\n".join(lines)


class _TrainHelp(argparse.Action):
    """``mcrlab train --help``: the usual help plus every config key, computed only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        parser.epilog = _config_keys_help()
        parser.print_help()
        parser.exit()


class _EpochPrinter:
    """One line per epoch on stderr: the progress display for long runs."""

    def __init__(self, epochs: int, modalities_hint: str = ""):
        self.epochs, self.t0 = epochs, time.time()

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        ds = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in metrics.items() if k.startswith("val/D/"))
        print(f"epoch {int(metrics['epoch']):>3}/{self.epochs}  loss {metrics['train/loss']:.4f}  "
              f"val/acc {metrics['val/acc']:.4f}  D[{ds}]  {time.time() - self.t0:6.1f}s",
              file=sys.stderr, flush=True)


def train_config(args: argparse.Namespace) -> RunConfig:
    """Defaults <- CONFIG or the config of MLflow run ``--from-run`` <- overrides.

    CONFIG is YAML or JSON: a plain config mapping, or a mapping with a ``config`` key (the
    ``best_config.json`` of a sweep's study run, ``mcrlab train --json`` output).
    """
    if args.from_run:
        from mcrlab.ablate.spec import config_from_run
        from mcrlab.tracking import check_tracking, resolve_tracking_uri

        if args.config:
            raise ConfigError(f"--from-run: give either a config file or --from-run, not both ('{args.config}')")
        uri = resolve_tracking_uri(args.tracking_uri)
        check_tracking(uri)
        source = f"--from-run {args.from_run}"
        raw = config_from_run(uri, args.from_run, source)
    elif args.config:
        source = str(args.config)
        raw = read_yaml(args.config)
        if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
            raw = raw["config"]
    else:
        return load_config(None, args.overrides)
    cfg = RunConfig.from_dict(raw, source)  # refuses a document that is not a mapping of sections
    return cfg.replace(args.overrides) if args.overrides else cfg


def cmd_train(args: argparse.Namespace) -> int:
    from mcrlab.engine.fit import fit

    cfg = train_config(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from mcrlab.data import load_dataset

    if args.checkpoint_dir:  # an unwritable checkpoint folder fails now, not after the first epoch
        from mcrlab.tune.runner import check_storage

        check_storage(Path(args.checkpoint_dir).expanduser().resolve(), "--checkpoint-dir")
    try:  # a bad data.name names the file (or override) it came from, before any training starts
        dataset = load_dataset(cfg.data)
    except ConfigError as err:
        raise ConfigError(f"{args.config or '<override>'}: {err}") from None
    from mcrlab.engine.init_run import is_run_id
    from mcrlab.trials.init_source import check_run_init

    if is_run_id(cfg.model.init):  # the source run exists, is finished, has a model that fits: before training
        from mcrlab.tracking import check_tracking, resolve_tracking_uri

        init_uri = resolve_tracking_uri(args.tracking_uri)
        check_tracking(init_uri)
        check_run_init(cfg, ([tuple(s) for s in dataset.shapes], dataset.num_classes), init_uri)
    report: Callable[[dict, str | None], None] | None = None if args.quiet else _EpochPrinter(cfg.train.epochs)
    tracking = None
    if args.track:
        from mcrlab.cli.track import TrainTracking
        from mcrlab.tracking import check_tracking, resolve_tracking_uri

        uri = resolve_tracking_uri(args.tracking_uri)
        check_tracking(uri)
        tracking = TrainTracking(uri, args.experiment, cfg, dataset, from_run=args.from_run)
        report = tracking.reporter(report)
        print(f"mcrlab train: tracking run {tracking.run_id} in {uri} (experiment '{args.experiment}')",
              file=sys.stderr)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mcrlab-train-") as tmp:
        model_file = str(Path(tmp) / "state.pt") if tracking is not None else None
        try:
            metrics = fit(cfg, report, checkpoint_dir=args.checkpoint_dir,
                          resume_from=args.checkpoint_dir if args.resume else None, dataset=dataset,
                          model_out=model_file)
        except BaseException as err:
            if tracking is not None:
                tracking.finish(None, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        if tracking is not None:
            tracking.finish(metrics, model_file=model_file)
    final = {k: v for k, v in metrics.items() if k.startswith("test/") or k == "val/best_acc"}
    width = max(map(len, final), default=0)
    for k in sorted(final):
        print(f"{k:<{width}}  {final[k]:.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"metrics": metrics, "config": cfg.to_dict()}, indent=2))
    return 0


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train one run (MCR by default) on embedded defaults or a config",
        description="Train one run. Defaults <- CONFIG (YAML with sections data/model/method/train) <- "
                    "section.key=value overrides. Prints one line per epoch and the final test metrics.",
        formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    # the key listing needs the method registry (torch): built only when this help is asked for
    p.add_argument("-h", "--help", action=_TrainHelp, nargs=0, help="show this help, with every config key")
    p.add_argument("config", nargs="?", default=None,
                   help="YAML or JSON config file (optional; a mapping with a 'config' key, such as a sweep's "
                        "best_config.json, works too)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=0.01")
    p.add_argument("--json", metavar="PATH", help='write {"metrics": ..., "config": ...} to PATH')
    p.add_argument("--checkpoint-dir", metavar="DIR", help="write a checkpoint there every epoch")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--from-run", metavar="RUN_ID",
                   help="start from the config of this MLflow run (its config.yaml/config.json artifact, e.g. a "
                        "sweep's best trial); overrides apply on top")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI for --from-run/--track/model.init=RUN_ID (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<./runs>/mlflow.db)")
    p.add_argument("--track", action="store_true",
                   help="record the run in MLflow (params, per-epoch metrics, config.json, dataset input)")
    p.add_argument("--experiment", default="train", help="MLflow experiment for --track (default: train)")
    p.set_defaults(func=cmd_train)


def _split_config_arg(args: argparse.Namespace) -> None:
    """``mcrlab train a=b`` has no file: argparse put the first override into ``config``."""
    if args.func is not cmd_train:
        return
    cfg = args.config
    if cfg is not None and "=" in cfg and not cfg.endswith((".yaml", ".yml", ".json")):
        args.overrides = [cfg, *args.overrides]
        args.config = None
    elif cfg is not None and not Path(cfg).exists() and not cfg.endswith((".yaml", ".yml", ".json")):
        raise ConfigError(f"'{cfg}': neither a config file nor an override (expected section.key=value)")
    if args.resume and not args.checkpoint_dir:
        raise ConfigError("--resume needs --checkpoint-dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcrlab",
        description="mcrlab: train, tune and ablate multimodal models balanced by MCR (the Multimodal "
                    "Competition Regularizer) on Ray, with Optuna search and MLflow tracking.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register_train(sub)
    for module in _command_modules():
        module.register(sub)
    return parser


def _command_modules() -> list:
    """The sub-command modules, in the order --help lists them (one explicit list)."""
    import importlib

    names = ["mcrlab.cli.sweep", "mcrlab.cli.report", "mcrlab.tune.check", "mcrlab.cli.ablate", "mcrlab.cli.data",
             "mcrlab.cli.cluster", "mcrlab.studies.reproduce", "mcrlab.cli.schema"]
    out = []
    for name in names:
        try:
            out.append(importlib.import_module(name))
        except ModuleNotFoundError as err:
            if err.name != name:  # a missing dependency inside an existing module is a real error
                raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        _split_config_arg(args)
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"mcrlab: error: {err}", file=sys.stderr)
        return 2
    except StorageFull as err:  # a full disk stopped a sweep: one line that says how to resume
        print(f"mcrlab: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mcrlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as other commands do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
