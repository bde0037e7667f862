"""The ``mcrlab`` command line: ``main`` dispatches to one module per command group.

Only argparse and the config layer are imported to build the parser, so ``mcrlab --help`` stays fast;
each command imports torch, Ray or MLflow when it runs.
"""

from mcrlab.cli.app import main

__all__ = ["main"]
