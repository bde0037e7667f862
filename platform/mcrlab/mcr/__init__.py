"""The MCR pieces as pure functions over tensors (see shared/design/mcr-method.md).

Public API:

- ``unique_information(model, out, *, num_perms, divergence, perturbation, generator, modalities=None,
  path="auto") -> (M,) tensor``: D_m for every modality of a batch's ``ForwardOutput``; the training loop
  calls it at evaluation for every method (under ``torch.no_grad()``). Late fusion takes the fast path
  (permuted logit contributions, O(S*B*C)); other heads are re-run batched over all S perturbations.
- ``unique_from_perturbation``: the same for an already drawn ``Perturbation``.
- ``draw_perturbation`` / ``draw_permutations`` / ``Perturbation``: permute | noise | zero draws;
  ``draw_perturbation_for``: the same draw from the sizes alone (before the forward: compiled steps).
- ``divergence(p_logits, q_logits, kind)``: per-sample jsd | kl | mse from logits; ``mean_divergence``
  and ``permuted_mean_divergence``: the same averaged over (S, B) by one fused autograd node (hot path).
- ``permute_rows``: x[..., pi_s(i), :] for all S permutations, with a gather-based backward.
- ``permuted_relu_linear``: the MLP head's tail re-run over all S permutations as one chunked node;
  ``permuted_relu_linear_divergence``: that and ``mean_divergence`` (the MLP game path), with constant
  tail weights one node that scores and differentiates each chunk while it is in cache.
- ``opaque``: under torch.compile the fused nodes run as opaque custom operators (``mcrlab::*``).
- ``game_term(out, fusion, pert, lambda_m=, k=, divergence=, reference_grad=) -> (R_game, D)`` and its
  literal twin ``game_term_reference``; ``value_scale`` (R_game / -lambda sum D); ``STRATEGY_K`` maps greedy/independent/collaborative to k.
- ``contrastive_loss`` + ``SharedProjection``: supcon | infonce lower bound of shared information.
- ``ceb_mse`` + ``CEBDecoder``, ``CLUB`` / ``club_bound``: upper bounds of task-irrelevant information.
"""

from mcrlab.mcr.divergence import (
    DIVERGENCES,
    divergence,
    inverse_permutations,
    mean_divergence,
    permuted_mean_divergence,
)
from mcrlab.mcr.game import STRATEGY_K, coefficients, game_term, game_term_reference, value_scale
from mcrlab.mcr.irrelevant import CLUB, IRRELEVANT_BOUNDS, CEBDecoder, CLUBNet, ceb_mse, club_bound
from mcrlab.mcr.perturb import (
    PERTURBATIONS,
    Perturbation,
    draw_permutations,
    draw_perturbation,
    draw_perturbation_for,
    permute_rows,
)
from mcrlab.mcr.shared import SHARED_BOUNDS, SharedProjection, contrastive_loss
from mcrlab.mcr.unique import (
    can_use_fast_path,
    fast_perturbed_logits,
    head_perturbed_logits,
    permuted_relu_linear,
    permuted_relu_linear_divergence,
    unique_from_perturbation,
    unique_information,
)

__all__ = [
    "unique_information",
    "unique_from_perturbation",
    "fast_perturbed_logits",
    "head_perturbed_logits",
    "permuted_relu_linear",
    "permuted_relu_linear_divergence",
    "can_use_fast_path",
    "Perturbation",
    "draw_perturbation",
    "draw_perturbation_for",
    "draw_permutations",
    "PERTURBATIONS",
    "permute_rows",
    "divergence",
    "mean_divergence",
    "permuted_mean_divergence",
    "inverse_permutations",
    "DIVERGENCES",
    "game_term",
    "game_term_reference",
    "coefficients",
    "value_scale",
    "STRATEGY_K",
    "contrastive_loss",
    "SharedProjection",
    "SHARED_BOUNDS",
    "ceb_mse",
    "CEBDecoder",
    "CLUB",
    "CLUBNet",
    "club_bound",
    "IRRELEVANT_BOUNDS",
]
