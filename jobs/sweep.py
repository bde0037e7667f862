r"""A hyperparameter sweep (Ray Tune + Optuna, tracked in MLflow) as a Ray job.

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/runtime_env.yaml \
        -- python jobs/sweep.py search_spaces/default.yaml --storage s3://BUCKET/mcrlab/ray_results

    mcrlab submit sweep search_spaces/default.yaml --storage /mnt/shared/ray_results   # the same

Smoke (seconds): add --smoke. On a multi-node cluster --storage must be shared by every node (a
shared filesystem mounted at the same path, or an object store URI), so checkpoints and Tune state are
found by whichever node resumes the sweep. Every argument goes to `mcrlab sweep` unchanged.
"""

import sys

from mcrlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
