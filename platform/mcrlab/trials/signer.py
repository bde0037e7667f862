"""``StateSigner``: a driver-side Tune callback that keeps the sweep's state manifest current.

Tune saves its experiment state every few seconds (and after trial checkpoints); restore unpickles it.
After each controller step this callback re-signs what changed (``storage.sign_tree``; unchanged files
are not hashed again), and once more at the end of the experiment, so ``--resume`` can verify every file
it would unpickle. It is pickled with the Tuner, so it holds only paths: the key is read from the user's
config folder each time, never stored in the sweep folder. A restore unpickles the signer Tune saved, with
the paths of the folder as it was then; ``restoring_into`` gives it the folder being resumed instead (a
sweep folder copied or moved would otherwise be signed at its old place).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ray.tune import Callback

from mcrlab.trials.storage import sign_tree

__all__ = ["StateSigner", "restoring_into"]

SIGN_EVERY_S = 0.2  # at most five walks of the tree a second (unchanged files are not hashed again)
_RESTORING = threading.local()  # per thread: concurrent studies restore in threads of their own


@contextlib.contextmanager
def restoring_into(tree: str, manifest: str) -> Iterator[None]:
    """Signers unpickled in this thread meanwhile (by ``Tuner.restore``) sign ``tree`` into ``manifest``."""
    _RESTORING.paths = (tree, manifest)
    try:
        yield
    finally:
        _RESTORING.paths = None


class StateSigner(Callback):
    def __init__(self, tree: str, manifest: str):
        self.tree, self.manifest = tree, manifest
        self._cache: dict = {}
        self._last = 0.0
        self._warned = False

    def __getstate__(self) -> dict:
        return {"tree": self.tree, "manifest": self.manifest}

    def __setstate__(self, state: dict) -> None:
        paths = getattr(_RESTORING, "paths", None)
        StateSigner.__init__(self, *(paths or (state["tree"], state["manifest"])))

    def sign(self) -> int:
        self._last = time.monotonic()
        try:
            return sign_tree(self.tree, self.manifest, self._cache)
        except OSError as err:  # a full disk stops the sweep (trials.diskfull); the runner signs after fit
            from mcrlab.trials.diskfull import is_disk_full, trigger

            if is_disk_full(err):
                trigger(self.manifest, err)
            if not self._warned:
                print(f"mcrlab: cannot update {self.manifest} ({err.strerror or err}); a resume of this "
                      "sweep may be refused", file=sys.stderr, flush=True)
                self._warned = True
            return 0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last >= SIGN_EVERY_S:
            self.sign()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sign()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sign()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sign()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self.sign()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sign()
