"""How many trials run at once, and what a trial asks Tune for.

Tune does not count the Ray Train workers a data-parallel trial starts inside itself, so the number of
concurrent trials is computed here from the cluster's resources and a trial's workers; without the cap a
sweep deadlocks in ``WorkerGroupStartupTimeoutError`` (architecture notes).
"""

from __future__ import annotations

import math

from mcrlab.config import ConfigError

__all__ = ["ZERO_CPU_REQUEST", "max_concurrent", "check_gpu_share"]

# What the Tune function of a data-parallel trial holds besides its Train workers: nothing, but Tune refuses
# an all-zero request on Ray 2.60 ("empty head and zero worker bundles"), so it asks for one byte of memory,
# which every node has. The one place this workaround lives.
ZERO_CPU_REQUEST: dict[str, float] = {"cpu": 0, "memory": 1}


def max_concurrent(trial_resources: dict[str, float], cluster: dict[str, float], cap: int = 0,
                   where: str = "scaling") -> int:
    """Trials that fit at once: floor(cluster / trial) over CPU and GPU; ConfigError when none fits.

    ``trial_resources`` is what one whole trial occupies (workers x per-worker), ``cap`` an upper limit
    (0 = none), ``where`` the key a message names.
    """
    fits = []
    for key in ("CPU", "GPU"):
        need = trial_resources.get(key, 0.0)
        if need > 0:
            fits.append(math.floor(cluster.get(key, 0.0) / need + 1e-9))
    n = min(fits) if fits else 1
    if n < 1:
        raise ConfigError(f"{where}: a trial needs {trial_resources.get('CPU', 0):g} CPUs and "
                          f"{trial_resources.get('GPU', 0):g} GPUs (workers x per-worker), the cluster has "
                          f"{cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs")
    return min(n, cap) if cap else n


def check_gpu_share(workers: int, gpus: float, key: str = "gpus_per_worker") -> None:
    """A GPU share below 1 packs several single-process trials on one GPU; a data-parallel trial cannot use
    one (NCCL refuses two ranks on one device). ConfigError naming ``key`` otherwise."""
    if workers > 1 and 0 < gpus < 1:
        raise ConfigError(f"{key}: {gpus:g} is a fraction of a GPU, but a data-parallel trial ({workers} workers) "
                          "needs whole GPUs per worker (NCCL cannot share one GPU between ranks); use 1, or "
                          "workers: 1 to pack several trials on one GPU")
