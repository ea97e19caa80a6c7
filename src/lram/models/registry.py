"""Backbones by name: ``build_backbone("xlstm" | "mamba" | "transformer", d_model=..., num_blocks=..., **options)``."""

from __future__ import annotations

import dataclasses
import importlib

from lram.models.backbone import Backbone

# kind -> (module, backbone class, config class)
_BACKBONES: dict[str, tuple[str, str, str]] = {
    "xlstm": ("lram.models.xlstm", "XLSTMBackbone", "XLSTMConfig"),
    "mamba": ("lram.models.mamba", "MambaBackbone", "MambaConfig"),
    "transformer": ("lram.models.transformer", "TransformerBackbone", "TransformerConfig"),
}


def backbone_kinds() -> list[str]:
    return list(_BACKBONES)


def backbone_classes(kind: str):
    """(backbone class, config class) for a kind name."""
    if kind not in _BACKBONES:
        raise ValueError(f"backbone: expected one of {backbone_kinds()}, got {kind!r}")
    module, cls, cfg = _BACKBONES[kind]
    mod = importlib.import_module(module)
    return getattr(mod, cls), getattr(mod, cfg)


def make_config(kind: str, **options):
    """Build the typed config of a backbone; unknown option names raise an error listing the valid ones."""
    _, cfg_cls = backbone_classes(kind)
    valid = [f.name for f in dataclasses.fields(cfg_cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{kind} backbone: unknown option(s) {unknown}; valid options are {valid}")
    return cfg_cls(**options)


def build_backbone(kind: str, d_model: int, num_blocks: int, **options) -> Backbone:
    """Create a backbone by name. ``options`` are fields of that backbone's config dataclass."""
    cls, _ = backbone_classes(kind)
    return cls(make_config(kind, d_model=d_model, num_blocks=num_blocks, **options))

