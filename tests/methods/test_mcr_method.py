"""The MCR plug-in: one training step through the hooks; the schedule of lambda_M."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.helpers_data import toy_dataset
from tests.mcr.reference import contrastive_reference, random_batch, tiny_net

from mcrlab.config import ConfigError, ModelConfig, RunConfig, load_config
from mcrlab.engine.fit import (
    _optimizer,
    _param_groups,
    _set_player_lr,
    adaptive_multipliers,
    compile_options,
    fit,
)
from mcrlab.mcr import draw_perturbation, game_term_reference
from mcrlab.methods import REGISTRY, StepContext
from mcrlab.methods.mcr import MCRParams, regulariser_schedule
from mcrlab.models.net import MultimodalNet


def _setup(fusion: str = "late", **params):
    torch.manual_seed(0)
    model = MultimodalNet([5, 3], 3, ModelConfig(hidden=8, depth=1, latent=6, fusion=fusion, fusion_hidden=8))
    method = REGISTRY["mcr"](MCRParams(**params), model, 3)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)]
    y = torch.randint(0, 3, (16,), generator=g)
    return model, method, xs, y


def _floats(logs: dict) -> dict[str, float]:
    """The step's logs (0-d tensors and floats) as host floats, as the training loop reads them."""
    return {k: float(v) for k, v in logs.items()}


def _ctx(epoch=0, step=0, epochs=10, steps=4, seed=0):
    return StepContext(epoch=epoch, step=step, global_step=epoch * steps + step, epochs=epochs,
                       steps_per_epoch=steps, generator=torch.Generator().manual_seed(seed),
                       device=torch.device("cpu"))


@pytest.mark.parametrize("fusion", ["late", "mlp"])
@pytest.mark.parametrize("extra", [{}, {"lambda_b": 0.1}, {"lambda_b": 0.1, "irrelevant_bound": "club"},
                                   {"strategy": "collaborative", "perturbation": "noise", "divergence": "kl",
                                    "shared_bound": "infonce", "reference_grad": "full"}])
def test_one_training_step_through_the_hooks(fusion, extra):
    model, method, xs, y = _setup(fusion, num_perms=4, **extra)
    extra_mods = method.extra_modules()
    params = list(model.parameters()) + (list(extra_mods.parameters()) if extra_mods is not None else [])
    opt = torch.optim.Adam(params, lr=1e-2)
    ctx = _ctx()
    res = method.training_step(model, xs, y, ctx)
    assert torch.isfinite(res.loss) and not res.backward_done
    res.loss.backward()
    method.after_backward(model, ctx)
    opt.step()
    logs = _floats(res.logs)
    for key in ["loss/fused", "loss/head/0", "loss/head/1", "loss/game", "loss/shared", "mcr/D/0", "mcr/D/1",
                "mcr/lambda_m", "mcr/active"]:
        assert key in logs and math.isfinite(logs[key]), key
    if "lambda_b" in extra:
        assert math.isfinite(logs["loss/irrelevant"])
        assert ("loss/club_nll" in logs) == (extra.get("irrelevant_bound") == "club")
        assert extra_mods is not None and all(p.grad is not None for p in extra_mods.parameters())
    assert all(p.grad is not None for p in model.encoders.parameters())
    # the loss is the sum of its logged terms
    p = method.params
    total = logs["loss/fused"] + p.w_uni * (logs["loss/head/0"] + logs["loss/head/1"]) + logs["loss/game"] \
        + p.lambda_c * logs["loss/shared"] + p.lambda_b * logs.get("loss/irrelevant", 0.0) \
        + logs.get("loss/club_nll", 0.0)
    assert res.loss.item() == pytest.approx(total, rel=1e-5, abs=1e-6)


def test_step_is_deterministic_given_the_generator():
    model, method, xs, y = _setup()
    a = _floats(method.training_step(model, xs, y, _ctx(seed=3)).logs)
    b = _floats(method.training_step(model, xs, y, _ctx(seed=3)).logs)
    c = _floats(method.training_step(model, xs, y, _ctx(seed=4)).logs)
    assert a == b and a["mcr/D/0"] != c["mcr/D/0"]


def test_game_term_scales_with_the_schedule():
    params = dict(start_epoch=2, end_epoch=5, warmup_epochs=2, strategy="independent", lambda_c=0.0)
    model, method, xs, y = _setup(**params)
    games = {}
    for epoch, step in [(0, 0), (1, 3), (2, 0), (2, 3), (3, 1), (4, 0), (5, 3), (6, 0)]:
        logs = _floats(method.training_step(model, xs, y, _ctx(epoch, step, seed=7)).logs)
        games[(epoch, step)] = logs
    for key in [(0, 0), (1, 3), (6, 0)]:  # outside the window: no regulariser at all
        assert games[key]["mcr/active"] == 0.0 and "loss/game" not in games[key]
    scale = {key: regulariser_schedule(method.params, *key, 4)[1] for key in games}
    assert scale[(2, 0)] == pytest.approx(1 / 8) and scale[(2, 3)] == pytest.approx(0.5)
    assert scale[(3, 1)] == pytest.approx(0.75) and scale[(4, 0)] == 1.0 and scale[(5, 3)] == 1.0
    # with k = 0 the game's value is -lambda_M * sum D: it must follow the schedule exactly
    for key in [(2, 0), (2, 3), (3, 1), (4, 0), (5, 3)]:
        logs = games[key]
        want = -0.01 * scale[key] * (logs["mcr/D/0"] + logs["mcr/D/1"])
        assert logs["loss/game"] == pytest.approx(want, rel=1e-5)
        assert logs["mcr/lambda_m"] == pytest.approx(0.01 * scale[key])


def test_schedule_defaults_and_lambda_zero_still_logs_d():
    p = MCRParams()
    assert regulariser_schedule(p, 0, 0, 10) == (True, 1.0)
    assert regulariser_schedule(p, 99, 0, 10) == (True, 1.0)
    model, method, xs, y = _setup(lambda_m=0.0)
    logs = _floats(method.training_step(model, xs, y, _ctx()).logs)
    assert logs["loss/game"] == 0.0 and logs["mcr/D/0"] > 0


def test_config_keys_reach_the_method():
    cfg = RunConfig.from_dict({"method": {"name": "mcr", "lambda_m": 0.05, "strategy": "collaborative",
                                          "num_perms": 8, "decoder_hidden": 16}})
    assert cfg.method.params.lambda_m == 0.05 and cfg.method.params.decoder_hidden == 16


@pytest.mark.slow  # the first torch.compile in a process builds its C++ kernels (~1 min on 2 cores)
@pytest.mark.parametrize(("fusion", "mode", "extra"), [
    ("late", True, {}), ("mlp", "reduce-overhead", {}),
    ("late", "default", {"lambda_b": 0.1, "irrelevant_bound": "club", "perturbation": "noise", "divergence": "kl",
                         "shared_bound": "infonce", "strategy": "collaborative"}),
    ("mlp", True, {"lambda_b": 0.1, "perturbation": "zero", "divergence": "mse", "reference_grad": "full"})])
def test_compiled_step_gives_the_eager_loss_and_gradients(fusion, mode, extra):
    """train.compile's path for MCR: the whole step (forward, game term, divergence, SupCon, the MLP head's
    re-run) compiled by inductor gives the eager step's loss, logs and every gradient, in float64; with the
    schedule's lambda_M changing between steps without a recompilation. reduce-overhead is accepted on CPU
    (its CUDA graphs need a GPU) and computes the same."""
    model, method, xs, y = _setup(fusion, num_perms=4, warmup_epochs=2, **extra)
    model.double()
    method.extra_modules().double()
    xs = [x.double() for x in xs]
    params = list(model.parameters()) + list(method.extra_modules().parameters())
    eager = [method.training_step(model, xs, y, _ctx(epoch=0, step=s, seed=5)) for s in (0, 1)]
    g_eager = [torch.autograd.grad(r.loss, params) for r in eager]
    assert method.compile_step(compile_options(mode)) is True
    compiled = [method.training_step(model, xs, y, _ctx(epoch=0, step=0, seed=5))]
    with torch._dynamo.config.patch(error_on_recompile=True):  # lambda_M is an input, not a constant
        compiled.append(method.training_step(model, xs, y, _ctx(epoch=0, step=1, seed=5)))
    assert eager[0].logs["mcr/lambda_m"] != eager[1].logs["mcr/lambda_m"]
    for c, e, gc in zip(compiled, eager, g_eager, strict=True):
        assert "CompiledFunction" in type(c.loss.grad_fn).__name__  # the loss itself came out of inductor
        torch.testing.assert_close(c.loss, e.loss, rtol=1e-12, atol=1e-13)
        for a, b in zip(torch.autograd.grad(c.loss, params), gc, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert _floats(c.logs) == pytest.approx(_floats(e.logs), rel=1e-12, abs=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "flag"), [("mcr", "reduce-overhead"), ("joint", "true")])
def test_fit_with_train_compile_matches_eager(method, flag):
    """Through fit: MCR compiles its whole step, joint its forward (the default hook); same run as eager."""
    runs = []
    for setting in ("false", flag):
        cfg = load_config(None, ["train.epochs=1", "train.batch_size=32", "train.probe_epochs=0",
                                 f"method.name={method}", f"train.compile={setting}"]
                          + (["method.num_perms=4"] if method == "mcr" else []))
        runs.append(fit(cfg, dataset=toy_dataset()))
    assert runs[1]["train/loss"] == pytest.approx(runs[0]["train/loss"], rel=1e-5)
    assert runs[1]["val/acc"] == pytest.approx(runs[0]["val/acc"], abs=1e-6)


@pytest.mark.parametrize(("value", "options"), [(True, {}), ("default", {}), ("reduce-overhead",
                         {"mode": "reduce-overhead"}), ("max-autotune", {"mode": "max-autotune"})])
def test_train_compile_accepts_the_modes(value, options):
    text = {True: "true"}.get(value, value)
    cfg = load_config(None, [f"train.compile={text}"])
    assert cfg.train.compile == value and compile_options(cfg.train.compile) == options
    assert load_config(None, ["train.compile=false"]).train.compile is False


@pytest.mark.parametrize("bad", ["fast", "1", "[true]"])
def test_train_compile_rejects_other_values(bad):
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(None, [f"train.compile={bad}"])


# ---- tests that kill the mutants (issue 17 item 4): the plug-in's total loss against the reference ----

K_OF = {"greedy": -1.0, "independent": 0.0, "collaborative": 1.0}  # written out, not imported


def _double_mcr(fusion: str, in_dims: tuple[int, ...], **params):
    model = tiny_net(fusion, in_dims, seed=4)
    method = REGISTRY["mcr"](MCRParams(shared_dim=4, **params), model, 3)
    if method.extra_modules() is not None:
        method.extra_modules().double()
    xs, y = random_batch(in_dims, batch=8, seed=6)
    return model, method, xs, y


def _all_params(model, method) -> list[torch.Tensor]:
    extra = method.extra_modules()
    return list(model.parameters()) + (list(extra.parameters()) if extra is not None else [])


def _reference_total(model, method, xs, y, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L = CE(fused) + w_uni sum CE(heads) + R_game (literal reference) + lambda_C L_shared (autograd
    reference), with the same perturbation draw as the plug-in's; -> (loss, R_game)."""
    p = method.params
    out = model(xs)
    loss = F.cross_entropy(out.fused, y) + p.w_uni * sum(F.cross_entropy(h, y) for h in out.heads)
    pert = draw_perturbation(p.perturbation, p.num_perms, out.z, torch.Generator().manual_seed(seed))
    r = game_term_reference(out, model.fusion, pert, lambda_m=p.lambda_m, k=K_OF[p.strategy],
                            divergence=p.divergence, reference_grad=p.reference_grad)
    loss = loss + r
    if p.lambda_c > 0:
        shared = contrastive_reference(method.extra_modules()["shared"](out.z), y, p.temperature, p.shared_bound)
        loss = loss + p.lambda_c * shared
    return loss, r


def _plugin_total(model, method, xs, y, seed: int):
    res = method.training_step(model, xs, y, _ctx(seed=seed))
    return res.loss, _floats(res.logs)


OPTIONS = [dict(), dict(divergence="kl"), dict(divergence="mse", reference_grad="full"),
           dict(perturbation="noise"), dict(perturbation="zero", shared_bound="infonce")]


@pytest.mark.parametrize("in_dims", [(4, 3), (4, 3, 2)])
@pytest.mark.parametrize("fusion", ["late", "mlp"])
@pytest.mark.parametrize("strategy", list(K_OF))
@pytest.mark.parametrize("opts", OPTIONS)
def test_total_loss_gradients_equal_the_reference(in_dims, fusion, strategy, opts):
    """Every parameter's gradient of the plug-in's total loss equals the reference's: catches a detached or
    dropped game term (greedy M=2 has game VALUE 0), swapped strategies, options that never reach the maths."""
    model, method, xs, y = _double_mcr(fusion, in_dims, strategy=strategy, lambda_m=0.5, num_perms=3,
                                       lambda_c=0.2, **opts)
    params = _all_params(model, method)
    got, logs = _plugin_total(model, method, xs, y, seed=9)
    want, r = _reference_total(model, method, xs, y, seed=9)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert logs["loss/game"] == pytest.approx(r.item(), abs=1e-10)
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_greedy_two_players_game_has_zero_value_but_moves_the_encoders():
    """loss + r_game.detach() would log and add the same value (0 for greedy, M=2): only gradients tell."""
    model, method, xs, y = _double_mcr("late", (4, 3), strategy="greedy", lambda_m=0.5, lambda_c=0.0,
                                       num_perms=4)
    with_game, logs = _plugin_total(model, method, xs, y, seed=2)
    assert logs["loss/game"] == pytest.approx(0.0, abs=1e-12)
    method.params.lambda_m = 0.0
    without, _ = _plugin_total(model, method, xs, y, seed=2)
    enc = list(model.encoders.parameters())
    diff = [(a - b).abs().max() for a, b in zip(torch.autograd.grad(with_game, enc),
                                                torch.autograd.grad(without, enc), strict=True)]
    assert max(diff) > 1e-6


@pytest.mark.parametrize("M", [2, 3])
def test_logged_game_term_is_the_added_term_and_the_spec_value(M):
    """loss(lambda) - loss(lambda = 0) == logged loss/game; collaborative's value is -lambda sum_j D_j and
    independent's too, greedy's -lambda (2 - M) sum_j D_j."""
    in_dims = (4, 3, 2)[:M]
    for strategy, scale in [("collaborative", 1.0), ("independent", 1.0), ("greedy", 2.0 - M)]:
        model, method, xs, y = _double_mcr("late", in_dims, strategy=strategy, lambda_m=0.5, lambda_c=0.0)
        total, logs = _plugin_total(model, method, xs, y, seed=3)
        method.params.lambda_m = 0.0
        base, _ = _plugin_total(model, method, xs, y, seed=3)
        added = (total - base).item()
        assert logs["loss/game"] == pytest.approx(added, abs=1e-12)
        d_sum = sum(logs[f"mcr/D/{m}"] for m in range(M))
        assert added == pytest.approx(-0.5 * scale * d_sum, abs=1e-12)


def _grads_of(model, method, xs, y, seed=1) -> torch.Tensor:
    loss, _ = _plugin_total(model, method, xs, y, seed)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


@pytest.mark.parametrize("option,values", [("strategy", ["greedy", "independent", "collaborative"]),
                                           ("reference_grad", ["same", "full"]),
                                           ("divergence", ["jsd", "kl", "mse"]),
                                           ("perturbation", ["permute", "noise", "zero"])])
def test_each_option_changes_the_computed_gradient(option, values):
    grads = []
    for v in values:
        model, method, xs, y = _double_mcr("late", (4, 3), lambda_m=0.5, lambda_c=0.0, **{option: v})
        grads.append(_grads_of(model, method, xs, y))
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert (grads[i] - grads[j]).abs().max() > 1e-8, (values[i], values[j])


@pytest.mark.parametrize("option,values", [("divergence", ["jsd", "kl", "mse"]),
                                           ("perturbation", ["permute", "noise", "zero"])])
def test_each_option_changes_the_logged_unique_information(option, values):
    ds = []
    for v in values:
        model, method, xs, y = _double_mcr("late", (4, 3), lambda_c=0.0, **{option: v})
        ds.append(_plugin_total(model, method, xs, y, seed=1)[1]["mcr/D/0"])
    assert len({round(d, 12) for d in ds}) == len(values)


def test_player_groups_hold_exactly_each_players_parameters():
    """Group m = encoder m + unimodal head m + W_m (late fusion); the bias and extras in the base group."""
    model, method, _, _ = _double_mcr("late", (4, 3, 2), lambda_c=0.1)
    groups = _param_groups(model, method, 0.1, [1.0, 2.0, 3.0])
    ids = [{id(p) for p in g["params"]} for g in groups]
    for m in range(3):
        want = {id(p) for mod in (model.encoders[m], model.heads[m]) for p in mod.parameters()}
        want.add(id(model.fusion.proj[m].weight))
        assert ids[m] == want and groups[m]["player"] == m
    assert groups[3]["player"] == -1 and id(model.fusion.bias) in ids[3]
    assert {id(p) for p in method.extra_modules().parameters()} <= ids[3]
    assert sum(len(i) for i in ids) == len(set().union(*ids))  # no parameter in two groups


@pytest.mark.parametrize("fusion", ["late", "mlp"])
def test_each_player_moves_by_its_own_learning_rate(fusion):
    """The actual parameter update of a plain SGD step with unit gradients is lr * r_m per player (and lr
    for the rest), after construction and after ``_set_player_lr`` (the adaptive mode's path)."""
    model, method, _, _ = _double_mcr(fusion, (4, 3, 2), lambda_c=0.1)
    cfg = load_config(None, ["train.optimizer=sgd", "train.momentum=0", "train.weight_decay=0"])
    lr = 0.1
    opt = _optimizer(cfg, _param_groups(model, method, lr, [2.0, 0.5, 3.0]))
    player = {id(p): m for m in range(3) for mod in model.player_modules(m) for p in mod.parameters()}
    params = [p for g in opt.param_groups for p in g["params"]]
    for mult in ([2.0, 0.5, 3.0], [0.25, 4.0, 1.0]):
        _set_player_lr(opt, lr, mult)
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        for p, b in zip(params, before, strict=True):
            step = lr * (mult[player[id(p)]] if id(p) in player else 1.0)
            torch.testing.assert_close(b - p.detach(), torch.full_like(b, step), rtol=1e-12, atol=1e-12)


def test_adaptive_multipliers_band_edges():
    band = [0.2, 5.0]
    # no influence at all: the top of the band (the limit of (mean / D_m) as D_m -> 0)
    assert adaptive_multipliers([1.0, 1.0], [0.4, 0.0], band, 1.0) == pytest.approx([0.5, 5.0])
    assert adaptive_multipliers([2.0, 1.0], [0.4, 1e-13], band, 1.0)[1] == 5.0
    # nobody has influence: nothing to balance
    assert adaptive_multipliers([2.0, 1.0], [0.0, 0.0], band, 1.0) == [2.0, 1.0]
    # rate 0 switches the update off
    assert adaptive_multipliers([1.0, 1.0], [0.4, 0.0], band, 0.0) == [1.0, 1.0]


def test_params_window_extras_and_inactive_logs():
    assert MCRParams(start_epoch=2, end_epoch=2).end_epoch == 2  # a one-epoch window is valid
    with pytest.raises(ConfigError, match=r"^end_epoch: must be -1 or >= start_epoch$"):  # the whole line
        MCRParams(start_epoch=3, end_epoch=2)
    # one step per epoch: the warm-up reaches (epoch - start + 1) / warmup at the end of each epoch
    p = MCRParams(warmup_epochs=2)
    assert regulariser_schedule(p, 0, 0, 1) == (True, 0.5) and regulariser_schedule(p, 1, 0, 1) == (True, 1.0)
    # no auxiliary networks unless their term is on
    _, plain, _, _ = _setup(lambda_c=0.0)
    assert plain.extra_modules() is None and plain.num_classes == 3
    _, shared, _, _ = _setup(lambda_c=0.1)
    assert set(shared.extra_modules()) == {"shared"}
    # outside the window: effective lambda_M 0 in the logs
    model, method, xs, y = _setup(start_epoch=1)
    logs = _floats(method.training_step(model, xs, y, _ctx(epoch=0)).logs)
    assert logs["mcr/active"] == 0.0 and logs["mcr/lambda_m"] == 0.0


@pytest.mark.parametrize("divergence", ["kl", "mse"])
def test_lambda_zero_measures_d_with_the_configured_divergence(divergence):
    model, method, xs, y = _setup(divergence=divergence, lambda_c=0.0)
    with_game = _floats(method.training_step(model, xs, y, _ctx(seed=2)).logs)
    method.params.lambda_m = 0.0
    without = _floats(method.training_step(model, xs, y, _ctx(seed=2)).logs)
    assert without["mcr/D/0"] == pytest.approx(with_game["mcr/D/0"], rel=1e-6)
    assert without["mcr/D/1"] == pytest.approx(with_game["mcr/D/1"], rel=1e-6)
