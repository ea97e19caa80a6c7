"""Model size presets (LRAM paper, spec section 3.1) and the parameter counts the paper reports.

Recurrent backbones (xLSTM, Mamba) use twice as many blocks as the Transformer at the same width, which
matches parameters because an mLSTM block (~6 D^2) is about half a GPT-2 block (~12 D^2).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SizePreset:
    d_model: int
    transformer_blocks: int
    slstm_at_7_1: tuple[int, ...]  # sLSTM positions of the "[7:1]" xLSTM variant at this size
    paper_params: dict[str, float] = field(default_factory=dict)  # millions, from the paper's code

    @property
    def recurrent_blocks(self) -> int:
        return 2 * self.transformer_blocks


SIZE_PRESETS: dict[str, SizePreset] = {
    # small presets for CPU experiments and tests
    "tiny": SizePreset(128, 2, (1,)),
    "small": SizePreset(256, 3, (1,)),
    # the paper's sizes; counts include its unused embedding tables and heads (see lram.models.report.paper_unused_params)
    "16M": SizePreset(512, 4, (1,), {"transformer": 16.6, "xlstm[1:0]": 16.1, "xlstm[7:1]": 16.1, "mamba": 16.7}),
    "48M": SizePreset(768, 6, (1, 3), {"transformer": 48.4, "xlstm[1:0]": 47.9, "xlstm[7:1]": 47.8, "mamba": 49.9}),
    "110M": SizePreset(
        1024, 8, (1, 3), {"transformer": 108.6, "xlstm[1:0]": 108.3, "xlstm[7:1]": 108.0, "mamba": 112.9}
    ),
    "206M": SizePreset(
        1280, 10, (1, 3, 5), {"transformer": 206.5, "xlstm[1:0]": 206.5, "xlstm[7:1]": 205.8, "mamba": 215.3}
    ),
}

VARIANTS = ("transformer", "xlstm[1:0]", "xlstm[7:1]", "mamba")


def backbone_settings(size: str, variant: str) -> tuple[str, int, int, dict]:
    """(backbone kind, d_model, num_blocks, backbone options) of a size preset and a backbone variant."""
    if size not in SIZE_PRESETS:
        raise ValueError(f"size: expected one of {list(SIZE_PRESETS)}, got {size!r}")
    if variant == "xlstm":
        variant = "xlstm[1:0]"
    if variant not in VARIANTS:
        raise ValueError(f"backbone: expected one of {list(VARIANTS) + ['xlstm']}, got {variant!r}")
    p = SIZE_PRESETS[size]
    if variant == "transformer":
        return "transformer", p.d_model, p.transformer_blocks, {}
    if variant == "mamba":
        return "mamba", p.d_model, p.recurrent_blocks, {}
    slstm = list(p.slstm_at_7_1) if variant == "xlstm[7:1]" else []
    return "xlstm", p.d_model, p.recurrent_blocks, {"slstm_at": slstm}
