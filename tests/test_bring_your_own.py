"""Bring your own data and model (issue 13, "Done when" and "Bad input"), through the real CLI and real Ray.

- ``mcrlab data import`` of an image + spectrogram .npz, then ``mcrlab train`` with ``model.encoders=[cnn,
  conv1d]``: exit 0, both encoders are convs, every per-modality metric is there;
- bad input (a shape the encoder cannot take, a plug-in that does not import or returns something else
  than an encoder, three encoders for two modalities, a dataset plug-in that does not import) through
  ``train``, ``check``, ``sweep`` and ``ablate`` (also ``--dry-run``): exit 2, one line naming the key and the reason, nothing
  started (no Ray, no run folder, no output file);
- slow, real Ray: an ASHA sweep and a 2-worker gloo data-parallel run with conv encoders, and a sweep whose
  encoder is ``myenc:build`` from a module in tmp_path. The module reaches the Ray workers through the
  driver's ``runtime_env`` ``py_modules`` (the workers of the shared test cluster were started without
  tmp_path on their path), exactly as a submitted job gets it; a trial whose plug-in raises fails with its
  reason in MLflow while the other trials finish.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from mcrlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
IMAGE, SPEC = (1, 8, 8), (6, 4)  # a 1-channel 8x8 image and a (T=6, F=4) spectrogram


def write_npz(path: Path, n: int = 90, seed: int = 0) -> Path:
    """Labels written into both modalities (a bright band of rows / a loud band of time steps)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    image = rng.normal(size=(n, *IMAGE)).astype(np.float32) * 0.5
    spec = rng.normal(size=(n, *SPEC)).astype(np.float32) * 0.5
    for i, c in enumerate(label):
        image[i, 0, 2 * c: 2 * c + 2] += 1.5
        spec[i, 2 * c: 2 * c + 2] += 1.0
    np.savez(path, image=image, spec=spec, label=label)
    return path


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def imported(tmp_path) -> Path:
    """An image + spectrogram .npz imported with the real CLI into tmp_path/av (absolute path)."""
    dest = tmp_path / "av"
    code, out, err = _run(["data", "import", str(write_npz(tmp_path / "av.npz")), str(dest)])
    assert code == 0, err
    assert "image (1x8x8), spec (6x4)" in out
    return dest


TINY_TRAIN = ["model.hidden=4", "model.latent=6", "model.depth=1", "train.epochs=2", "train.batch_size=32",
              "train.probe_epochs=3", "train.eval_perms=2", "train.device=cpu"]


def test_train_cnn_and_conv1d_on_an_imported_image_and_spectrogram_npz(imported, tmp_path):
    out_json = tmp_path / "out.json"
    code, out, err = _run(["train", f"data.name={imported}", "model.encoders=[cnn,conv1d]", *TINY_TRAIN,
                           "--json", str(out_json), "--quiet"])
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert result["config"]["model"]["encoders"] == ["cnn", "conv1d"]
    metrics = result["metrics"]
    for key in ("test/acc", "test/probe/image", "test/probe/spec", "test/head/image", "test/D/spec"):
        assert np.isfinite(metrics[key]), key
    assert "test/probe/image" in out  # the final table


# ---- bad input --------------------------------------------------------------------------------------------
BAD_ENCODER = textwrap.dedent('''
    def build(in_shape, **args):  # returns a list, not an nn.Module with out_dim
        return [1, 2]
''')

# (model.encoders override, data.name or None for the imported folder, the expected key and reason)
BAD = {
    "shape": ("[cnn,cnn]", None, "model.encoders[1]: cnn needs (C, H, W) input, got (6, 4)"),
    "import": ("[cnn,no_such_module_xyz:build]", None,
               "model.encoders[1]: cannot import 'no_such_module_xyz': ModuleNotFoundError"),
    "returns": ("[cnn,bad_user_encoder:build]", None,
                "model.encoders[1]: bad_user_encoder:build returned a list, not a torch.nn.Module"),
    "count": ("[cnn,conv1d,mlp]", None, "model.encoders: 3 encoder(s) for 2 modalities"),
    "data": ("[cnn,conv1d]", "no_such_data_xyz:load",
             "data.name: 'no_such_data_xyz:load': cannot import module 'no_such_data_xyz'"),
}


def _bad_files(work: Path, encoders: str, data: str) -> dict[str, Path]:
    """A search space and an ablation spec with that model and dataset (YAML flow lists)."""
    model = {"encoders": yaml.safe_load(encoders), "hidden": 4, "latent": 6, "depth": 1}
    train = {"epochs": 1, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}
    space = {"name": "byo", "datasets": [data], "base": {"model": model, "train": train}, "metric": "val/acc",
             "mode": "max", "num_samples": 2, "scheduler": "none",
             "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}
    spec = {"name": "byo", "experiment": "byo", "base": {"model": model, "train": train},
            "arms": {"fast": {"train.lr": 0.01}}, "datasets": [data], "seeds": [0], "metric": "test/acc"}
    files = {"space": work / "space.yaml", "spec": work / "ablation.yaml"}
    files["space"].write_text(yaml.safe_dump(space))
    files["spec"].write_text(yaml.safe_dump(spec))
    return files


@pytest.mark.parametrize("command", ["train", "check", "sweep", "ablate", "ablate --dry-run"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_encoder_or_data_is_one_line_naming_the_key_and_exit_2(case, command, imported, tmp_path,
                                                                   monkeypatch):
    encoders, data, expect = BAD[case]
    data = data or str(imported)
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "bad_user_encoder.py").write_text(BAD_ENCODER)
    monkeypatch.chdir(work)  # the default run folder (./runs) would appear here
    monkeypatch.syspath_prepend(str(work))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    files = _bad_files(work, encoders, data)
    before = set(os.listdir(work))
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if command == "train":
        argv = ["train", f"data.name={data}", f"model.encoders={encoders}", *TINY_TRAIN, "--json",
                str(work / "out.json"), "--checkpoint-dir", str(work / "ckpt")]
    elif command in ("check", "sweep"):
        argv = [command, str(files["space"])] + (["-n", "2"] if command == "check" else [])
    else:
        argv = ["ablate", str(files["spec"]), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
        argv += ["--dry-run"] if command.endswith("--dry-run") else []
    code, out, err = _run(argv)
    sys.modules.pop("bad_user_encoder", None)
    assert code == 2, f"exit {code}\n{out}\n{err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("mcrlab: error:", "error:"))]
    # one error line, the last (``ablate`` announces its grid first), no traceback
    assert len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in err, err
    lines = errors
    assert expect in lines[0], lines[0]
    if command != "train":  # the file that holds the mistake is named too
        assert files["spec" if command.startswith("ablate") else "space"].name in lines[0], lines[0]
    # nothing started: no run folder, no output, no checkpoint (the ckpt folder may be probed, but is empty)
    after = set(os.listdir(work)) - before
    assert after <= {"ckpt", "__pycache__"}, after
    assert not (work / "ckpt").exists() or not any((work / "ckpt").iterdir())
    if not ray_before:
        assert not ("ray" in sys.modules and sys.modules["ray"].is_initialized())


# ---- real Ray (slow) ----------------------------------------------------------------------------------------
def _space(dataset: Path, model: dict, **over) -> dict:
    return {"name": "byo", "datasets": [str(dataset)],
            "base": {"model": {"hidden": 4, "latent": 6, "depth": 1, **model}, "method": {"name": "mcr",
                                                                                     "num_perms": 2},
                     "train": {"epochs": 3, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1,
                               "device": "cpu"}},
            "metric": "val/acc", "mode": "max", "sampler": {"name": "random", "seed": 0}, "num_samples": 3,
            "scaling": {"workers": 1, "cpus_per_worker": 1},
            "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}, **over}


@pytest.mark.ray
@pytest.mark.slow
def test_asha_sweep_with_conv_encoders(ray_local, imported, tmp_path, mlflow_uri):
    from mcrlab.tracking import find_runs
    from mcrlab.tune.runner import run_sweep
    from mcrlab.tune.space import parse_space

    space = parse_space(_space(imported, {"encoders": ["cnn", "conv1d"]},
                               scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2}), "byo")
    result = run_sweep(space, tracking_uri=mlflow_uri, storage_path=tmp_path / "runs", progress=False)
    study = result.studies[str(imported)]
    assert study.num_trials == 3 and study.num_errors == 0
    trials = find_runs(mlflow_uri, result.experiment, kind="trial")
    assert len(trials) == 3 and all(r["status"] == "FINISHED" for r in trials)
    assert all(r["params"]["model.encoders"] == "['cnn', 'conv1d']" for r in trials), trials[0]["params"]
    assert study.best_config["model"]["encoders"] == ["cnn", "conv1d"]


@pytest.mark.ray
@pytest.mark.slow
def test_data_parallel_with_a_cnn_on_two_gloo_workers(ray_local, imported, tmp_path):
    from mcrlab.config import RunConfig
    from mcrlab.engine.fit import fit
    from mcrlab.trials.data_parallel import fit_distributed

    cfg = RunConfig.from_dict({"data": {"name": str(imported), "loader": "memory"},
                               "model": {"encoders": ["cnn", "conv1d"], "hidden": 4, "latent": 6, "depth": 1},
                               "method": {"name": "mcr", "num_perms": 2},
                               "train": {"epochs": 2, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1,
                                         "device": "cpu", "lr": 3e-3}})
    result = fit_distributed(cfg, workers=2, cpus_per_worker=1.0, name="byo-dp", storage_path=tmp_path / "runs")
    m = result.metrics
    assert m["epoch"] == 2 and np.isfinite(m["train/loss"]) and np.isfinite(m["test/acc"])
    assert {"test/D/image", "test/D/spec"} <= set(m)
    single = fit(cfg)  # the same run on one process: same data, same model family, a sane neighbour
    assert abs(single["test/acc"] - m["test/acc"]) <= 0.5


USER_ENCODER = textwrap.dedent('''
    """A user's encoder outside the package: build(in_shape, **args) -> nn.Module with out_dim."""
    import math

    import torch
    from torch import nn


    class Flat(nn.Module):
        def __init__(self, in_shape, width, explode):
            super().__init__()
            self.lin = nn.Linear(math.prod(in_shape), width)
            self.out_dim = width
            self.explode = explode

        def forward(self, x):
            if self.explode and self.training:  # passes the eval-mode contract check, fails in training
                raise RuntimeError("user encoder exploded on purpose")
            return torch.relu(self.lin(x.flatten(1)))


    def build(in_shape, width=5):
        return Flat(in_shape, width, explode=False)


    def explode(in_shape, width=5):
        return Flat(in_shape, width, explode=True)
''')

DRIVER = textwrap.dedent('''
    """A sweep driver that joins a running cluster with the user's module in its runtime_env."""
    import json
    import sys

    from mcrlab.trials.session import start_ray
    from mcrlab.tune.runner import run_sweep
    from mcrlab.tune.space import load_space

    address, space, storage, uri, module = sys.argv[1:]
    start_ray(address, runtime_env={"py_modules": [module], "env_vars": {"OMP_NUM_THREADS": "1"}})

    import ray

    @ray.remote(num_cpus=0)
    def where_is_myenc():
        import myenc
        return myenc.__file__

    print("WORKER_MODULE " + ray.get(where_is_myenc.remote()))
    result = run_sweep(load_space(space), tracking_uri=uri, storage_path=storage, progress=False)
    study = next(iter(result.studies.values()))
    print("RESULT " + json.dumps({"experiment": result.experiment, "num_trials": study.num_trials,
                                  "num_errors": study.num_errors, "best": study.best_config["model"]}))
''')


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_with_a_user_encoder_from_outside_the_package(ray_local, imported, tmp_path, mlflow_uri):
    """``model.encoder=myenc:build`` on every modality; one more trial uses ``myenc:explode``, which raises
    in training: that trial fails with its reason in MLflow, the others finish."""
    from mcrlab.tracking import find_runs

    plugins = tmp_path / "user_code"
    plugins.mkdir()
    (plugins / "myenc.py").write_text(USER_ENCODER)
    (tmp_path / "driver.py").write_text(DRIVER)
    space = _space(imported, {"encoder": "myenc:build"}, num_samples=3,
                   params={"model.encoders.1": {"type": "categorical",
                                                "choices": ["myenc:build", "myenc:explode"]},
                           "train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
                   points_to_evaluate=[{"model.encoders.1": "myenc:build", "train.lr": 0.01},
                                       {"model.encoders.1": "myenc:explode", "train.lr": 0.01},
                                       {"model.encoders.1": "myenc:build", "train.lr": 0.003}])
    space["base"]["model"]["encoders"] = ["myenc:build", "myenc:build"]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    # the driver imports myenc (PYTHONPATH) to check the model; the workers get it only through py_modules
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(plugins)]),
           "OMP_NUM_THREADS": "1"}
    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), address, str(tmp_path / "space.yaml"),
                           str(tmp_path / "runs"), mlflow_uri, str(plugins / "myenc.py")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a worker imports the copy Ray unpacked from py_modules, not the file in user_code (which no worker
    # has on its path: Ray passes the driver's cwd and script folder on, not its PYTHONPATH)
    worker_file = next(ln for ln in proc.stdout.splitlines() if ln.startswith("WORKER_MODULE "))
    assert str(plugins) not in worker_file and "myenc.py" in worker_file, worker_file
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    assert res["num_trials"] == 3 and res["num_errors"] == 1
    assert res["best"]["encoders"] == ["myenc:build", "myenc:build"]
    trials = find_runs(mlflow_uri, res["experiment"], kind="trial")
    by_status = {}
    for r in trials:
        by_status.setdefault(r["status"], []).append(r)
    assert len(by_status.get("FINISHED", [])) == 2 and len(by_status.get("FAILED", [])) == 1, by_status.keys()
    failed = by_status["FAILED"][0]
    assert failed["params"]["model.encoders"] == "['myenc:build', 'myenc:explode']"
    assert "user encoder exploded on purpose" in failed["tags"]["mcrlab.error_reason"]
    assert all("val/acc" in r["metrics"] for r in by_status["FINISHED"])


@pytest.mark.ray
@pytest.mark.slow
def test_the_readme_sweep_runs_from_the_data_folder_with_relative_paths(imported, tmp_path):
    """The README's flow as printed: ``PYTHONPATH=$PWD mcrlab sweep byo_space.yaml`` in the folder that holds
    ``av`` (a relative data.name) and ``myenc.py``; the CLI starts its own local Ray. Trials used to move into
    their trial folders, where ``av`` did not resolve: every trial failed."""
    (tmp_path / "myenc.py").write_text(USER_ENCODER)
    space = _space(Path("av"), {"encoders": ["cnn", "conv1d"]}, num_samples=2,
                   params={"model.encoders.1": {"type": "categorical", "choices": ["conv1d", "myenc:build"]}},
                   points_to_evaluate=[{"model.encoders.1": "conv1d"}, {"model.encoders.1": "myenc:build"}])
    space["base"]["train"]["epochs"] = 2
    (tmp_path / "byo_space.yaml").write_text(yaml.safe_dump(space))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI",
                                                               "RAY_CHDIR_TO_TRIAL_DIR")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(tmp_path)]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "mcrlab.cli", "sweep", "byo_space.yaml"], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "2 trials, 0 errors" in proc.stdout, proc.stdout
