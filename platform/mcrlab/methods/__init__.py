"""Balancing methods. ``REGISTRY`` is the one hand-written table of plug-ins: adding a method is one
new module and one line here."""

from __future__ import annotations

from mcrlab.methods.agm import AGM
from mcrlab.methods.amco import AMCo
from mcrlab.methods.base import Method, NoParams, StepContext, StepResult
from mcrlab.methods.cml import CML
from mcrlab.methods.dnr import DnR
from mcrlab.methods.ensemble import Ensemble
from mcrlab.methods.gradient_blending import GradientBlending
from mcrlab.methods.greedy import Greedy
from mcrlab.methods.lfm import LFM
from mcrlab.methods.mbsd import MBSD
from mcrlab.methods.mcr import MCR
from mcrlab.methods.mla import MLA
from mcrlab.methods.mlb import MLB
from mcrlab.methods.mmcosine import MMCosine
from mcrlab.methods.mmpareto import MMPareto
from mcrlab.methods.mslr import MSLR
from mcrlab.methods.ogm_ge import OGMGE
from mcrlab.methods.opm import OPM
from mcrlab.methods.pmr import PMR
from mcrlab.methods.reconboost import ReconBoost
from mcrlab.methods.remix import Remix
from mcrlab.methods.sample_valuation import SampleValuation
from mcrlab.methods.simple import Joint, MultiLoss, Unimodal
from mcrlab.methods.umt import UMT

REGISTRY: dict[str, type[Method]] = {
    # references: one modality, separately trained modalities, plain joint training
    "unimodal": Unimodal,
    "ensemble": Ensemble,
    "joint": Joint,
    "multiloss": MultiLoss,
    # gradient modulation
    "ogm_ge": OGMGE,
    "opm": OPM,
    "agm": AGM,
    "mlb": MLB,
    "greedy": Greedy,
    "amco": AMCo,
    # objectives and gradient combination
    "mmpareto": MMPareto,
    "mmcosine": MMCosine,
    "pmr": PMR,
    "gradient_blending": GradientBlending,
    "cml": CML,
    "remix": Remix,
    "lfm": LFM,
    "sample_valuation": SampleValuation,
    "umt": UMT,
    "mbsd": MBSD,
    # learning rates, alternating training, re-initialisation
    "mslr": MSLR,
    "reconboost": ReconBoost,
    "mla": MLA,
    "dnr": DnR,
    # the method under study
    "mcr": MCR,
}

__all__ = ["REGISTRY", "Method", "NoParams", "StepContext", "StepResult"]
