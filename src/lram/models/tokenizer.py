"""The shared action vocabulary: 18 discrete ids, then 256 uniform bins for continuous values in [-1, 1].

Token ids 0..17 are discrete actions (the full Atari set; Procgen's 15 map to 0..14).  Continuous values
are binned ``floor((x + 1) / (2 / 256))`` (clamped to 0..255) and shifted by 18, so ids 18..273.  The
vocabulary per action dimension is 274; a policy predicts up to ``max_act_dim = 8`` dimensions at once.

Decoding returns the **centre** of the bin (max error 1/256).  The paper's code returns the lower edge
(a -1/256 bias); ``decode="lower_edge"`` reproduces that for replication studies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lram.utils.checks import check_choice, check_range, check_tensor


@dataclass(frozen=True)
class ActionTokenizer:
    num_discrete: int = 18
    num_bins: int = 256
    low: float = -1.0
    high: float = 1.0
    decode: str = "center"  # or "lower_edge" (the paper's code)

    def __post_init__(self):
        check_choice("decode", self.decode, ("center", "lower_edge"))

    @property
    def vocab_size(self) -> int:
        return self.num_discrete + self.num_bins

    @property
    def bin_width(self) -> float:
        return (self.high - self.low) / self.num_bins

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """Values (clamped to [low, high]) -> token ids in [num_discrete, vocab_size)."""
        check_tensor("actions", x, None, floating=True)
        bins = torch.floor((x - self.low) / self.bin_width).clamp_(0, self.num_bins - 1)
        return bins.long() + self.num_discrete

    def decode_continuous(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids -> values; ids below num_discrete are treated as bin 0 (as in the paper's code)."""
        bins = (tokens - self.num_discrete).clamp(0, self.num_bins - 1).float()
        offset = 0.5 if self.decode == "center" else 0.0
        return self.low + (bins + offset) * self.bin_width

    def encode_discrete(self, a: torch.Tensor, num_actions: int | None = None) -> torch.Tensor:
        """Integer actions -> token ids (identity), checked to lie in [0, num_actions)."""
        check_tensor("actions", a, None, integer=True)
        n = self.num_discrete if num_actions is None else num_actions
        check_range("actions", a, 0, n - 1)
        return a.long()
