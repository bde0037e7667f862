r"""A hyperparameter sweep (Ray Tune + Optuna, tracked in MLflow) as a Ray job.

    ray job submit --address "$RAY_API_SERVER_ADDRESS" --runtime-env jobs/runtime_env.yaml \
        -- python jobs/sweep.py search_spaces/default.yaml --storage /mnt/shared/mcrlab/runs

    mcrlab submit sweep search_spaces/default.yaml --storage /mnt/shared/mcrlab/runs   # the same, checked first

(`eval "$(mcrlab cluster env)"` sets RAY_API_SERVER_ADDRESS for the local cluster.) Smoke: add --smoke.
On a multi-node cluster --storage must be shared by every node (a shared filesystem mounted at the same
path), so checkpoints and Tune state are found by whichever node resumes the sweep. Every argument goes to
`mcrlab sweep` unchanged.
"""

import sys

from mcrlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
