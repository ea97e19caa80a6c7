"""Models: sequence backbones with parallel and recurrent modes, and the LRAM policy built on them."""

from lram.models.backbone import Backbone
from lram.models.policy import LRAMConfig, LRAMPolicy, PolicyOutput, RecurrentAgent, TrajectoryBatch
from lram.models.presets import SIZE_PRESETS, VARIANTS
from lram.models.registry import backbone_kinds, build_backbone, make_config
from lram.models.state import RecurrentState
from lram.models.tokenizer import ActionTokenizer

__all__ = [
    "SIZE_PRESETS",
    "VARIANTS",
    "ActionTokenizer",
    "Backbone",
    "LRAMConfig",
    "LRAMPolicy",
    "PolicyOutput",
    "RecurrentAgent",
    "RecurrentState",
    "TrajectoryBatch",
    "backbone_kinds",
    "build_backbone",
    "make_config",
]
