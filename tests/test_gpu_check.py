"""jobs/gpu_check.py, the prepared GPU check, in its CPU form (no speed assertions): it runs as printed in its
header, trains two ResNet-18 encoders named in the config through fit on a 2-rank gloo data-parallel trial,
and writes every figure it can on this device (the CUDA-graph part is skipped with its reason on CPU)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "jobs" / "gpu_check.py"


def _run(out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "platform")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    for name, value in data["figures"].items():
        assert math.isfinite(value) and value > 0, name
        assert name in proc.stdout  # each figure is printed too
    return data


def test_header_commands_match_the_script():
    head = SCRIPT.read_text().splitlines()[:5]
    assert any("python3 jobs/gpu_check.py --out" in line for line in head)
    assert any("--smoke --device cpu" in line for line in head)


def test_eager_steps_on_cpu(tmp_path):
    data = _run(tmp_path, "--skip", "dp")
    assert data["errors"] == {} and data["device"] == "cpu"
    assert data["skipped"] == {"dp": "--skip", "captured": "CUDA graphs need a CUDA device"}
    want = {f"mcr_over_joint_step_eager_{f}_s{s}" for f in ("late", "mlp") for s in (8, 32)}
    want |= {f"joint_samples_per_s_eager_{f}" for f in ("late", "mlp")}
    assert set(data["figures"]) == want


@pytest.mark.slow
def test_data_parallel_trial_with_two_resnet18_encoders_on_gloo(tmp_path):
    data = _run(tmp_path, "--skip", "eager")
    dp = data["raw"]["dp"]
    assert dp["world"] == 2 and dp["backend"] == "gloo"
    assert dp["config"]["model"]["encoders"] == ["resnet18", "resnet18"] and dp["config"]["train"]["amp"] == "auto"
    times = dp["fit_wall_cpu_evalwall_evalcpu_s"]
    assert set(times) == {"joint", "mcr_s8", "mcr_s32"}
    assert all(0 <= t[2] < t[0] for ts in times.values() for t in ts)  # evaluation is part of fit's time
    assert {f"dp_samples_per_s_{n}" for n in times} | {"dp_mcr_over_joint_train_time_s8",
                                                      "dp_mcr_over_joint_train_time_s32"} == set(data["figures"])
