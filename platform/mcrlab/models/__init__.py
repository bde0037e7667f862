"""Encoders, fusion heads and the multimodal network."""

from mcrlab.models.encoders import MLPEncoder
from mcrlab.models.fusion import LateFusion, MLPFusion
from mcrlab.models.net import ForwardOutput, MultimodalNet, build_model

__all__ = ["MLPEncoder", "LateFusion", "MLPFusion", "ForwardOutput", "MultimodalNet", "build_model"]
