"""UMT against the reference (BalanceBenchmark @4c1482f, balancemm/trainer/UMT_trainer.py): teachers are the
unimodal pre-training (encoder + head trained alone), the student keeps its own initialisation, the loss is
CE + scaling * sum_m MSE(student features, teacher features), and the student's features move towards the
teachers' where joint training's do not."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.methods.loop_helpers import drive

from mcrlab.config import RunConfig
from mcrlab.engine.pretrain import pretrain_unimodal
from mcrlab.methods.base import StepContext
from mcrlab.methods.simple import Joint
from mcrlab.methods.umt import UMT, UMTParams
from mcrlab.models import build_model

CPU = torch.device("cpu")


def _cfg(**method) -> RunConfig:
    return RunConfig.from_dict({"method": {"name": "umt", **method}, "model": {"hidden": 8, "latent": 4},
                                "train": {"epochs": 3, "batch_size": 32, "seed": 1}})


def _prepare(method, cfg, data) -> None:
    """What fit does: the method gets the engine's cached unimodal pre-training as a thunk."""
    from mcrlab.engine.pretrain import load_or_pretrain

    method.prepare(cfg, data, CPU, unimodal_state=lambda: load_or_pretrain(method.model, cfg, data, CPU)[0])


def _ctx() -> StepContext:
    return StepContext(0, 0, 0, 1, 1, torch.Generator().manual_seed(0), CPU)


def test_teachers_are_the_unimodal_pretraining_and_the_student_keeps_its_init(tiny2):
    cfg = _cfg()
    torch.manual_seed(0)
    net = build_model(tiny2.dims, 3, cfg.model)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    umt = UMT(cfg.method.params, net, 3)
    _prepare(umt, cfg, tiny2)
    ref = pretrain_unimodal(cfg, tiny2)
    teachers = umt.teachers.state_dict()
    assert teachers.keys() == {k[len("encoders."):] for k in ref if k.startswith("encoders.")}
    assert all(torch.equal(teachers[k], ref["encoders." + k]) for k in teachers)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the student: untouched
    assert not any(torch.equal(teachers[k], before["encoders." + k]) for k in teachers if k.endswith("weight"))
    assert not any(p.requires_grad for p in umt.teachers.parameters())


def test_loss_by_hand_and_no_gradient_into_the_teachers(tiny2):
    cfg = _cfg(scaling=10.0)
    torch.manual_seed(0)
    net = build_model(tiny2.dims, 3, cfg.model)
    umt = UMT(cfg.method.params, net, 3)
    _prepare(umt, cfg, tiny2)
    net.double()
    umt.teachers.double()
    xs = [torch.as_tensor(x[:16]).double() for x in tiny2.splits["train"].x]
    y = torch.as_tensor(tiny2.splits["train"].y[:16])
    res = umt.training_step(net, xs, y, _ctx())
    with torch.no_grad():
        out = net(xs)
        t = [umt.teachers[m](xs[m]) for m in range(2)]
        mse = [((out.z[m] - t[m]) ** 2).sum().item() / out.z[m].numel() for m in range(2)]
        ref = F.cross_entropy(out.fused, y).item() + 10.0 * sum(mse)
    assert math.isclose(res.loss.item(), ref, rel_tol=1e-6)  # umt_loss takes the MSE in float32
    assert mse[0] > 0 and mse[1] > 0
    assert [res.logs[f"coef/umt/mse/{m}"] for m in range(2)] == pytest.approx(mse, rel=1e-6)
    res.loss.backward()
    assert all(p.grad is None for p in umt.teachers.parameters())
    assert all(p.grad is not None for p in net.encoders.parameters())


def test_without_teachers_it_refuses_with_one_message(tiny2):
    cfg = _cfg()
    net = build_model(tiny2.dims, 3, cfg.model)
    xs = [torch.as_tensor(x[:8]) for x in tiny2.splits["train"].x]
    with pytest.raises(RuntimeError, match="umt: no unimodal teachers"):
        UMT(cfg.method.params, net, 3).training_step(net, xs, torch.as_tensor(tiny2.splits["train"].y[:8]), _ctx())


@pytest.mark.parametrize("teacher_eval", [False, True])
def test_teachers_run_in_training_mode_unless_teacher_eval(teacher_eval):
    """The reference never puts its teachers in eval mode: their BatchNorm statistics follow the batches."""
    from tests.methods.test_contract import CONV_MODEL, conv_dataset

    data = conv_dataset(n_train=64)
    cfg = RunConfig.from_dict({"method": {"name": "umt", "teacher_eval": teacher_eval}, "model": CONV_MODEL,
                               "train": {"epochs": 1, "batch_size": 32}})
    torch.manual_seed(0)
    net = build_model(data.shapes, 3, cfg.model)
    umt = UMT(cfg.method.params, net, 3)
    _prepare(umt, cfg, data)
    stats = {k: v.clone() for k, v in umt.teachers.state_dict().items() if k.endswith("running_mean")}
    net.train()
    xs = [torch.as_tensor(x[:32]) for x in data.splits["train"].x]
    umt.training_step(net, xs, torch.as_tensor(data.splits["train"].y[:32]), _ctx())
    moved = any(not torch.equal(v, umt.teachers.state_dict()[k]) for k, v in stats.items())
    assert moved is (not teacher_eval)


@pytest.mark.parametrize("seed", [0, 1])
def test_student_features_approach_the_teachers_where_joint_training_does_not(seed):
    """On synthetic:imbalanced, from one initialisation and one batch order: the weak modality's features are
    closer to its teacher's under UMT than under joint training at most steps, and at the end."""
    from tests.methods.loop_helpers import imbalanced

    data = imbalanced(n_train=256, seed=seed)
    cfg = RunConfig.from_dict({"method": {"name": "umt"}, "model": {"hidden": 16, "latent": 8},
                               "train": {"epochs": 4, "batch_size": 32, "seed": seed}})
    xs = [torch.as_tensor(x) for x in data.splits["train"].x]
    dist: dict[str, list[float]] = {}
    teachers = None
    for name in ("umt", "joint"):
        torch.manual_seed(seed)
        net = build_model(data.dims, data.num_classes, cfg.model)
        method = UMT(UMTParams(), net, data.num_classes) if name == "umt" else Joint(Joint.Params(), net, data.num_classes)
        if name == "umt":
            _prepare(method, cfg, data)
            teachers = method.teachers
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
        dist[name] = []

        def record(epoch, step, net=net, name=name, teachers=teachers):
            with torch.no_grad():
                z = net.encoders[1](xs[1])
                teachers.eval()
                dist[name].append(float(F.mse_loss(z, teachers[1](xs[1]))))

        drive(method, net, data, opt, epochs=4, batch_size=32, seed=seed, on_step=record)
    closer = [u < j for u, j in zip(dist["umt"], dist["joint"], strict=True)]
    assert sum(closer) > 0.8 * len(closer)
    assert dist["umt"][-1] < 0.5 * dist["joint"][-1]


def test_reference_defaults():
    cfg = RunConfig.from_dict({"method": {"name": "umt"}})
    assert (cfg.train.optimizer, cfg.train.weight_decay) == ("adamw", 0.01)
    assert (cfg.method.params.scaling, cfg.method.params.teacher_eval) == (10.0, False)
