"""Balancing methods. ``REGISTRY`` is the one hand-written table of plug-ins: adding a method is one
new module and one line here."""

from __future__ import annotations

from mcrlab.methods.base import Method, NoParams, StepContext, StepResult
from mcrlab.methods.mcr import MCR
from mcrlab.methods.simple import Joint, MultiLoss, Unimodal

REGISTRY: dict[str, type[Method]] = {
    "joint": Joint,
    "multiloss": MultiLoss,
    "unimodal": Unimodal,
    "mcr": MCR,
}

__all__ = ["REGISTRY", "Method", "NoParams", "StepContext", "StepResult"]
