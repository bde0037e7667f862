"""Hyperparameter search: search-space YAML -> Optuna define-by-run (``space``), sweeps over Ray Tune.

Importing this package imports neither Optuna nor Ray; the modules that need them import them lazily.
"""

from mcrlab.tune.space import (
    DefineByRun,
    Objective,
    Param,
    SamplerSpec,
    Scaling,
    SchedulerSpec,
    SearchSpace,
    Smoke,
    compile_space,
    load_space,
    make_sampler,
    parse_space,
    sample_point,
    trial_config,
)

__all__ = ["DefineByRun", "Objective", "Param", "SamplerSpec", "Scaling", "SchedulerSpec", "SearchSpace",
           "Smoke", "compile_space", "load_space", "make_sampler", "parse_space", "sample_point",
           "trial_config"]
