r"""An ablation study (grid of arms x seeds, tracked in MLflow) as a Ray job.

    ray job submit --address "$RAY_API_SERVER_ADDRESS" --runtime-env jobs/runtime_env.yaml \
        -- python jobs/ablate.py search_spaces/ablation_mcr_standard.yaml

    mcrlab submit ablate search_spaces/ablation_mcr_standard.yaml   # the same, checked first

(`eval "$(mcrlab cluster env)"` sets RAY_API_SERVER_ADDRESS for the local cluster.) Smoke: add --smoke. Every argument goes to `mcrlab ablate` unchanged.
"""

import sys

from mcrlab.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablate", *sys.argv[1:]]))
