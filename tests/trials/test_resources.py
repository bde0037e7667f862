"""Resources of a trial: GPU shares pack single-process trials on one GPU; data-parallel trials need whole GPUs."""

from __future__ import annotations

import pytest
import yaml

from mcrlab.ablate.spec import parse_spec
from mcrlab.config import ConfigError
from mcrlab.trials.backends import pick_backend
from mcrlab.trials.resources import check_gpu_share, max_concurrent
from mcrlab.tune.space import parse_space
from mcrlab.tune.study import scaling_of
from tests.test_ablation import TINY


def _space(scaling: dict):
    with open("search_spaces/default.yaml") as f:
        raw = yaml.safe_load(f)
    return parse_space({**raw, "scaling": scaling}, "s.yaml")


def test_a_quarter_gpu_packs_four_single_process_trials_on_one_gpu():
    backend = pick_backend(scaling_of(_space({"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0.25})))
    assert backend.trial_resources() == {"CPU": 1.0, "GPU": 0.25}
    assert max_concurrent(backend.trial_resources(), {"CPU": 16, "GPU": 1}) == 4
    assert max_concurrent(backend.trial_resources(), {"CPU": 2, "GPU": 1}) == 2  # CPUs bind first here


@pytest.mark.parametrize("gpus", [0.5, 0.25])
def test_a_gpu_fraction_per_rank_is_refused_for_data_parallel_trials(gpus):
    check_gpu_share(1, gpus)  # single-process: fine
    check_gpu_share(2, 1.0)  # whole GPUs: fine
    with pytest.raises(ConfigError, match="s.yaml: scaling.gpus_per_worker: .* data-parallel"):
        _space({"workers": 2, "gpus_per_worker": gpus})
    with pytest.raises(ConfigError, match="resources.gpus: .* data-parallel"):
        parse_spec({**TINY, "resources": {"workers": 2, "gpus": gpus}}, "a.yaml")
