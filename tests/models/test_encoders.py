"""The built-in encoders: shapes, gradients, seeding, BatchNorm modes, channels_last, shape errors."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from mcrlab.config import ConfigError, ModelConfig
from mcrlab.models import build_model, use_channels_last
from mcrlab.models.encoders import MLPEncoder
from mcrlab.models.fusion import LateFusion
from mcrlab.models.registry import BUILTIN, build_encoder
from mcrlab.models.resnet import ResNet18, ResNet18Encoder

LATENT = 5
SHARED = {"hidden": 4, "depth": 2, "latent": LATENT, "dropout": 0.0}
# every built-in on every input form it takes (tiny shapes: the whole module runs in seconds)
CASES = [("mlp", (6,)), ("mlp", (2, 3, 3)), ("cnn", (1, 8, 8)), ("cnn", (3, 5, 7)), ("cnn", (2, 1, 4)),
         ("conv1d", (7, 3)), ("conv1d", (1, 2)), ("transformer", (6, 4)), ("resnet18", (1, 32, 32)),
         ("resnet18", (12, 10))]


def test_cases_cover_the_registry():
    assert {name for name, _ in CASES} == set(BUILTIN)


def _build(name: str, shape: tuple, seed: int = 0, **args) -> nn.Module:
    torch.manual_seed(seed)
    return build_encoder(name, shape, args, SHARED, "model.encoder")


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_maps_batch_to_latent_and_gradients_flow(name, shape):
    enc = _build(name, shape)
    assert enc.out_dim == LATENT
    x = torch.randn(3, *shape, requires_grad=True)
    z = enc(x)
    assert z.shape == (3, LATENT) and torch.isfinite(z).all()
    (z * torch.randn_like(z)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the output depends on the input
    for pname, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_deterministic_under_a_seed(name, shape):
    a, b, c = _build(name, shape, seed=1), _build(name, shape, seed=1), _build(name, shape, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    x = torch.randn(4, *shape)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


def test_mlp_default_keeps_todays_parameters_and_outputs():
    """The default model (mlp) is built exactly as before the registry: same RNG use, same keys."""
    cfg = ModelConfig()
    torch.manual_seed(0)
    new = build_model([5, 7], 3, cfg)
    torch.manual_seed(0)
    old_encoders = [MLPEncoder(d, cfg.hidden, cfg.depth, cfg.latent, cfg.dropout) for d in (5, 7)]
    old_heads = [nn.Linear(cfg.latent, 3) for _ in range(2)]
    old_fusion = LateFusion([cfg.latent] * 2, 3)
    old = {**{f"encoders.{i}.{k}": v for i, e in enumerate(old_encoders) for k, v in e.state_dict().items()},
           **{f"heads.{i}.{k}": v for i, h in enumerate(old_heads) for k, v in h.state_dict().items()},
           **{f"fusion.{k}": v for k, v in old_fusion.state_dict().items()}}
    got = new.state_dict()
    assert set(got) == set(old) and all(torch.equal(got[k], old[k]) for k in old)
    torch.manual_seed(0)
    as_tuples = build_model([(5,), (7,)], 3, cfg)  # dataset.shapes form: the same model
    assert all(torch.equal(as_tuples.state_dict()[k], got[k]) for k in got)


def test_resnet18_is_resnet18():
    """Parameter count from the published 11,689,512 of ResNet-18 (3 channels, 1000-way fc): minus the
    fc (512 * 1000 + 1000), minus 2/3 of conv1 (64 * 7 * 7 * (3 - 1)) for one input channel, plus our
    Linear(512, latent)."""
    enc = _build("resnet18", (1, 32, 32))
    trunk = sum(p.numel() for p in enc.trunk.parameters())
    assert trunk == 11_689_512 - 513_000 - 64 * 49 * 2
    assert sum(p.numel() for p in enc.proj.parameters()) == 512 * LATENT + LATENT
    keys = set(enc.trunk.state_dict())  # torchvision's layout, so state dicts carry over
    for k in ["conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
              "layer2.0.downsample.1.running_mean", "layer4.1.bn2.bias"]:
        assert k in keys, k
    assert not any(k.startswith("layer1.0.downsample") for k in keys)  # 64 -> 64, stride 1: identity
    spec = _build("resnet18", (12, 10))  # a spectrogram is one channel of T x F
    assert spec.trunk.conv1.in_channels == 1 and spec.add_channel
    assert _build("resnet18", (3, 9, 9)).trunk.conv1.in_channels == 3


def test_builtin_resnet_forced_is_the_same_architecture():
    a = ResNet18Encoder((2, 16, 16), LATENT, use_torchvision=False)
    assert a.impl == "builtin"
    b = _build("resnet18", (2, 16, 16))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


@pytest.mark.parametrize(("name", "shape"), [("cnn", (1, 6, 6)), ("conv1d", (6, 3)), ("resnet18", (1, 8, 8))])
def test_batchnorm_train_and_eval_modes(name, shape):
    enc = _build(name, shape)
    bns = [m for m in enc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns
    x = torch.randn(6, *shape) * 3 + 1
    before = [bn.running_mean.clone() for bn in bns]
    enc.train()
    enc(x)
    assert any(not torch.equal(b, bn.running_mean) for b, bn in zip(before, bns, strict=True))
    enc.eval()
    frozen = [bn.running_mean.clone() for bn in bns]
    with torch.no_grad():
        full, alone = enc(x), enc(x[:1])
    assert all(torch.equal(f, bn.running_mean) for f, bn in zip(frozen, bns, strict=True))
    # eval mode uses running statistics: a sample's output does not depend on the rest of its batch
    torch.testing.assert_close(full[:1], alone, rtol=1e-5, atol=1e-6)
    enc.train()
    with torch.no_grad():
        assert not torch.allclose(enc(x)[:2], enc(x[:2]), atol=1e-4)  # batch statistics in train mode


def test_channels_last_keeps_outputs():
    cfg = ModelConfig(encoders=["cnn", "resnet18", "conv1d"], hidden=4, latent=LATENT, channels_last=True)
    torch.manual_seed(0)
    model = build_model([(2, 8, 8), (1, 16, 16), (5, 3)], 3, cfg, device="cpu")
    assert not any(getattr(e, "channels_last", False) for e in model.encoders)  # applied on CUDA only
    model.eval()
    xs = [torch.randn(4, *s) for s in model.in_shapes]
    with torch.no_grad():
        before = model(xs)
    switched = use_channels_last(model)
    assert switched == [model.encoders[0], model.encoders[1]]  # 2-D convs only
    assert model.encoders[1].trunk.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        after = model(xs)
    torch.testing.assert_close(after.fused, before.fused, rtol=1e-4, atol=1e-5)
    for a, b in zip(after.z, before.z, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("encoders", "shapes", "message"), [
    (["cnn", "mlp"], [(20,), (3,)], "model.encoders[0]: cnn needs (C, H, W) input, got (20,)"),
    (["mlp", "conv1d"], [(3,), (2, 4, 4)], "model.encoders[1]: conv1d needs (T, F) input, got (2, 4, 4)"),
    (["mlp", "transformer"], [(3,), (5,)], "model.encoders[1]: transformer needs (T, F) input, got (5,)"),
    (["resnet18", "mlp"], [(4,), (3,)], "model.encoders[0]: resnet18 needs (C, H, W) or (T, F) input, got (4,)"),
    (["mlp", "mlp", "mlp"], [(3,), (3,)], "model.encoders: 3 encoder(s) for 2 modalities"),
])
def test_a_shape_the_encoder_cannot_take_names_the_key(encoders, shapes, message):
    with pytest.raises(ConfigError) as err:
        build_model(shapes, 3, ModelConfig(encoders=encoders))
    assert str(err.value).startswith(message)


def test_one_encoder_for_all_names_the_modality():
    with pytest.raises(ConfigError, match=r"^model.encoder \(modality 1\): cnn needs \(C, H, W\) input, got \(4,\)"):
        build_model([(1, 4, 4), (4,)], 3, ModelConfig(encoder="cnn"))


def test_bad_builtin_arguments_name_the_key():
    with pytest.raises(ConfigError, match=r"^model.encoders\[1\]: transformer: hidden \(d_model\) 6 is not "
                                          r"divisible by heads 4"):
        build_model([(3,), (4, 2)], 3, ModelConfig(encoders=["mlp", "transformer"], hidden=6))
    with pytest.raises(ConfigError, match=r"kernel_size must be odd"):
        build_model([(1, 4, 4), (3,)], 3, ModelConfig(encoders=["cnn", "mlp"], encoders_args=[{"kernel_size": 4}, {}]))


def test_per_modality_arguments_win_over_shared_ones():
    cfg = ModelConfig(encoders=["cnn", "conv1d"], hidden=4, latent=LATENT, encoder_args={"kernel_size": 5},
                      encoders_args=[{"hidden": 2, "latent": 7}, {"depth": 1}])
    model = build_model([(1, 6, 6), (5, 3)], 3, cfg)
    cnn, c1d = model.encoders
    assert cnn.features[0].out_channels == 2 and cnn.features[0].kernel_size == (5, 5) and cnn.out_dim == 7
    assert c1d.features[0].out_channels == 4 and c1d.features[0].kernel_size == (5,)
    assert sum(isinstance(m, nn.Conv1d) for m in c1d.modules()) == 1
    assert model.latent_dims == [7, LATENT]
    out = model([torch.randn(2, 1, 6, 6), torch.randn(2, 5, 3)])
    assert out.fused.shape == (2, 3) and [z.shape[1] for z in out.z] == [7, LATENT]


def test_resnet18_without_a_working_torchvision(tmp_path, monkeypatch):
    """A torchvision that raises while imported (its CUDA build beside a CPU torch does) -> built-in trunk."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    enc = _build("resnet18", (1, 8, 8))
    assert enc.impl == "builtin" and isinstance(enc.trunk, ResNet18)
    assert enc(torch.randn(2, 1, 8, 8)).shape == (2, LATENT)
