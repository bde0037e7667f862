r"""An ablation study (grid of arms x seeds, tracked in MLflow) as a Ray job.

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/runtime_env.yaml \
        -- python jobs/ablate.py search_spaces/ablation.yaml --storage s3://BUCKET/mcrlab/ray_results

    mcrlab submit ablate search_spaces/ablation.yaml --storage /mnt/shared/ray_results   # the same

Smoke (seconds): add --smoke. Every argument goes to `mcrlab ablate` unchanged.
"""

import sys

from mcrlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
