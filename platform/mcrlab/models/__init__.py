"""Encoders (a registry of named families and plug-ins), fusion heads and the multimodal network."""

from mcrlab.models.encoders import MLPEncoder
from mcrlab.models.fusion import LateFusion, MLPFusion
from mcrlab.models.net import ForwardOutput, MultimodalNet, build_model, use_channels_last
from mcrlab.models.registry import BUILTIN as ENCODERS
from mcrlab.models.registry import build_encoder
from mcrlab.models.sync import sync_buffers

__all__ = ["MLPEncoder", "LateFusion", "MLPFusion", "ForwardOutput", "MultimodalNet", "build_model",
           "use_channels_last", "ENCODERS", "build_encoder", "sync_buffers"]
