"""The Transformer baseline of the paper: a GPT-2 style decoder (the Decision-Transformer backbone).

Architecture: a learned absolute position embedding (GPT-2 ``wpe``) is added to the input inside the
backbone, then ``num_blocks`` pre-LN blocks ``x = x + Attn(LN1(x)); x = x + MLP(LN2(x))`` and a final
LayerNorm.  Attention uses one fused ``Linear(D, 3D)`` for q, k, v and
:func:`torch.nn.functional.scaled_dot_product_attention`; the MLP is ``Linear(D, rD) -> GELU -> Linear(rD, D)``.

Recurrent inference keeps a KV cache in the :class:`~lram.models.state.RecurrentState`:

* ``k.{i}``, ``v.{i}``: ``[B, num_heads, capacity, head_dim]`` fp32 keys / values of block ``i``;
* ``length``: ``[B]`` int64, the number of tokens each row has seen since its last reset.

Rows may have different lengths (environments reset at different times), so tokens are written to
per-row slots and attention masks the slots of each row separately.  Without ``kv_window`` the slot of
a token is its index (the capacity grows by doubling, up to ``max_positions``); with ``kv_window`` the
cache is a ring buffer of ``kv_window + kv_margin`` slots and each query sees the ``kv_window`` most
recent tokens including itself (the parallel forward uses the same banded causal mask); through the
stacked blocks the output still depends on up to ``num_blocks * (kv_window - 1) + 1`` tokens.

``step`` writes into the cache tensors **in place** (no copy of the cache per step; whole-history caches
grow by doubling), so the returned state shares tensors with the input state: treat the input state as
consumed and :meth:`RecurrentState.clone` it to branch (``RecurrentState.rows`` always copies, so a state
of some rows is independent of the one it came from).  The in-place path is taken when no gradient is recorded
(``torch.no_grad`` / ``torch.inference_mode``); with autograd on, writes copy the cache so that backward
stays valid (correct, but slow for inference).

Inference implementation: :meth:`~lram.models.backbone.Backbone.prepare_for_inference` with
``step_kernel`` "auto" or "fused" switches the block's linear layers to lram's few-rows CPU kernel
(attention stays SDPA); an unprepared backbone, or ``step_kernel="torch"``, uses BLAS.

Positions are indices since the row's last reset; a position ``>= max_positions`` raises ``ValueError``
(they are never clamped): set ``max_positions`` to the longest history in tokens the model must handle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lram.models.backbone import Backbone
from lram.models.kernels import STEP_KERNELS
from lram.models.layers import Linear
from lram.models.state import RecurrentState
from lram.utils.checks import check_choice, check_positive_int

_INITIAL_CAPACITY = 256  # slots of a fresh whole-history cache (grows by doubling)


@dataclass
class TransformerConfig:
    """Configuration of :class:`TransformerBackbone`.

    ``kv_window``: None keeps the whole history in the KV cache; an int keeps the last ``kv_window``
    *tokens* (the policy converts timesteps to tokens).  ``kv_margin``: extra ring-buffer slots in window
    mode; at most ``kv_margin + 1`` tokens are written per attention call.  ``prefill_chunk``: sequences
    longer than this (or continuing from a state) are processed in query chunks of this size, so memory
    stays linear in the sequence length.  ``step_kernel``: "auto" (lram's row kernel in the linear layers
    at inference when the CPU kernels load), "fused" (require it) or "torch" (BLAS only); it takes effect
    through ``prepare_for_inference()``.
    """

    d_model: int
    num_blocks: int
    head_dim: int = 64
    mlp_ratio: int = 4
    max_positions: int = 1600
    kv_window: int | None = None
    kv_margin: int = 128
    ln_eps: float = 1e-5
    prefill_chunk: int = 1024
    step_kernel: str = "auto"

    def __post_init__(self) -> None:
        check_choice("step_kernel", self.step_kernel, STEP_KERNELS)
        for name in ("d_model", "num_blocks", "head_dim", "mlp_ratio", "max_positions", "kv_margin", "prefill_chunk"):
            check_positive_int(name, getattr(self, name))
        if self.kv_window is not None:
            check_positive_int("kv_window", self.kv_window)
        if self.d_model % self.head_dim != 0:
            raise ValueError(
                f"head_dim: d_model={self.d_model} must be divisible by head_dim={self.head_dim} "
                f"(num_heads = d_model // head_dim)"
            )
        if not self.ln_eps > 0:
            raise ValueError(f"ln_eps: expected a positive float, got {self.ln_eps!r}")

    @property
    def num_heads(self) -> int:
        return self.d_model // self.head_dim


class _CachePlan:
    """Where ``n`` new tokens go in the KV cache and which slots each of them may attend to.

    Built once per chunk and shared by all blocks, so the per-block work is: write k/v, attend, project.
    """

    __slots__ = ("pos", "slots", "rows", "start", "span", "mask", "inplace")

    def __init__(
        self, length: torch.Tensor, lo: int, hi: int, n: int, capacity: int, window: int | None, inplace: bool
    ):
        dev = length.device
        steps = torch.arange(n, device=dev)
        self.pos = length[:, None] + steps  # [B, n] token index of each new token
        self.inplace = inplace
        self.rows = torch.arange(length.shape[0], device=dev)[:, None]
        if window is None:
            # slot == token index; attend to slots [0, hi + n) masked per row to slot <= query index
            self.slots = self.pos
            self.span = hi + n
            self.start = lo if lo == hi else None
            if lo == hi and n == 1:
                self.mask = None  # every visible slot is in the past
            else:
                slot = torch.arange(self.span, device=dev)
                self.mask = (slot <= self.pos[:, :, None])[:, None]
        else:
            # ring buffer: slot = index mod capacity; after the write, slot s holds the latest token
            # tok(s) <= end that is congruent to s, and a query at q sees tokens in (q - window, q].
            self.slots = self.pos % capacity
            self.span = capacity
            first = lo % capacity
            self.start = first if lo == hi and first + n <= capacity else None
            end = (length + (n - 1))[:, None]
            tok = end - (end - torch.arange(capacity, device=dev)) % capacity  # [B, C]
            tok, q = tok[:, None, :], self.pos[:, :, None]
            self.mask = ((tok >= 0) & (tok <= q) & (tok > q - window))[:, None]

    def write(self, cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Store ``new`` [B, H, n, hd] in ``cache`` [B, H, C, hd] (in place unless autograd needs a copy)."""
        if not self.inplace:
            cache = cache.clone()
        if self.start is not None:
            cache[:, :, self.start : self.start + new.shape[2]] = new
        else:
            cache[self.rows, :, self.slots] = new.transpose(1, 2).to(cache.dtype)
        return cache

    def visible(self, cache: torch.Tensor) -> torch.Tensor:
        """The part of the cache that attention reads (a view)."""
        return cache if self.span == cache.shape[2] else cache[:, :, : self.span]


class Attention(nn.Module):
    """Causal multi-head self-attention; ``forward`` on a whole sequence, ``step`` against a KV cache."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = Linear(cfg.d_model, cfg.d_model)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v  # each [B, H, T, hd]

    def _out(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        B, _, T, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, T, -1).to(dtype))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool):
        """Attention over ``x`` itself; returns the output and this sequence's k, v (for a cache)."""
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self._out(y, x.dtype), k, v

    def step(self, x: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor, plan: _CachePlan):
        """The same attention for new tokens: write their k, v to the cache, attend to the visible slots."""
        q, k, v = self._qkv(x)
        ck, cv = plan.write(ck, k), plan.write(cv, v)
        y = F.scaled_dot_product_attention(q.to(ck.dtype), plan.visible(ck), plan.visible(cv), attn_mask=plan.mask)
        return self._out(y, x.dtype), ck, cv


class MLP(nn.Module):
    """Position-wise feed-forward: Linear -> exact GELU -> Linear."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.proj = Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """GPT-2 pre-LN block; ``forward`` and ``step`` differ only in how attention gets its keys."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool):
        a, k, v = self.attn(self.ln1(x), mask, is_causal)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v

    def step(self, x: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor, plan: _CachePlan):
        a, ck, cv = self.attn.step(self.ln1(x), ck, cv, plan)
        x = x + a
        return x + self.mlp(self.ln2(x)), ck, cv


class TransformerBackbone(Backbone):
    """GPT-2 Decision-Transformer backbone ``[B, T, D] -> [B, T, D]`` with a KV-cache recurrent mode.

    ``forward(x)`` on a fresh sequence of at most ``prefill_chunk`` tokens is one SDPA call per block
    (``is_causal``, or a banded mask when ``kv_window < T``); longer sequences and continuations from a
    state run in chunks through the cached path of ``step``.  ``forward(history)`` returns the state after
    the history (prefill).  Positions ``>= max_positions`` raise ``ValueError``.
    """

    kind = "transformer"

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.wpe = nn.Embedding(config.max_positions, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_blocks))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.ln_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections N(0, 0.02 / sqrt(2 L))."""
        out_std = 0.02 / math.sqrt(2 * self.config.num_blocks)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                std = out_std if name.endswith(".proj") else 0.02
                nn.init.normal_(m.weight, 0.0, std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.wpe.weight, 0.0, 0.02)

    def state_fields(self) -> tuple[str, ...]:
        return ("d_model", "num_blocks", "head_dim", "kv_window")

    # ------------------------------------------------------------------ state
    def _init_state(
        self, batch_size: int, device: torch.device, capacity: int | None = None
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        if capacity is None:
            capacity = (
                min(cfg.max_positions, _INITIAL_CAPACITY) if cfg.kv_window is None else cfg.kv_window + cfg.kv_margin
            )
        shape = (batch_size, cfg.num_heads, capacity, cfg.head_dim)
        tensors: dict[str, torch.Tensor] = {}
        for i in range(cfg.num_blocks):
            tensors[f"k.{i}"] = torch.zeros(shape, device=device, dtype=torch.float32)
            tensors[f"v.{i}"] = torch.zeros(shape, device=device, dtype=torch.float32)
        tensors["length"] = torch.zeros(batch_size, device=device, dtype=torch.int64)
        return tensors

    def _reset_state(self, state: RecurrentState, mask: torch.Tensor) -> RecurrentState:
        """Only the lengths restart; stale cache slots are masked until they are overwritten."""
        tensors = dict(state.tensors)
        tensors["length"] = state["length"].masked_fill(mask, 0)
        return RecurrentState(tensors, state.signature)

    def _check_positions(self, last: int) -> None:
        mp = self.config.max_positions
        if last >= mp:
            raise ValueError(
                f"position {last} reached but max_positions={mp} (positions 0..{mp - 1} have embeddings): "
                f"the history since the last reset is too long; raise max_positions or reset the state"
            )

    # ---------------------------------------------------------------- forward
    def _forward(self, x, state, return_state):
        B, T, _ = x.shape
        if state is not None or T > self.config.prefill_chunk:
            state = self.init_state(B, x.device) if state is None else state
            y, state = self._advance(x, state)
            return y, (state if return_state else None)
        self._check_positions(T - 1)
        h = x + self.wpe.weight[:T].to(x.dtype)
        window = self.config.kv_window
        mask, causal = None, True
        if window is not None and T > window:  # banded causal mask: keys in (q - window, q]
            i = torch.arange(T, device=x.device)
            d = i[:, None] - i[None, :]
            mask, causal = (d >= 0) & (d < window), False
        kvs = []
        for blk in self.blocks:
            h, k, v = blk(h, mask, causal)
            kvs.append((k, v))
        y = self.ln_f(h)
        return y, (self._state_from_kv(kvs, B, T, x.device) if return_state else None)

    def _state_from_kv(self, kvs, B: int, T: int, device: torch.device) -> RecurrentState:
        """The cache after a fresh sequence of ``T`` tokens whose per-block k, v are ``kvs``."""
        cfg = self.config
        if cfg.kv_window is None:
            tensors = self._init_state(B, device, self._capacity(T))
            first, slots = 0, slice(0, T)
        else:
            tensors = self._init_state(B, device)
            cap = tensors["k.0"].shape[2]
            first = max(0, T - cap)
            slots = torch.arange(first, T, device=device) % cap
        for i, (k, v) in enumerate(kvs):
            tensors[f"k.{i}"][:, :, slots] = k[:, :, first:].to(torch.float32)
            tensors[f"v.{i}"][:, :, slots] = v[:, :, first:].to(torch.float32)
        tensors["length"].fill_(T)
        return RecurrentState(tensors, self.state_signature())

    # ------------------------------------------------------------------- step
    def _step(self, x, state):
        return self._advance(x, state)

    def _advance(self, x: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """Run ``x`` [B, T, D] through the cached path, in chunks, starting from ``state``."""
        cfg = self.config
        B, T, _ = x.shape
        length = state["length"]
        lo, hi = (int(v) for v in torch.aminmax(length))
        self._check_positions(hi + T - 1)
        ks = [state[f"k.{i}"] for i in range(cfg.num_blocks)]
        vs = [state[f"v.{i}"] for i in range(cfg.num_blocks)]
        cap = ks[0].shape[2]
        if cfg.kv_window is None:
            chunk = cfg.prefill_chunk
            if hi + T > cap:  # grow by doubling (amortised), never beyond max_positions
                new_cap = max(self._capacity(hi + T), min(cfg.max_positions, 2 * cap))
                ks = [self._grow(c, new_cap) for c in ks]
                vs = [self._grow(c, new_cap) for c in vs]
                cap = new_cap
        else:
            chunk = min(cfg.prefill_chunk, cap - cfg.kv_window + 1)
            if chunk < 1:
                raise ValueError(f"state: ring buffer of {cap} slots is smaller than kv_window={cfg.kv_window}")
        inplace = not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())))
        outs = []
        for t0 in range(0, T, chunk):
            xc = x[:, t0 : t0 + chunk]
            n = xc.shape[1]
            plan = _CachePlan(length, lo, hi, n, cap, cfg.kv_window, inplace)
            h = xc + self.wpe(plan.pos).to(xc.dtype)
            for i, blk in enumerate(self.blocks):
                h, ks[i], vs[i] = blk.step(h, ks[i], vs[i], plan)
            outs.append(self.ln_f(h))
            length, lo, hi = length + n, lo + n, hi + n
        tensors = {}
        for i in range(cfg.num_blocks):
            tensors[f"k.{i}"], tensors[f"v.{i}"] = ks[i], vs[i]
        tensors["length"] = length
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return y, RecurrentState(tensors, state.signature)

    def _capacity(self, needed: int) -> int:
        """Whole-history cache size for ``needed`` tokens: rounded up with headroom, at most max_positions."""
        rounded = -(-(needed + 1) // _INITIAL_CAPACITY) * _INITIAL_CAPACITY
        return min(self.config.max_positions, rounded)

    @staticmethod
    def _grow(cache: torch.Tensor, capacity: int) -> torch.Tensor:
        B, H, C, hd = cache.shape
        out = cache.new_zeros(B, H, capacity, hd)
        out[:, :, :C] = cache
        return out
