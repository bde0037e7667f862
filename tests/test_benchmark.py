"""jobs/benchmark.py: every stable figure is produced and finite (no assertions on speed)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("_bench_under_test", ROOT / "jobs" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_starts_with_its_commands():
    head = (ROOT / "jobs" / "benchmark.py").read_text().splitlines()[:4]
    assert head[0].startswith("# OMP_NUM_THREADS=1 python jobs/benchmark.py")
    assert any("ray job submit" in line for line in head)


def test_resnet_encoder_shapes_and_gradients():
    enc = _bench().resnet18_encoder(3, 12, width=4)
    x = torch.randn(2, 3, 24, 20, requires_grad=True)
    z = enc(x)
    assert z.shape == (2, 12) and enc.out_dim == 12
    z.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # ResNet-18 shape: stem + 4 stages of 2 basic blocks, each with 2 convs (+ 3 downsampling 1x1)
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 4 * 2 * 2 + 3


def test_conv_model_step_ratios_on_cpu_are_finite():
    figs = _bench().conv_step_ratios("cpu", smoke=True)
    names = {f"mcr_over_joint_step_cpu_resnet_{f}_s{s}" for f in ("late", "mlp") for s in (8, 32)}
    assert names <= set(figs)
    assert all(math.isfinite(v) and v > 0 for v in figs.values())


def test_bare_loop_and_fit_train_the_same_amount_and_time_the_eval():
    b = _bench()
    cfg = b._throughput_config(smoke=True)
    assert cfg.method.name == "joint" and cfg.train.probe_epochs == 0
    figures, raw = b.throughput(smoke=True)
    assert raw["samples"] == cfg.train.epochs * (cfg.data.n_train // 256) * 256
    assert 0 < figures["fit_eval_share"] < 1
    assert figures["platform_over_bare_throughput_no_eval"] > figures["platform_over_bare_throughput"]
    import mcrlab.engine.fit as train

    assert train.evaluate.__name__ == "evaluate"  # the timing wrappers were removed again


@pytest.mark.slow
@pytest.mark.ray
def test_smoke_run_reports_every_stable_figure(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "benchmark.py"), "--smoke", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    stable = _bench().STABLE_FIGURES
    missing = [n for n in stable if n not in data["figures"]]
    assert not missing
    bad = {n: data["figures"][n] for n in stable if not (isinstance(data["figures"][n], (int, float))
                                                         and math.isfinite(data["figures"][n]))}
    assert not bad
    assert data["machine_start"]["cores"] == os.cpu_count() and data["smoke"] is True
    for name in stable:  # each figure is also printed, one per line
        assert name in proc.stdout


def test_cli_start_up_benchmark_smoke_prints_every_command(tmp_path):
    """jobs/bench_cli.py --smoke: one figure per command, all positive (no assertion on speed)."""
    out = tmp_path / "cli.json"
    subprocess.run([sys.executable, str(ROOT / "jobs" / "bench_cli.py"), "--smoke", "--json", str(out)],
                   check=True, capture_output=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "platform")})
    figures = json.loads(out.read_text())
    assert {"mcrlab --help", "mcrlab sweep --help", "mcrlab train --help"} <= set(figures)
    assert all(v > 0 for k, v in figures.items() if k.endswith("--help"))
    assert figures["unreachable tracking server"] > 0  # the former timed test's figure (exit 2 checked by it)


def test_data_generation_benchmark_smoke_prints_every_preset():
    """jobs/bench_data.py --smoke (the former timed test, now a figure): one finite figure per preset."""
    from mcrlab.data.synthetic import PRESETS

    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "bench_data.py"), "--smoke"], check=True,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "platform")})
    figures = json.loads(proc.stdout)
    assert set(figures) == {f"synthetic_{p}_s_per_dataset" for p in PRESETS}
    assert all(math.isfinite(v) and v >= 0 for v in figures.values())
