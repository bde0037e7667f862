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


def test_conv_workload_runs_through_the_public_config_and_fit():
    """The conv figures come from model.encoders=[resnet18, resnet18] trained by fit (no hand-built nets)."""
    from mcrlab.models.resnet import ResNet18Encoder

    b = _bench()
    for script in ("benchmark.py", "bench_conv.py"):  # no encoder is assembled by hand any more
        text = (ROOT / "jobs" / script).read_text()
        assert "nn.Conv2d" not in text and "model.encoders =" not in text, script
    figures, raw = b.conv_part(smoke=True)
    conv_names = [n for n in b.STABLE_FIGURES if b.part_of(n) == "conv"]
    assert len(conv_names) == 4 + 1 + 2 * 2 * 2 + 2
    assert set(conv_names) <= set(figures)
    assert all(math.isfinite(figures[n]) and figures[n] > 0 for n in conv_names)
    assert 0 < figures["fit_eval_share_conv"] < 1
    assert figures["platform_over_bare_throughput_conv_no_eval"] > figures["platform_over_bare_throughput_conv"]
    cfg = raw["throughput"]["config"]
    assert cfg["model"]["encoders"] == ["resnet18", "resnet18"] and cfg["method"]["name"] == "joint"
    assert len(raw["throughput"]["fit_wall_cpu_evalwall_evalcpu_s"]) == len(raw["throughput"]["bare_wall_cpu_s"])
    conv = b._load("bench_conv")
    run = conv.StepRunner(conv.conv_config("<memory>", method="mcr", num_perms=8, latent=8), list(conv.SMOKE_SHAPES),
                          [torch.randn(4, *s) for s in conv.SMOKE_SHAPES], torch.randint(0, 6, (4,)))
    assert all(isinstance(e, ResNet18Encoder) for e in run.model.encoders)
    before = [p.detach().clone() for p in run.model.parameters()]
    run.step()  # one real training step: the weights move
    assert any(not torch.equal(a, p) for a, p in zip(before, run.model.parameters()))


@pytest.mark.slow  # compiles ten tiny steps (~1-2 min on 2 cores)
def test_step_part_reports_eager_and_compiled_figures():
    """The step part: every MCR/joint figure eager and compiled (train.compile=true), from the same rounds."""
    b = _bench()
    figures, raw = b.step_ratios(smoke=True, device="cpu")
    step_names = [n for n in b.STABLE_FIGURES if b.part_of(n) == "step"]
    assert len(step_names) == 2 * 2 * 2 * 2 * 2  # (all, game only) x fusion x S x (eager, compiled) x (wall, cpu)
    assert set(figures) == set(step_names)
    assert all(math.isfinite(v) and v > 0 for v in figures.values())
    for fusion in b.FUSIONS:
        res = raw[f"cpu_{fusion}"]
        assert {"joint", "joint_compiled", "mcr_S8_compiled", "mcr_game_only_S32_compiled"} <= set(res)
        assert res["joint"]["ratio_cpu"] == 1.0 and res["joint_compiled"]["ratio_cpu"] == 1.0  # own baselines
        assert figures[f"mcr_over_joint_step_{fusion}_s32_compiled_cputime"] == res["mcr_S32_compiled"]["ratio_cpu"]


def test_step_bench_in_blocks_runs_each_method_block_times_per_round(monkeypatch):
    """--block K: K steps of one method in a row per round (the first untimed); one step each at K = 1."""
    b = _bench()
    bench_step = b._load("bench_step")
    from mcrlab.methods import REGISTRY

    joint = REGISTRY["joint"]
    calls: list[int] = []
    real = joint.training_step
    monkeypatch.setattr(joint, "training_step", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    width = {"hidden": 4, "depth": 1, "latent": 2, "fusion_hidden": 4}
    for block, steps, warmup in ((1, 2, 1), (3, 2, 1)):
        calls.clear()
        res = bench_step.bench(torch.device("cpu"), "late", 8, steps, warmup, width, [2], block=block)
        assert len(calls) == (steps + warmup) * block  # the joint variant alone
        assert res["joint"]["ratio_cpu"] == 1.0 and all(math.isfinite(r["cpu_ms"]) for r in res.values())


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
