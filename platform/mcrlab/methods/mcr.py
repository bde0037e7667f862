"""MCR, the Multimodal Competition Regularizer (see ../shared/design/mcr-method.md).

L = CE(g(z), y) + w_uni * sum_m CE(h_m(z_m), y) + R_game + lambda_c * L_shared + lambda_b * L_irrelevant
"""

from __future__ import annotations

from dataclasses import dataclass

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import Method

STRATEGY_K = {"greedy": -1.0, "independent": 0.0, "collaborative": 1.0}


@dataclass
class MCRParams:
    w_uni: float = opt(1.0, "weight of the unimodal heads' CE losses (multi-loss)", ge=0.0)
    lambda_m: float = opt(0.01, "weight lambda_M of the unique-information game term", ge=0.0)
    strategy: str = opt("greedy", "game strategy: greedy (k=-1), independent (k=0), collaborative (k=+1)",
                        choices=tuple(STRATEGY_K))
    num_perms: int = opt(32, "S, permutations of the batch per modality", ge=1, le=1024)
    divergence: str = opt("jsd", "divergence between clean and perturbed predictions",
                          choices=("jsd", "kl", "mse"))
    reference_grad: str = opt("same", "gradient through the clean prediction p: same detach pattern as q, "
                              "or full (as in the released code)", choices=("same", "full"))
    perturbation: str = opt("permute", "how modality m's information is broken off",
                            choices=("permute", "noise", "zero"))
    lambda_c: float = opt(0.01, "weight lambda_C of the shared-information lower bound", ge=0.0)
    shared_bound: str = opt("supcon", "shared-information bound", choices=("supcon", "infonce"))
    temperature: float = opt(0.5, "temperature tau of the contrastive bound", gt=0.0)
    shared_dim: int = opt(32, "common projection width for the contrastive bound", ge=1)
    lambda_b: float = opt(0.0, "weight lambda_B of the task-irrelevant upper bound (0 = off)", ge=0.0)
    irrelevant_bound: str = opt("ceb_mse", "task-irrelevant bound", choices=("ceb_mse", "club"))
    club_hidden: int = opt(64, "hidden width of the CLUB variational network (club only)", ge=1)
    start_epoch: int = opt(0, "first epoch (0-based) with the regulariser active", ge=0)
    end_epoch: int = opt(-1, "last epoch with the regulariser active (-1 = to the end)", ge=-1)
    warmup_epochs: int = opt(0, "linear warm-up of lambda_M over this many epochs from start_epoch", ge=0)

    def __post_init__(self) -> None:
        if self.end_epoch != -1 and self.end_epoch < self.start_epoch:
            raise ConfigError("end_epoch: must be -1 or >= start_epoch")


class MCR(Method):
    name = "mcr"
    Params = MCRParams
