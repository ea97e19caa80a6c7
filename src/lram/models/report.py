"""Parameter counts of the size presets beside the paper's (spec section 3.1).

The paper's counts come from its code, which also allocates tables and heads that it never uses: a
timestep embedding (1000 x D), an action embedding (275 x D, discarded because actions are not in the
context), and next-state / return / reward prediction heads (loss off).  lram builds none of these, so
its models are smaller by ``paper_unused_params(D)``; both figures are reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lram.models.policy import LRAMConfig, LRAMPolicy
from lram.models.presets import SIZE_PRESETS


def paper_unused_params(d_model: int, state_dim: int = 204) -> int:
    """Parameters the paper's model allocates but never uses (timestep/action tables, auxiliary heads)."""
    timestep_table = 1000 * d_model
    action_table = 275 * d_model
    state_head = d_model * state_dim + state_dim
    return_and_reward_heads = 2 * (d_model + 1)
    return timestep_table + action_table + state_head + return_and_reward_heads


def count_params(size: str, variant: str) -> int:
    """Parameters of an LRAM policy (with the image encoder) at a preset, built on the meta device."""
    with torch.device("meta"):
        model = LRAMPolicy(LRAMConfig.from_preset(size, variant))
    return model.num_parameters()


def parameter_rows(sizes: Sequence[str], variants: Sequence[str]) -> list[dict]:
    rows = []
    for size in sizes:
        preset = SIZE_PRESETS[size]
        for variant in variants:
            ours = count_params(size, variant)
            paper = preset.paper_params.get(variant)
            comparable = ours + paper_unused_params(preset.d_model)
            rows.append({
                "size": size, "backbone": variant, "lram": ours, "lram_plus_unused": comparable,
                "paper": None if paper is None else paper * 1e6,
                "diff_pct": None if paper is None else 100 * (ours / (paper * 1e6) - 1),
                "diff_pct_comparable": None if paper is None else 100 * (comparable / (paper * 1e6) - 1),
            })
    return rows


def parameter_table(sizes: Sequence[str], variants: Sequence[str]) -> str:
    lines = [f"{'size':<6}{'backbone':<13}{'lram':>10}{'paper':>10}{'diff':>8}{'+unused':>10}{'diff':>8}"]
    for r in parameter_rows(sizes, variants):
        paper = "-" if r["paper"] is None else f"{r['paper'] / 1e6:.1f}M"
        d1 = "-" if r["diff_pct"] is None else f"{r['diff_pct']:+.1f}%"
        d2 = "-" if r["diff_pct_comparable"] is None else f"{r['diff_pct_comparable']:+.1f}%"
        lines.append(f"{r['size']:<6}{r['backbone']:<13}{r['lram'] / 1e6:>9.2f}M{paper:>10}{d1:>8}"
                     f"{r['lram_plus_unused'] / 1e6:>9.2f}M{d2:>8}")
    lines.append("'+unused': lram's count plus the tables and heads the paper's code allocates but never uses.")
    return "\n".join(lines)
