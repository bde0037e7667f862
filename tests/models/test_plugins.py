"""User encoders: ``package.module:Callable`` imported from outside the package, the ``mcrlab.encoders``
entry-point group, and every way a plug-in can break its contract (ConfigError naming the key)."""

from __future__ import annotations

import itertools
import sys
import textwrap

import pytest
import torch

from mcrlab.config import ConfigError, ModelConfig, RunConfig
from mcrlab.models import build_model
from mcrlab.models.registry import ENTRY_POINT_GROUP, entry_point, known_names

PLUGIN = textwrap.dedent('''
    import math
    import torch
    from torch import nn

    CALLS = []

    class Enc(nn.Module):
        def __init__(self, in_shape, width):
            super().__init__()
            self.lin = nn.Linear(math.prod(in_shape), width)
            self.out_dim = width

        def forward(self, x):
            return torch.tanh(self.lin(x.flatten(1)))

    def build(in_shape, width=4):
        CALLS.append((in_shape, width))
        return Enc(in_shape, width)

    class Factory:
        @staticmethod
        def make(in_shape, width=3):
            return Enc(in_shape, width)

    not_callable = 3

    def returns_a_list(in_shape):
        return [1, 2]

    def no_out_dim(in_shape):
        return nn.Linear(math.prod(in_shape), 4)

    def bool_out_dim(in_shape):
        m = Enc(in_shape, 4)
        m.out_dim = True
        return m

    def wrong_width(in_shape):
        m = Enc(in_shape, 4)
        m.out_dim = 5
        return m

    class Mixer(nn.Module):  # drops the batch axis: (B, d) -> (d,)
        out_dim = 4
        def forward(self, x):
            return x.flatten(1)[:, :4].sum(0)

    def drops_batch(in_shape):
        return Mixer()

    def raises(in_shape):
        raise RuntimeError("boom")

    class Broken(nn.Module):
        out_dim = 4
        def forward(self, x):
            raise ValueError("bad forward")

    def broken_forward(in_shape):
        return Broken()
''')
_names = itertools.count()


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A fresh module (unique name: no sys.modules cache between tests) in tmp_path, on sys.path."""
    name = f"user_encoders_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _cfg(encoders, **kw) -> ModelConfig:
    return ModelConfig(encoders=encoders, hidden=4, latent=6, **kw)


def test_user_encoder_from_a_module_outside_the_package(plugin):
    cfg = RunConfig.from_dict({"model": {"encoders": ["mlp", f"{plugin}:build", f"{plugin}:Factory.make"],
                                         "hidden": 4, "latent": 6,
                                         "encoders_args": [{}, {"width": 7}, {}]}}).model
    model = build_model([(3,), (2, 5), (4,)], 3, cfg)
    assert sys.modules[plugin].CALLS == [((2, 5), 7)]  # in_shape as a tuple, and only the user's args
    assert [e.out_dim for e in model.encoders] == [6, 7, 3]
    assert type(model.encoders[1]).__module__ == plugin
    out = model([torch.randn(4, 3), torch.randn(4, 2, 5), torch.randn(4, 4)])
    assert out.fused.shape == (4, 3) and out.z[1].shape == (4, 7)
    out.fused.sum().backward()
    assert model.encoders[1].lin.weight.grad is not None
    # the dummy check ran in eval mode without touching train mode
    assert model.training and model.encoders[1].training


@pytest.mark.parametrize(("target", "reason"), [
    ("no_such_module_xyz:build", "cannot import 'no_such_module_xyz': ModuleNotFoundError"),
    ("{p}:missing", "module '{p}' has no attribute 'missing'"),
    ("{p}:not_callable", "'{p}:not_callable' is a int, not a callable"),
    ("{p}:returns_a_list", "{p}:returns_a_list returned a list, not a torch.nn.Module"),
    ("{p}:no_out_dim", "returned a module without an integer out_dim >= 1 (out_dim = None)"),
    ("{p}:bool_out_dim", "without an integer out_dim >= 1 (out_dim = True)"),
    ("{p}:wrong_width", "maps a batch of shape (2, 3) to (2, 4), expected (2, 5) = (B, out_dim)"),
    ("{p}:drops_batch", "maps a batch of shape (2, 3) to (3,), expected (2, 4)"),
    ("{p}:raises", "raised RuntimeError: boom"),
    ("{p}:broken_forward", "fails on a dummy batch of shape (2, 3): ValueError: bad forward"),
])
def test_a_broken_plugin_is_a_config_error_naming_the_key(plugin, target, reason):
    target = target.format(p=plugin)
    with pytest.raises(ConfigError) as err:
        build_model([(4,), (3,)], 3, _cfg(["mlp", target]))
    msg = str(err.value)
    assert msg.startswith("model.encoders[1]: ") and reason.format(p=plugin) in msg, msg


def test_a_module_that_raises_on_import(tmp_path, monkeypatch):
    (tmp_path / "raising_mod_enc.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^model.encoder \(modality 0\): cannot import 'raising_mod_enc': "
                                          r"RuntimeError: no GPU here"):
        build_model([(4,), (3,)], 3, ModelConfig(encoder="raising_mod_enc:build"))
    sys.modules.pop("raising_mod_enc", None)


@pytest.mark.parametrize(("model", "message"), [
    ({"encoder": "cnnn"}, "x.yaml: model.encoder: unknown encoder 'cnnn' (known: mlp, cnn, resnet18, conv1d, "
                          "transformer"),
    ({"encoders": ["mlp", "pkg:"]}, "x.yaml: model.encoders[1]: 'pkg:' is not of the form package.module:Callable"),
    ({"encoders": ["mlp", 3]}, "x.yaml: model.encoders[1]: expected an encoder name, got 3"),
    ({"encoders": ["cnn", "mlp"], "encoders_args": [{}]}, "x.yaml: model.encoders_args: 1 mapping(s) for 2"),
    ({"encoders_args": [{}, 5]}, "x.yaml: model.encoders_args[1]: expected a mapping"),
    ({"encoder": "cnn", "encoder_args": {"heads": 2}}, "x.yaml: model.encoder: cnn takes no argument 'heads'"),
    ({"encoders": ["cnn", "transformer"], "encoders_args": [{}, {"kernel_size": 3}]},
     "x.yaml: model.encoders[1]: transformer takes no argument 'kernel_size'"),
    ({"encoder_args": [1]}, "x.yaml: model.encoder_args: expected a mapping"),
])
def test_names_and_arguments_are_checked_when_the_config_is_built(model, message):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"model": model}, "x.yaml")
    assert str(err.value).startswith(message), str(err.value)


def test_overrides_name_encoders_and_arguments():
    cfg = RunConfig().replace(["model.encoders=[cnn, conv1d]", "model.encoder_args={kernel_size: 5}",
                               "model.encoders_args=[{hidden: 8}, {}]", "model.channels_last=true"])
    m = cfg.model
    assert m.encoders == ["cnn", "conv1d"] and m.encoder_args == {"kernel_size": 5}
    assert m.encoders_args == [{"hidden": 8}, {}] and m.channels_last
    assert cfg.flat()["model.encoders"] == ["cnn", "conv1d"]
    assert RunConfig.from_dict(cfg.to_dict()).hash() == cfg.hash()


def _dist(tmp_path, name: str, lines: str) -> None:
    """A minimal installed distribution (dist-info with an entry_points.txt) on a sys.path folder."""
    info = tmp_path / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}\n")


def test_entry_point_group_registers_names(plugin, tmp_path, monkeypatch):
    assert entry_point("tinyenc") is None
    with pytest.raises(ConfigError, match="unknown encoder 'tinyenc'"):
        ModelConfig(encoder="tinyenc")
    _dist(tmp_path, "mcrlab_test_plugin", f"tinyenc = {plugin}:build\nbadload = {plugin}:nothing_here\n"
                                          f"mlp = {plugin}:build")
    # a dist-info on sys.path is found at the next lookup; built-ins are never shadowed
    assert entry_point("tinyenc").value == f"{plugin}:build"
    names = known_names()
    assert "tinyenc" in names and names.count("mlp") == 1
    cfg = ModelConfig(encoders=["tinyenc", "mlp"], hidden=4, latent=6, encoders_args=[{"width": 2}, {}])
    model = build_model([(3,), (3,)], 2, cfg)
    assert type(model.encoders[0]).__module__ == plugin and model.encoders[0].out_dim == 2
    assert type(model.encoders[1]).__name__ == "MLPEncoder"
    with pytest.raises(ConfigError, match=r"^model.encoders\[0\]: entry point 'badload' .* does not load"):
        build_model([(3,), (3,)], 2, ModelConfig(encoders=["badload", "mlp"]))
