"""The training loop: metrics contract, determinism, resume == uninterrupted, per-player lrs."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from mcrlab.config import load_config
from mcrlab.engine.fit import NonFiniteLoss, adaptive_multipliers, fit, load_checkpoint
from tests.helpers_data import toy_dataset

FAST = ["train.epochs=3", "train.batch_size=32", "train.probe_epochs=20"]


def _cfg(*extra):
    """Small runs; MCR (the default method) with S=4 unless another method is named."""
    mcr = [] if any(e.startswith("method.name=") for e in extra) else ["method.num_perms=4"]
    return load_config(None, [*FAST, *mcr, *extra])


def test_metric_contract_per_epoch_and_final():
    seen = []
    final = fit(_cfg(), lambda m, c: seen.append(m), dataset=toy_dataset())
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    for m in seen:
        for key in ("train/loss", "val/acc", "val/f1", "val/head/m0", "val/D/m1", "lr/m0"):
            assert math.isfinite(m[key]), key
    for key in ("test/acc", "test/f1", "test/head/m0", "test/probe/m0", "test/probe/m1",
                "test/acc_type/a", "test/D/m0", "val/best_acc"):
        assert key in final and math.isfinite(final[key]), key
    assert "test/acc" not in seen[0] and seen[-1] is not None and seen[-1]["test/acc"] == final["test/acc"]
    assert final["test/acc"] > 0.7  # modality 0 alone separates the classes well


@pytest.mark.parametrize("method", ["mcr", "joint"])
def test_same_seed_same_metrics_other_seed_differs(method):
    a = fit(_cfg(f"method.name={method}"), dataset=toy_dataset())
    b = fit(_cfg(f"method.name={method}"), dataset=toy_dataset())
    c = fit(_cfg(f"method.name={method}", "train.seed=1"), dataset=toy_dataset())
    assert a == b
    assert a["train/loss"] != c["train/loss"]


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    ds = toy_dataset()
    full = fit(_cfg("train.epochs=4"), dataset=ds)
    ck = str(tmp_path / "ck")
    fit(_cfg("train.epochs=2"), dataset=ds, checkpoint_dir=ck)  # "interrupted" after epoch 2
    assert load_checkpoint(ck)["epoch"] == 1
    resumed = fit(_cfg("train.epochs=4"), dataset=ds, checkpoint_dir=ck, resume_from=ck)
    assert resumed == full


@pytest.mark.parametrize("changed", ["train.lr=0.01", "data.seed=3", "method.name=joint", "train.seed=1"])
def test_resume_with_another_configuration_is_refused(tmp_path, changed):
    from mcrlab.config import ConfigError

    ds = toy_dataset()
    ck = str(tmp_path / "ck")
    fit(_cfg("train.epochs=2"), dataset=ds, checkpoint_dir=ck)
    key = changed.split("=")[0]
    with pytest.raises(ConfigError, match=f"--resume: .*{key}="):
        fit(_cfg("train.epochs=4", changed), dataset=ds, checkpoint_dir=ck, resume_from=ck)


def test_resume_through_the_cli_refuses_a_changed_lr_with_exit_2(tmp_path, capsys):
    from mcrlab.cli import main

    ck = str(tmp_path / "ck")
    base = ["train", "data.n_train=64", "train.probe_epochs=0", "train.device=cpu"]
    opts = ["--quiet", "--checkpoint-dir", ck]
    assert main([*base, "train.epochs=1", *opts]) == 0
    capsys.readouterr()
    assert main([*base, "train.epochs=2", "train.lr=0.05", *opts, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr=0.001" in err[0] and "train.lr=0.05" in err[0]
    assert main([*base, "train.epochs=2", *opts, "--resume"]) == 0  # more epochs of the same run: allowed


def test_player_learning_rates_and_adaptive_mode():
    seen = []
    fit(_cfg("train.player_lr=[2.0, 0.5]", "train.lr=0.001"), lambda m, c: seen.append(m), dataset=toy_dataset())
    assert seen[0]["lr/m0"] == pytest.approx(0.002) and seen[0]["lr/m1"] == pytest.approx(0.0005)
    # adaptive: the player with the smaller D gets the larger step, clipped to the band
    assert adaptive_multipliers([1, 1], [0.3, 0.1], [0.5, 2.0], 1.0) == pytest.approx([2 / 3, 2.0])
    assert adaptive_multipliers([1, 1], [1.0, 1e-9], [0.5, 2.0], 1.0)[1] == 2.0
    seen.clear()
    fit(_cfg("train.adaptive_lr=true"), lambda m, c: seen.append(m), dataset=toy_dataset())
    assert seen[-1]["lr/m0"] != seen[-1]["lr/m1"]


def test_three_modalities_train():
    final = fit(_cfg(), dataset=toy_dataset(num_modalities=3))
    assert {"test/probe/m2", "test/D/m2", "test/head/m2"} <= set(final)


def test_non_finite_loss_stops_at_once():
    ds = toy_dataset()
    ds.splits["train"].x[0][5, 0] = float("nan")  # loaders reject this; fit must still not train on it
    seen = []
    with pytest.raises(NonFiniteLoss, match="epoch 0"):
        fit(_cfg("method.name=joint"), lambda m, c: seen.append(m), dataset=ds)
    assert seen == []


def test_mlp_fusion_trains():
    final = fit(_cfg("model.fusion=mlp", "train.epochs=10"), dataset=toy_dataset())
    assert final["test/acc"] > 0.6


def test_platform_is_the_standard_library_everywhere():
    """platform/ is a source root: nothing may shadow the stdlib module in any process."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    assert not list((root / "platform").glob("*.py")), "no .py files directly in platform/"
    code = "import platform, mcrlab; print(platform.__file__); platform.python_version()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=root / "platform")
    assert "lib" in out.stdout and "mcrlab" not in out.stdout


# --------------------------------------------------------------------------------------------------
# data-parallel BatchNorm: 2 real processes, gloo, each rank its own rows


def _bn_worker(rank: int, world: int, rdv: str, out: str, sync: bool) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    import mcrlab.engine.fit as train_mod
    from mcrlab.models import build_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    built = []

    def with_batchnorm(in_shapes, num_classes, cfg, device=None):  # BatchNorm in front of each MLP encoder
        net = build_model(in_shapes, num_classes, cfg, device=device)
        for m, shape in enumerate(in_shapes):
            enc = net.encoders[m]
            net.encoders[m] = nn.Sequential(nn.BatchNorm1d(shape if isinstance(shape, int) else shape[0]), enc)
            net.encoders[m].out_dim = enc.out_dim
        built.append(net)
        return net

    train_mod.build_model = with_batchnorm
    if not sync:
        train_mod.sync_buffers = lambda module: 0
    fit(_cfg("method.name=joint", "train.epochs=2", "train.probe_epochs=0", "train.device=cpu"),
        dataset=toy_dataset())
    torch.save({k: v for k, v in built[0].state_dict().items() if "running" in k}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _bn_buffers_after_fit(tmp_path, sync: bool) -> list[dict]:
    import torch
    import torch.multiprocessing as mp

    d = tmp_path / ("sync" if sync else "nosync")
    d.mkdir()
    mp.spawn(_bn_worker, args=(2, str(d / "rdv"), str(d), sync), nprocs=2, join=True)
    return [torch.load(d / f"rank{r}.pt") for r in range(2)]


def test_batchnorm_buffers_equal_across_ranks_after_each_epoch(tmp_path):
    import torch

    r0, r1 = _bn_buffers_after_fit(tmp_path, sync=True)
    assert set(r0) == {"encoders.0.0.running_mean", "encoders.0.0.running_var", "encoders.1.0.running_mean",
                       "encoders.1.0.running_var"}
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    # without the sync each rank's statistics follow its own rows: the test above can fail
    n0, n1 = _bn_buffers_after_fit(tmp_path, sync=False)
    assert not torch.equal(n0["encoders.0.0.running_mean"], n1["encoders.0.0.running_mean"])
    # the EMA is linear and training uses batch statistics: the synced buffers are the ranks' average
    assert torch.allclose(r0["encoders.0.0.running_mean"],
                          (n0["encoders.0.0.running_mean"] + n1["encoders.0.0.running_mean"]) / 2, atol=1e-5)


def test_linear_probe_flattens_latents_of_any_shape():
    import torch

    from mcrlab.engine.probe import linear_probe

    g = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 2
    z = torch.randn(80, 2, 3, generator=g, dtype=torch.float64)
    z[:, 1, 2] += 4.0 * y  # one coordinate of the (2, 3) latent separates the classes
    flat = linear_probe(z[:60].reshape(60, 6), y[:60], z[60:].reshape(20, 6), y[60:], 2, steps=30)
    shaped = linear_probe(z[:60], y[:60], z[60:], y[60:], 2, steps=30)
    assert shaped == flat and flat >= 0.85
    assert linear_probe(z[:60, 0], y[:60], z[60:, 0], y[60:], 2, steps=30) < 0.75  # the other row holds no signal
