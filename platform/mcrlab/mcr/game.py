"""The game term R_game (mcr-method.md 2.2): each player climbs only its own utility.

    u_m    = D_m + k * sum_{j != m} D_j            k = -1 greedy, 0 independent, +1 collaborative
    R_game = -lambda_M * sum_m [ D_m^(->m) + k * sum_{j != m} D_j^(->m) ]

D_j^(->m) is D_j with every branch except player m's detached, so its gradient reaches only player m.

Who the players are:
- late linear fusion: player m owns its encoder and W_m, so its branch is the logit contribution
  l_m = W_m z_m. The fusion bias b belongs to no player and is detached.
- any other fusion head (e.g. concat -> MLP): the players are the latents z_m. The head's own
  parameters belong to no player, so inside the game term the head runs with detached parameters:
  the game moves the encoders only and the head is trained by the task losses alone. (Giving the head to
  some player would let that player change everyone's D through shared weights, which is not a move of
  its own strategy.)

reference_grad: "same" (default) builds the clean prediction p of D_j^(->m) with the same detach pattern
as q, so each term's gradient reaches only player m; "full" leaves p undetached (the released code),
so the p side of every term reaches all players (the bias/head parameters stay detached in both).

Fast form (``game_term``). Every D_j^(->m) has the same value D_j, so regroup by j: the gradient of R_game
is -lambda_M * sum_j sum_m c_mj dD_j/d(branch m) with c_jj = 1, c_mj = k. One evaluation of each D_j on
inputs  l_m' = l_m.detach() + c_mj (l_m - l_m.detach())  (value l_m, gradient scaled by c_mj) gives that
gradient. With "full", the p side of D_j collects sum_m c_mj = 1 + k(M-1) times the full gradient. The
value of R_game is -lambda_M (1 + k(M-1)) sum_j D_j (0 for greedy with M = 2), except for collaborative,
whose sum over players is M copies of one undetached -lambda_M sum_j D_j (the same gradient): the spec
reduces it to that single copy, so its value is -lambda_M sum_j D_j (``value_scale``). The fast form adds
the missing multiple as a detached constant so that its value matches too.
``game_term_reference`` computes the definition literally (explicit loops over players, terms and
permutations with explicit detaches); the tests check both agree in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from mcrlab.mcr.divergence import divergence as _divergence
from mcrlab.mcr.divergence import mean_divergence, permuted_mean_divergence
from mcrlab.mcr.perturb import Perturbation, permute_rows
from mcrlab.mcr.unique import (
    can_use_fast_path,
    fusion_weight,
    permuted_relu_linear_divergence,
    relu_linear_tail,
    split_head,
)
from mcrlab.models.net import ForwardOutput

__all__ = ["STRATEGY_K", "coefficients", "game_term", "game_term_reference", "value_scale"]

STRATEGY_K = {"greedy": -1.0, "independent": 0.0, "collaborative": 1.0}


def value_scale(num_modalities: int, k: float) -> float:
    """R_game / (-lambda_M sum_j D_j): 1 + k(M-1), except 1 for collaborative (k = +1), which the spec
    reduces to -lambda_M sum_j D_j with no detaching (M copies of it have the same gradient)."""
    return 1.0 if k == 1.0 else 1.0 + k * (num_modalities - 1)


def coefficients(num_modalities: int, k: float, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """c (M, M): c[m, j] = weight of player m's gradient in D_j; 1 on the diagonal, k elsewhere."""
    c = torch.full((num_modalities, num_modalities), float(k), dtype=dtype, device=device)
    c.fill_diagonal_(1.0)
    return c


def _detached_head(fusion: nn.Module):
    """The fusion head as a function with its parameters detached (they belong to no player)."""
    params = {n: p.detach() for n, p in fusion.named_parameters()}
    return lambda zs: functional_call(fusion, params, (zs,))


def game_term(out: ForwardOutput, fusion: nn.Module, pert: Perturbation, *, lambda_m: float | torch.Tensor,
              k: float, divergence: str = "jsd", reference_grad: str = "same", path: str = "auto"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """R_game (scalar) and the D_m it used (M,), detached, for logging. One pass over all D_j.

    out: the model's forward output on the batch; pert: this step's perturbation draw; lambda_m: a float or a
    0-d tensor (the compiled step passes a tensor, so that a changing value does not recompile).
    path: "fast" (late fusion contributions), "general" (players = latents, head re-run) or "auto".
    """
    M = len(out.z)
    fast = can_use_fast_path(out, fusion, pert.kind) if path == "auto" else path == "fast"
    if fast and out.contribs is None:
        raise ValueError("the fast path needs late fusion (per-modality contributions)")
    if fast:
        D = _game_divergences_fast(out, fusion, pert, k, divergence, reference_grad)
    else:
        D = _game_divergences_general(out, fusion, pert, k, divergence, reference_grad)
    Dd = D.detach()
    # D.sum()'s gradient is the game's; its value is scaled to the definition's by a detached constant
    r = -lambda_m * (D.sum() + (value_scale(M, k) - 1.0) * Dd.sum())
    return r, Dd


def _game_divergences_fast(out: ForwardOutput, fusion: nn.Module, pert: Perturbation, k: float,
                           divergence: str, reference_grad: str) -> torch.Tensor:
    """D_j (M,) with gradient sum_m c_mj dD_j/dl_m, from the contributions: O(M*S*B*C)."""
    assert out.contribs is not None  # game_term takes the fast path only with contributions
    L = torch.stack(out.contribs)  # (M, B, C)
    weights = [fusion_weight(fusion, j) for j in range(L.shape[0])]
    # out.fused includes the bias; detached, it never gets a gradient here
    return _additive_divergences(L, out.fused.detach(), out.z, weights, None, pert, k, divergence,
                                 reference_grad)


def _additive_divergences(U: torch.Tensor, Fd: torch.Tensor, zs: list[torch.Tensor],
                          weights: Sequence[torch.Tensor | None], tail, pert: Perturbation, k: float,
                          divergence: str, reference_grad: str,
                          last: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
    """D_j (M,) when the head is tail(sum_m u_m + b): U (M, B, K) stacked u_m, Fd (B, K) = sum + b detached.

    Late fusion: u_m = l_m, K = C, no tail. MLP head: u_m = W1_m z_m (hidden, K = H), tail = the rest;
    ``last`` = (weight, bias) of the tail when it is ReLU -> Linear (one fused node for all permutations).
    """
    M = U.shape[0]
    c = coefficients(M, k, dtype=U.dtype, device=U.device)
    Ud = U.detach()
    delta = U - Ud  # zero-valued; carries each branch's gradient
    Fj = Fd + torch.einsum("mj,mbk->jbk", c, delta)  # (M, B, K): row j = sum_m u_m' + b for D_j
    if reference_grad == "same":
        P = Fj
    else:  # "full": p is undetached in every term; term (m, j) weighs it by c_mj
        s = c.sum(0).view(M, 1, 1)  # (M, 1, 1): 1 + k(M-1)
        P = Fd + s * (U.sum(0) - Ud.sum(0))
    # c_jj = 1: modality j's own contribution enters D_j unscaled, so its perturbation can use u_j itself;
    # q_j = (F_j' - u_j) + perturbed u_j.
    if pert.kind == "permute":
        assert pert.perms is not None  # kind "permute" always carries perms (draw_perturbation)
        if tail is None:
            return permuted_mean_divergence(P, Fj - U, U, pert.perms, divergence)
        if last is not None:
            return permuted_relu_linear_divergence(tail(P), Fj - U, U, pert.perms, *last, divergence)
        pq = permute_rows(U, pert.perms)  # (M, S, B, K)
    else:
        pq = torch.stack([pert.contribution(U[j], j, zs[j], weights[j]) for j in range(M)])  # (M, S', B, K)
    Q = (Fj - U).unsqueeze(1) + pq
    if tail is not None:
        P, Q = tail(P), tail(Q)
    return mean_divergence(P, Q, divergence)


def _game_divergences_general(out: ForwardOutput, fusion: nn.Module, pert: Perturbation, k: float,
                              divergence: str, reference_grad: str) -> torch.Tensor:
    """D_j (M,) with gradient sum_m c_mj dD_j/dz_m; the head runs with detached parameters.

    MLP head: the additive identity at its first layer (see ``split_head``). Other heads: re-run once on
    all (j, s) at a time, latents stacked to (M, 1 + S', B, d_m), row 0 of axis 1 being the clean p.
    """
    zs = out.z
    M = len(zs)
    split = split_head(fusion, [z.shape[-1] for z in zs])
    if split is not None:
        ws, b, tail = split
        ws = [w.detach() for w in ws]
        tail_params = {n: p.detach() for n, p in tail.named_parameters()}
        U = torch.stack([z @ w.T for z, w in zip(zs, ws, strict=True)])  # (M, B, H)
        Fd = (U.sum(0) + b).detach()
        lin = relu_linear_tail(tail)
        last = None if lin is None else (lin.weight.detach(), None if lin.bias is None else lin.bias.detach())
        return _additive_divergences(U, Fd, zs, ws, lambda x: functional_call(tail, tail_params, (x,)),
                                     pert, k, divergence, reference_grad, last)
    head = _detached_head(fusion)
    S = pert.size
    c = coefficients(M, k, dtype=zs[0].dtype, device=zs[0].device)
    s_full = c.sum(0)
    inputs = []
    for m, z in enumerate(zs):  # position m of the head's input list
        B, d = z.shape
        zd = z.detach()
        dz = z - zd
        scaled = zd + c[m].view(M, 1, 1) * dz  # (M_j, B, d): z_m' for every term j
        p_in = scaled if reference_grad == "same" else zd + s_full.view(M, 1, 1) * dz
        q_in = scaled.unsqueeze(1).expand(M, S, B, d)
        # term j = m perturbs z_m itself (c_mm = 1, so the unscaled z_m carries the gradient)
        q_in = torch.cat([q_in[:m], pert.latent(z, m).expand(S, B, d).unsqueeze(0), q_in[m + 1:]])
        inputs.append(torch.cat([p_in.unsqueeze(1), q_in], dim=1))  # (M, 1 + S', B, d)
    logits = head(inputs)  # (M, 1 + S', B, C)
    return mean_divergence(logits[:, 0], logits[:, 1:], divergence)


# ------------------------------------------------------------------------------------------------
# literal reference: loops over players, terms and perturbations, explicit detaches


def _perturbed_row(x: torch.Tensor, pert: Perturbation, j: int, s: int, z: torch.Tensor,
                   weight: torch.Tensor | None) -> torch.Tensor:
    """Perturbation s of modality j applied to x (a latent if weight is None, else a contribution)."""
    if pert.kind == "permute":
        assert pert.perms is not None  # kind "permute" always carries perms (draw_perturbation)
        return x[pert.perms[s]]
    if pert.kind == "zero":
        return torch.zeros_like(x)
    assert pert.noise is not None  # the remaining kind, "noise", always carries noise (draw_perturbation)
    noise = pert.noise[j][s] * z.detach().std(dim=0, correction=0)
    return x + (noise if weight is None else noise @ weight.T)


def _reference_D(out: ForwardOutput, fusion: nn.Module, pert: Perturbation, j: int, live: int,
                 divergence: str, reference_grad: str, fast: bool) -> torch.Tensor:
    """D_j^(->live): D_j with every branch except player ``live``'s detached (bias/head detached)."""
    keep = [lambda t, i=i: t if i == live else t.detach() for i in range(len(out.z))]
    if fast:
        assert out.contribs is not None  # game_term_reference takes the fast path only with contributions
        ls = [keep[i](c) for i, c in enumerate(out.contribs)]
        b = (out.fused - sum(out.contribs)).detach()
        p = (sum(ls) if reference_grad == "same" else sum(out.contribs)) + b
        w = fusion_weight(fusion, j)
        w = None if w is None else keep[j](w)
        rows = []
        for s in range(pert.size):
            lj = _perturbed_row(ls[j], pert, j, s, out.z[j], w if pert.kind == "noise" else None)
            q = sum(lj if i == j else ls[i] for i in range(len(ls))) + b
            rows.append(_divergence(p, q, divergence).mean())
        return torch.stack(rows).mean()
    head = _detached_head(fusion)
    zs = [keep[i](z) for i, z in enumerate(out.z)]
    p = head(zs if reference_grad == "same" else list(out.z))
    rows = []
    for s in range(pert.size):
        zj = _perturbed_row(zs[j], pert, j, s, out.z[j], None)
        q = head([zj if i == j else zs[i] for i in range(len(zs))])
        rows.append(_divergence(p, q, divergence).mean())
    return torch.stack(rows).mean()


def game_term_reference(out: ForwardOutput, fusion: nn.Module, pert: Perturbation, *, lambda_m: float,
                        k: float, divergence: str = "jsd", reference_grad: str = "same",
                        path: str = "auto") -> torch.Tensor:
    """R_game exactly as defined, term by term (slow; for tests and for reading). For collaborative the
    gradient is the definition's and the value the spec's reduced form, -lambda_M sum_j D_j (see the
    module docstring)."""
    fast = can_use_fast_path(out, fusion, pert.kind) if path == "auto" else path == "fast"
    if fast and out.contribs is None:
        raise ValueError("the fast path needs late fusion (per-modality contributions)")
    M = len(out.z)
    total = out.fused.new_zeros(())
    for m in range(M):  # player m
        for j in range(M):  # term D_j^(->m) of player m's utility
            coef = 1.0 if j == m else k
            total = total + coef * _reference_D(out, fusion, pert, j, m, divergence, reference_grad, fast)
    if k == 1.0:  # every D_j^(->m) has the value D_j: the sum is M sum_j D_j; keep one copy's value
        total = total - (1.0 - 1.0 / M) * total.detach()
    return -lambda_m * total
