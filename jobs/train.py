r"""One training run as a Ray job (the driver trains; useful on a GPU head or with --entrypoint-num-gpus).

    ray job submit --address "$RAY_API_SERVER_ADDRESS" --runtime-env jobs/runtime_env.yaml \
        --entrypoint-num-gpus 1 -- python jobs/train.py method.name=mcr train.epochs=20 train.device=cuda

    mcrlab submit train --entrypoint-num-gpus 1 method.name=mcr train.device=cuda   # the same

Smoke (seconds): train.epochs=1. Every argument goes to `mcrlab train` unchanged.
"""

import sys

from mcrlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
