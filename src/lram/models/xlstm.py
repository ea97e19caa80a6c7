"""xLSTM backbone: mLSTM and sLSTM blocks (Beck et al. 2024) as used by LRAM.

Structure (the paper's blocks, identical to ``xlstm.xLSTMBlockStack`` with mLSTM and vanilla-sLSTM blocks,
which the tests load weights from and compare against):

* **mLSTM block** (pre-LN, residual): up-projection D -> 2 x inner (inner = proj_factor * D rounded up to a
  multiple of 64); on the mLSTM branch a causal depthwise conv (k=4) + SiLU feeds q and k; v comes from the
  pre-conv branch; q/k/v use block-diagonal projections (block size 4); input and forget gates are
  Linear(3 x inner -> heads) on [q, k, v]; the mLSTM cell (matrix memory, exponential input gate, sigmoid
  forget gate, stabiliser state m) per head; multi-head norm; learnable skip of the conv output; output gate
  SiLU(z); down-projection inner -> D.
* **sLSTM block** (pre-LN, residual): causal conv (k=4) + SiLU feeding the i and f gates; z and o from the
  block input; head-wise gate projections; sLSTM cell (scalar memory, exponential gating, block-diagonal
  recurrent weights per head); multi-head norm; then a pre-LN gated GELU feed-forward (x1.3) with residual.
* post-blocks LayerNorm.

Modes.  ``forward`` runs the mLSTM cell **chunkwise** (memory linear in T: quadratic only inside chunks of
``chunk_size`` tokens) and the sLSTM cell as a scan; ``step`` on k new tokens runs the very same layer
code on a [B, k, D] slice continuing from the state, so every weight matrix is read once per call.

Stabiliser convention (a deliberate choice): a fresh state has m = -inf (stored as the finite sentinel
``M_EMPTY``), i.e. "no history".  With it the recurrent form equals the library's parallel form exactly,
for mLSTM and sLSTM alike, and the model computes in recurrent inference exactly what it was trained on in
parallel mode.  (The ``xlstm`` library's own ``step`` starts from m = 0, which changes the normaliser
max(|q.n|, exp(-m)) slightly; and its sLSTM decides "fresh" for the whole batch at once.)

mLSTM cell kernels live in :mod:`lram.models.mlstm_cells` and are chosen by name
(``XLSTMConfig.mlstm_kernel``): ``"chunkwise"`` (pure PyTorch, default), ``"recurrent"`` (token loop, a
reference), or ``"mlstm_kernels:<name>"`` to use a sequence kernel of the ``mlstm_kernels`` package (e.g.
``mlstm_kernels:chunkwise--triton_limit_chunk`` on a GPU).

Inference.  ``step`` runs PyTorch ops (the in-place cell step) unless :meth:`prepare_for_inference` chose
lram's fused CPU kernels (``step_kernel``), which then run each mLSTM block as one compiled call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lram.models.backbone import Backbone
from lram.models.kernels import STEP_KERNELS, fused_training_applies
from lram.models.kernels import training as train_ops
from lram.models.layers import Linear, exporting
from lram.models.mlstm_cells import (  # the cell kernels live apart from the model; re-exported here
    CELL_TILE,
    M_EMPTY,
    MLSTM_KERNELS,
    get_mlstm_kernel,
    mlstm_cell_kernels_available,
    mlstm_chunkwise,
    mlstm_parallel,
    mlstm_parallel_fused,
    mlstm_recurrent,
    mlstm_step_compilable,
    mlstm_step_inplace,
)
from lram.models.slstm_kernel import slstm_kernel_available, slstm_scan_fused
from lram.models.state import RecurrentState


def round_up(x: float, multiple: int = 64) -> int:
    return int(math.ceil(x / multiple) * multiple)


@dataclass
class XLSTMConfig:
    """Configuration of an xLSTM block stack (defaults: the LRAM paper's settings)."""

    d_model: int
    num_blocks: int
    slstm_at: list[int] = field(default_factory=list)  # indices of sLSTM blocks; [] = xLSTM [1:0]
    num_heads: int = 4  # mLSTM heads
    proj_factor: float = 2.0  # mLSTM up-projection
    conv_kernel: int = 4
    qkv_block_size: int = 4
    slstm_heads: int = 4
    ffn_proj_factor: float = 1.3  # sLSTM block gated feed-forward
    norm_eps: float = 1e-5
    chunk_size: int = 64  # mLSTM chunkwise kernel: tokens per chunk
    segment_tokens: int = 2048  # longer sequences are processed in segments of this many tokens
    mlstm_kernel: str = "chunkwise"
    parallel_max_tokens: int | None = None  # None: 2 x (head dim + chunk size); 0: always chunkwise
    eps: float = 1e-6  # mLSTM normaliser epsilon
    # inference step on the CPU: "auto" = the fused compiled kernel when it builds, else PyTorch ops;
    # "fused" = require the fused kernel; "torch" = PyTorch ops only (see lram.models.kernels)
    step_kernel: str = "auto"
    # training (forward + backward) on the CPU: "auto" = lram's fused CPU forward/backward kernels when they
    # build (float32, no autocast), else PyTorch ops; "fused" = require them; "torch" = PyTorch ops only
    train_kernel: str = "auto"

    def __post_init__(self):
        self.slstm_at = sorted(int(i) for i in self.slstm_at)
        for i in self.slstm_at:
            if not 0 <= i < self.num_blocks:
                raise ValueError(f"slstm_at: block index {i} out of range for num_blocks={self.num_blocks}")
        if self.d_model % self.slstm_heads and self.slstm_at:
            raise ValueError(f"d_model={self.d_model} must be divisible by slstm_heads={self.slstm_heads}")
        if self.inner_dim % self.num_heads or self.inner_dim % self.qkv_block_size:
            raise ValueError(f"inner dim {self.inner_dim} must be divisible by num_heads and qkv_block_size")
        if self.mlstm_kernel not in MLSTM_KERNELS and not self.mlstm_kernel.startswith("mlstm_kernels:"):
            raise ValueError(
                f"mlstm_kernel: expected one of {list(MLSTM_KERNELS)} or 'mlstm_kernels:<name>', got {self.mlstm_kernel!r}"
            )
        for name in ("step_kernel", "train_kernel"):
            if getattr(self, name) not in STEP_KERNELS:
                raise ValueError(f"{name}: expected one of {list(STEP_KERNELS)}, got {getattr(self, name)!r}")

    @property
    def inner_dim(self) -> int:
        return round_up(self.proj_factor * self.d_model)

    @property
    def ffn_dim(self) -> int:
        return round_up(self.ffn_proj_factor * self.d_model)

    @property
    def block_types(self) -> list[str]:
        return ["slstm" if i in self.slstm_at else "mlstm" for i in range(self.num_blocks)]


# ============================================================================ building blocks
class BlockDiagonalLinear(nn.Module):
    """Block-diagonal projection without bias: features split in blocks, each mapped by its own matrix.

    Many tokens on the CPU (training) go to lram's fused kernel (one vectorised pass forward and backward,
    ``train_kernel``); otherwise one batched product over the blocks."""

    def __init__(self, features: int, num_blocks: int, train_kernel: str = "auto"):
        super().__init__()
        self.num_blocks = num_blocks
        self.train_kernel = train_kernel
        bs = features // num_blocks
        self.weight = nn.Parameter(torch.empty(num_blocks, bs, bs))  # [block, out, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if exporting():
            x = x.reshape(*shape[:-1], self.num_blocks, 1, -1)
            return (x @ self.weight.transpose(-1, -2)).reshape(shape)
        if (x.numel() > 65536 and self.weight.shape[-1] <= 8 and fused_training_applies(self.train_kernel, x, self.weight)
                and train_ops.available("block_diag_fwd")):  # the kernel's band form suits small blocks only
            return train_ops.block_diagonal(x, self.weight)
        xb = x.reshape(-1, self.num_blocks, self.weight.shape[-1]).transpose(0, 1)  # [blocks, N, s]
        return torch.bmm(xb, self.weight.transpose(1, 2)).transpose(0, 1).reshape(shape)


def _as_state(t: torch.Tensor) -> torch.Tensor:
    """A state tensor as the backbone keeps them: contiguous float32 (a copy only where needed)."""
    return t.float().contiguous()


class CausalConv(nn.Module):
    """Causal depthwise conv over time (optionally followed by SiLU). State = the last (kernel - 1) inputs,
    so chunks continue exactly.  Many tokens on the CPU (training) go to lram's fused conv + SiLU kernel
    (``train_kernel``)."""

    def __init__(self, channels: int, kernel: int, train_kernel: str = "auto"):
        super().__init__()
        self.kernel = kernel
        self.train_kernel = train_kernel
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels, bias=True)

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor, silu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], conv_state [B, kernel-1, C] -> (y [B, T, C], new conv_state)."""
        K, T = self.kernel, x.shape[1]
        conv_state = conv_state.to(x.dtype)
        if T > 8 and fused_training_applies(self.train_kernel, x, self.conv.weight) and train_ops.available("causal_conv_fwd"):
            y = train_ops.causal_conv(x, self.conv.weight.view(-1, K), self.conv.bias, conv_state, silu)
            new_state = x[:, T - (K - 1) :] if T >= K - 1 else torch.cat([conv_state[:, T:], x], dim=1)
            return y, _as_state(new_state)
        xs = torch.cat([conv_state, x], dim=1)
        if T <= 8:  # a few tokens (inference): windows times taps, cheaper than a conv call
            y = (xs.unfold(1, K, 1) * self.conv.weight.squeeze(1)).sum(-1) + self.conv.bias
        else:
            y = self.conv(xs.transpose(1, 2)).transpose(1, 2)
        return (F.silu(y) if silu else y), _as_state(xs[:, -(K - 1) :])


def fold_gate_weights(gate_w: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor):
    """(W_q BD_q + W_k BD_k, W_v BD_v) [G, inner]: the gate weights on [q, k, v] (gate_w [G, 3 inner]) folded
    through the block-diagonal maps (w_* [blocks, out, in]) onto x_c and x_m."""
    G, nb = gate_w.shape[0], w_q.shape[0]
    inner = gate_w.shape[1] // 3

    def fold(w, bd):
        return torch.einsum("gbo,boi->gbi", w.reshape(G, nb, -1), bd).reshape(G, inner)

    g_q, g_k, g_v = gate_w.chunk(3, dim=1)
    return fold(g_q, w_q) + fold(g_k, w_k), fold(g_v, w_v)


def multihead_norm(x: torch.Tensor, num_heads: int, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-head LayerNorm (group norm over heads) of x [..., NH * DH] with a per-feature weight."""
    shape = x.shape
    xh = x.reshape(*shape[:-1], num_heads, -1)
    xh = F.layer_norm(xh, xh.shape[-1:], eps=eps)
    return xh.reshape(shape) * weight


class MLSTMLayer(nn.Module):
    """The mLSTM block's inner layer (everything between the pre-norm and the residual add)."""

    def __init__(self, cfg: XLSTMConfig):
        super().__init__()
        inner, nh = cfg.inner_dim, cfg.num_heads
        self.cfg = cfg
        self.inner = inner
        self.num_heads = nh
        self.up_proj = Linear(cfg.d_model, 2 * inner, bias=False)
        self.conv = CausalConv(inner, cfg.conv_kernel, cfg.train_kernel)
        nblk = inner // cfg.qkv_block_size
        self.q_proj = BlockDiagonalLinear(inner, nblk, cfg.train_kernel)
        self.k_proj = BlockDiagonalLinear(inner, nblk, cfg.train_kernel)
        self.v_proj = BlockDiagonalLinear(inner, nblk, cfg.train_kernel)
        self.gates = Linear(3 * inner, 2 * nh)  # [input gates | forget gates] from [q, k, v]
        self.out_norm_weight = nn.Parameter(torch.ones(inner))
        self.skip = nn.Parameter(torch.ones(inner))
        self.down_proj = Linear(inner, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, st: dict[str, torch.Tensor], chunk_size: int, kernel: Callable):
        B, T, _ = x.shape
        nh = self.num_heads
        if (T > 16 and fused_training_applies(self.cfg.train_kernel, x, self.up_proj.weight)
                and train_ops.available("mlstm_pre_fwd")):
            return self._fused_forward(x, st, chunk_size, kernel)
        x_m, z = self.up_proj(x).chunk(2, dim=-1)
        x_c, conv_state = self.conv(x_m, st["conv"], silu=True)
        q, k, v = self.q_proj(x_c), self.k_proj(x_c), self.v_proj(x_m)
        if T <= 16:  # a few tokens: one product over [q, k, v]
            gates = self.gates(torch.cat([q, k, v], dim=-1))
        else:  # many tokens: the same product by parts, without copying q, k and v into one tensor
            w_q, w_k, w_v = self.gates.weight.chunk(3, dim=1)
            gates = F.linear(q, w_q, self.gates.bias) + F.linear(k, w_k) + F.linear(v, w_v)
        ig, fg = gates.float().transpose(1, 2).chunk(2, dim=1)  # [B, NH, T]

        def heads(t):
            return t.reshape(B, T, nh, -1).transpose(1, 2).float()

        h, (C, n, m) = kernel(heads(q), heads(k), heads(v), ig, fg, (st["C"], st["n"], st["m"]), chunk_size, self.cfg.eps)
        h = h.transpose(1, 2).reshape(B, T, self.inner).to(x.dtype)
        h = multihead_norm(h, nh, self.out_norm_weight, self.cfg.norm_eps)
        y = self.down_proj(torch.addcmul(h, self.skip, x_c) * F.silu(z))
        return y, {"C": C, "n": n, "m": m, "conv": conv_state}

    def _fused_forward(self, x: torch.Tensor, st: dict[str, torch.Tensor], chunk_size: int, kernel: Callable):
        """The same layer for training windows on the CPU: everything between the two projections in two
        fused ops around the cell (``lram::mlstm_pre_fwd`` / ``mlstm_post_fwd`` and their backwards), with
        q, k, v in the cell's head-major layout, so no activation is copied or re-read op by op."""
        K, T = self.cfg.conv_kernel, x.shape[1]
        up = self.up_proj(x)
        conv = self.conv.conv
        # gates = W_q q + W_k k + W_v v + b with q = BD_q x_c, k = BD_k x_c, v = BD_v x_m: the block-diagonal
        # maps folded into the (tiny) gate weights, so the pre pass computes them from x_c and x_m as it goes
        w_c, w_m = self._folded_gate_weights()
        conv_state = _as_state(up[:, T - (K - 1) :, : self.inner])  # T > 16 here
        if kernel is mlstm_parallel_fused and mlstm_cell_kernels_available():  # the whole layer as one node
            y = train_ops.mlstm_layer_parallel(up, st["conv"].to(x.dtype), conv.weight.view(self.inner, K), conv.bias,
                                               self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, w_c, w_m,
                                               self.gates.bias, self.out_norm_weight, self.skip, self.num_heads,
                                               self.cfg.norm_eps, self.cfg.eps, CELL_TILE)
            return self.down_proj(y), {"C": None, "n": None, "m": None, "conv": conv_state}
        q, k, v, x_c, gates = train_ops.mlstm_pre(up, st["conv"].to(x.dtype), conv.weight.view(self.inner, K), conv.bias,
                                                  self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, w_c, w_m,
                                                  self.gates.bias, self.num_heads)
        ig, fg = gates.chunk(2, dim=1)  # [B, NH, T]
        h, (C, n, m) = kernel(q, k, v, ig, fg, (st["C"], st["n"], st["m"]), chunk_size, self.cfg.eps)
        y = train_ops.mlstm_post(h, x_c, up, self.out_norm_weight, self.skip, self.cfg.norm_eps)
        return self.down_proj(y), {"C": C, "n": n, "m": m, "conv": conv_state}

    def _folded_gate_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fold_gate_weights(self.gates.weight, self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)

    def init_state(self, batch_size: int, device, memory: bool = True) -> dict[str, torch.Tensor]:
        """A fresh state; ``memory=False``: the matrix memory as a read-only zero view (for the parallel cell,
        which starts from an empty memory and never reads it: no [B, NH, DH, DH] fill per window)."""
        nh, dh = self.num_heads, self.inner // self.num_heads
        C = (torch.zeros(batch_size, nh, dh, dh, device=device) if memory
             else torch.zeros((), device=device).expand(batch_size, nh, dh, dh))
        return {
            "C": C,
            "n": torch.zeros(batch_size, nh, dh, device=device),
            "m": torch.full((batch_size, nh), M_EMPTY, device=device),
            "conv": torch.zeros(batch_size, self.cfg.conv_kernel - 1, self.inner, device=device),
        }


def slstm_scan(wx: torch.Tensor, R: torch.Tensor, st: dict[str, torch.Tensor]):
    """sLSTM cell over time.  wx [B, T, 4, NH, DH] gate inputs (i, f, z, o, bias included),
    R [NH, DH, 4 * DH] recurrent weights per head, state h/c/n/m [B, NH, DH].  Returns h [B, T, NH, DH]."""
    B, T, _, NH, DH = wx.shape
    h, c, n, m = st["h"], st["c"], st["n"], st["m"]
    hs = []
    for t in range(T):
        ry = (h.unsqueeze(-2) @ R).reshape(B, NH, 4, DH).transpose(1, 2)  # [B, 4, NH, DH]
        i_raw, f_raw, z_raw, o_raw = (wx[:, t] + ry).unbind(1)
        log_f_m = m + F.logsigmoid(f_raw)
        m_new = torch.maximum(i_raw, log_f_m)
        i_g = torch.exp(i_raw - m_new)
        f_g = torch.exp(log_f_m - m_new)
        c = f_g * c + i_g * torch.tanh(z_raw)
        n = f_g * n + i_g
        h = torch.sigmoid(o_raw) * c / n
        m = m_new
        hs.append(h)
    return torch.stack(hs, 1), {"h": h, "c": c, "n": n, "m": m}


class SLSTMLayer(nn.Module):
    """The sLSTM block's inner layer (between the pre-norm and the residual add)."""

    def __init__(self, cfg: XLSTMConfig):
        super().__init__()
        D, nh = cfg.d_model, cfg.slstm_heads
        self.cfg = cfg
        self.num_heads = nh
        self.conv = CausalConv(D, cfg.conv_kernel, cfg.train_kernel)
        # head-wise gate projections; i and f read the conv branch, z and o the block input
        self.i_proj = BlockDiagonalLinear(D, nh)
        self.f_proj = BlockDiagonalLinear(D, nh)
        self.z_proj = BlockDiagonalLinear(D, nh)
        self.o_proj = BlockDiagonalLinear(D, nh)
        self.recurrent = nn.Parameter(torch.zeros(nh, D // nh, 4 * (D // nh)))  # [head, in, gate*out]
        self.bias = nn.Parameter(torch.zeros(4, D))  # gate-major (i, f, z, o)
        self.out_norm_weight = nn.Parameter(torch.ones(D))

    def forward(self, x: torch.Tensor, st: dict[str, torch.Tensor]):
        B, T, D = x.shape
        nh = self.num_heads
        x_c, conv_state = self.conv(x, st["conv"], silu=True)
        R = self.recurrent.float()
        # CPU float32: the scan as one compiled call forward and one backward (lram.models.slstm_kernel)
        if fused_training_applies(self.cfg.train_kernel, x, R, *(st[k] for k in "hcnm")) and slstm_kernel_available():
            h, cell = slstm_scan_fused(self._gate_inputs(x_c, x), R, st)
        else:
            wx = torch.stack([self.i_proj(x_c), self.f_proj(x_c), self.z_proj(x), self.o_proj(x)], dim=2) + self.bias
            h, cell = slstm_scan(wx.float().reshape(B, T, 4, nh, D // nh), R, st)
        y = multihead_norm(h.reshape(B, T, D).to(x.dtype), nh, self.out_norm_weight, self.cfg.norm_eps)
        return y, {**cell, "conv": conv_state}

    def _gate_inputs(self, x_c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """wx [B, T, 4, NH, DH]: the four head-wise projections plus bias (the values of the PyTorch path) as
        two batched products over the heads, [i | f] from the conv branch and [z | o] from the input."""
        B, T, D = x.shape
        nh, dh = self.num_heads, D // self.num_heads

        def heads(t):  # [B, T, D] -> [NH, B * T, DH]
            return t.reshape(B * T, nh, dh).transpose(0, 1)

        def weights(a, b):  # two [NH, out, in] projections -> [NH, DH (in), 2 DH (out)]
            return torch.cat([a.weight, b.weight], dim=1).transpose(1, 2)

        bias = self.bias.view(4, nh, dh).transpose(0, 1).reshape(nh, 1, 4 * dh)
        wx = torch.cat([torch.baddbmm(bias[..., : 2 * dh], heads(x_c), weights(self.i_proj, self.f_proj)),
                        torch.baddbmm(bias[..., 2 * dh :], heads(x), weights(self.z_proj, self.o_proj))], dim=-1)
        return wx.view(nh, B, T, 4, dh).permute(1, 2, 3, 0, 4)

    def init_state(self, batch_size: int, device) -> dict[str, torch.Tensor]:
        nh, dh = self.num_heads, self.cfg.d_model // self.num_heads
        z = torch.zeros(batch_size, nh, dh, device=device)
        return {
            "h": z,
            "c": z.clone(),
            "n": z.clone(),
            "m": torch.full_like(z, M_EMPTY),
            "conv": torch.zeros(batch_size, self.cfg.conv_kernel - 1, self.cfg.d_model, device=device),
        }


class GatedFeedForward(nn.Module):
    """GELU-gated feed-forward of the sLSTM block."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.up_proj = Linear(d_model, 2 * hidden, bias=False)
        self.down_proj = Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate) * up)


class XLSTMBlock(nn.Module):
    """Pre-LN residual block around an mLSTM or sLSTM layer (sLSTM blocks add a gated feed-forward)."""

    def __init__(self, cfg: XLSTMConfig, block_type: str):
        super().__init__()
        self.block_type = block_type
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)
        if block_type == "mlstm":
            self.layer = MLSTMLayer(cfg)
            self.ffn_norm = self.ffn = None
        else:
            self.layer = SLSTMLayer(cfg)
            self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)
            self.ffn = GatedFeedForward(cfg.d_model, cfg.ffn_dim)

    def forward(self, x: torch.Tensor, st: dict[str, torch.Tensor], chunk_size: int, kernel: Callable):
        if self.block_type == "mlstm":
            y, st = self.layer(self.norm(x), st, chunk_size, kernel)
        else:
            y, st = self.layer(self.norm(x), st)
        x = x + y
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x, st


# ============================================================================ the backbone
class XLSTMBackbone(Backbone):
    """A stack of mLSTM/sLSTM blocks with a final LayerNorm; parallel ``forward`` and recurrent ``step``."""

    kind = "xlstm"
    fused_step_ops = ("mlstm_block_step", "linear_rows")

    def __init__(self, config: XLSTMConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(XLSTMBlock(config, t) for t in config.block_types)
        self.post_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False)
        self.mlstm_kernel = get_mlstm_kernel(config.mlstm_kernel)
        names = self._init_state(1, "meta")
        self._state_keys = [
            [(full, full[len(f"blocks.{j}.") :]) for full in names if full.startswith(f"blocks.{j}.")]
            for j in range(config.num_blocks)
        ]
        self.reset_parameters()

    def state_fields(self) -> tuple[str, ...]:
        return ("d_model", "num_blocks", "slstm_at", "num_heads", "proj_factor", "conv_kernel", "slstm_heads")

    def parallel_max_tokens(self, fused: bool = False) -> int:
        """Windows up to this many tokens (from an empty memory, final state not needed) run the mLSTM cell
        in its parallel form: per token and head it costs ~2 T DH multiply-adds against ~2 DH^2 + 2 L DH
        for chunks of L.  Through PyTorch ops (every [T, T] matrix in memory) that pays up to 2 (DH + L)
        tokens; lram's per-head cell kernels (``fused``: the [T, T] tiles in cache, the blocks above the
        diagonal skipped) stay cheaper up to ~6 (DH + L) (measured: 600 tokens at DH 64, 1.3x faster than
        the chunkwise form; 3x at DH 256).  ``XLSTMConfig.parallel_max_tokens`` overrides."""
        cfg = self.config
        if cfg.parallel_max_tokens is not None:
            return cfg.parallel_max_tokens
        span = cfg.inner_dim // cfg.num_heads + cfg.chunk_size
        return 6 * span if fused and mlstm_cell_kernels_available() else 2 * span

    # ---------------------------------------------------------------- modes
    def _run(self, x, state: RecurrentState | None, chunk_size: int, kernel: Callable, return_state: bool):
        if state is not None:
            tensors = state.tensors
        else:
            tensors = self._init_state(x.shape[0], x.device, memory=kernel not in (mlstm_parallel, mlstm_parallel_fused))
        new: dict[str, torch.Tensor] = {}
        for block, keys in zip(self.blocks, self._state_keys):
            x, st = block(x, {short: tensors[full] for full, short in keys}, chunk_size, kernel)
            if return_state:
                new.update({full: st[short] for full, short in keys})
        y = self.post_norm(x)
        return y, (RecurrentState(new, self.state_signature()) if return_state else None)

    def _forward(self, x, state, return_state):
        seg = self.config.segment_tokens
        if x.shape[1] <= seg:
            kernel = self.mlstm_kernel
            if kernel is mlstm_chunkwise and state is None and not return_state:
                # training windows: no memory in or out, the parallel form is cheaper
                fused = (fused_training_applies(self.config.train_kernel, x, self.post_norm.weight)
                         and train_ops.available("mlstm_gates_fwd"))
                if x.shape[1] <= self.parallel_max_tokens(fused):
                    kernel = mlstm_parallel_fused if fused else mlstm_parallel
            return self._run(x, state, self.config.chunk_size, kernel, return_state)
        # long sequences (e.g. a prefill of a long history) go segment by segment, carrying the state:
        # the same function, with the per-chunk memory states bounded by the segment length
        ys = []
        for t0 in range(0, x.shape[1], seg):
            y, state = self._run(x[:, t0 : t0 + seg], state, self.config.chunk_size, self.mlstm_kernel, True)
            ys.append(y)
        return torch.cat(ys, dim=1), (state if return_state else None)

    def _step(self, x, state):
        # the k new tokens form one chunk: one read of every weight matrix for the whole call; without
        # autograd the PyTorch cell step updates the matrix memory in place (functional when compiled)
        kernel = self.mlstm_kernel
        if kernel in (mlstm_chunkwise, mlstm_recurrent) and not torch.is_grad_enabled():
            if self._fused_step_applies(x):
                return self._fused_step(x, state)
            kernel = mlstm_step_compilable if torch.compiler.is_compiling() else mlstm_step_inplace
        return self._run(x, state, x.shape[1], kernel, True)

    def _fused_step(self, x: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """The step with each mLSTM block (norm, layer, residual) as one compiled CPU call
        (``torch.ops.lram.mlstm_block_step``: the same function as the PyTorch step, updating the state in
        place); sLSTM blocks run their PyTorch ops."""
        tensors = dict(state.tensors)
        cfg = self.config
        for block, keys, args in zip(self.blocks, self._state_keys, self._fused_args):
            if args is None:
                x, st = block(x, {short: tensors[full] for full, short in keys}, 0, mlstm_step_inplace)
                tensors.update({full: st[short] for full, short in keys})
            else:
                C, n, m, conv = (tensors[full] for full, _ in keys)  # the order of MLSTMLayer.init_state
                x = torch.ops.lram.mlstm_block_step(x, *args, C, n, m, conv, cfg.norm_eps, cfg.eps)
        return self.post_norm(x), RecurrentState(tensors, self.state_signature())

    def _fused_step_unsupported(self) -> str | None:
        if self.mlstm_kernel not in (mlstm_chunkwise, mlstm_recurrent):
            return f"mlstm_kernel={self.config.mlstm_kernel!r} steps with its own kernel"
        return None

    def _fused_step_arguments(self) -> list[tuple[torch.Tensor, ...] | None]:
        """Per block, the weights the fused step reads (None for sLSTM blocks)."""
        args = []
        for block in self.blocks:
            L = block.layer
            args.append(None if block.block_type != "mlstm" else (
                block.norm.weight, L.up_proj.weight, L.conv.conv.weight, L.conv.conv.bias, L.q_proj.weight,
                L.k_proj.weight, L.v_proj.weight, L.gates.weight, L.gates.bias, L.out_norm_weight, L.skip,
                L.down_proj.weight,
            ))
        return args

    def _init_state(self, batch_size, device, memory: bool = True):
        out = {}
        for j, block in enumerate(self.blocks):
            layer = block.layer
            states = layer.init_state(batch_size, device, memory) if isinstance(layer, MLSTMLayer) else \
                layer.init_state(batch_size, device)
            for name, t in states.items():
                out[f"blocks.{j}.{name}"] = t
        return out

    # ------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The xlstm library's initialisation (small-init, Wang-init, gate biases, power-law sLSTM biases)."""
        cfg = self.config
        D, nb = cfg.d_model, cfg.num_blocks
        small = math.sqrt(2 / (5 * D))
        wang = 2 / nb / math.sqrt(D)
        for j, block in enumerate(self.blocks):
            block.norm.weight.fill_(1.0)
            layer = block.layer
            layer.conv.conv.reset_parameters()
            layer.out_norm_weight.fill_(1.0)
            if block.block_type == "mlstm":
                nn.init.normal_(layer.up_proj.weight, std=small)
                nn.init.normal_(layer.down_proj.weight, std=wang)
                for p in (layer.q_proj, layer.k_proj, layer.v_proj):
                    nn.init.normal_(p.weight, std=small)
                layer.skip.fill_(1.0)
                nh = cfg.num_heads
                nn.init.zeros_(layer.gates.weight)
                nn.init.normal_(layer.gates.bias[:nh], std=0.1)  # input gates
                layer.gates.bias[nh:].copy_(torch.linspace(3.0, 6.0, nh))  # forget gates
            else:
                for p in (layer.i_proj, layer.f_proj, layer.z_proj, layer.o_proj):
                    nn.init.normal_(p.weight, std=small)
                layer.recurrent.zero_()
                layer.bias.zero_()
                dh = D // cfg.slstm_heads
                ratio = j / (nb - 1) if nb > 1 else 0.0
                powerlaw = -(-5.0 + 12.0 * (torch.arange(dh) / (dh - 1)) ** (0.3 + 1.3 * ratio))
                layer.bias[1] = powerlaw.repeat(cfg.slstm_heads)  # forget-gate bias
                block.ffn_norm.weight.fill_(1.0)
                nn.init.normal_(block.ffn.up_proj.weight, std=small)
                nn.init.normal_(block.ffn.down_proj.weight, std=wang)
        self.post_norm.weight.fill_(1.0)


# ============================================================================ weights of the reference library
def load_from_xlstm_library(backbone: XLSTMBackbone, stack: nn.Module) -> None:
    """Copy the weights of an ``xlstm.xLSTMBlockStack`` (mLSTM blocks, vanilla-backend sLSTM blocks) into
    ``backbone``.  The library stores LayerNorm weights as offsets from 1 ("residual weight")."""
    cfg = backbone.config
    if len(stack.blocks) != cfg.num_blocks:
        raise ValueError(f"stack has {len(stack.blocks)} blocks, backbone has {cfg.num_blocks}")

    def ln(w):  # the library's LayerNorm weight is 1 + stored weight
        return 1.0 + w

    with torch.no_grad():
        for j, (ours, theirs) in enumerate(zip(backbone.blocks, stack.blocks)):
            ours.norm.weight.copy_(ln(theirs.xlstm_norm.weight))
            L, T = ours.layer, theirs.xlstm
            if ours.block_type == "mlstm":
                if not hasattr(T, "mlstm_cell"):
                    raise ValueError(f"block {j}: expected an mLSTM block in the library stack")
                L.up_proj.weight.copy_(T.proj_up.weight)
                L.conv.conv.weight.copy_(T.conv1d.conv.weight)
                L.conv.conv.bias.copy_(T.conv1d.conv.bias)
                for a, b in ((L.q_proj, T.q_proj), (L.k_proj, T.k_proj), (L.v_proj, T.v_proj)):
                    a.weight.copy_(b.weight)
                cell = T.mlstm_cell
                L.gates.weight.copy_(torch.cat([cell.igate.weight, cell.fgate.weight]))
                L.gates.bias.copy_(torch.cat([cell.igate.bias, cell.fgate.bias]))
                L.out_norm_weight.copy_(ln(T.mlstm_cell.outnorm.weight))
                L.skip.copy_(T.learnable_skip)
                L.down_proj.weight.copy_(T.proj_down.weight)
            else:
                if not hasattr(T, "slstm_cell"):
                    raise ValueError(f"block {j}: expected an sLSTM block in the library stack")
                L.conv.conv.weight.copy_(T.conv1d.conv.weight)
                L.conv.conv.bias.copy_(T.conv1d.conv.bias)
                # the library feeds its `fgate` projection to the cell's i slot and `igate` to the f slot
                L.i_proj.weight.copy_(T.fgate.weight)
                L.f_proj.weight.copy_(T.igate.weight)
                L.z_proj.weight.copy_(T.zgate.weight)
                L.o_proj.weight.copy_(T.ogate.weight)
                cell = T.slstm_cell
                nh, dh = cfg.slstm_heads, cfg.d_model // cfg.slstm_heads
                r_ext = cell._recurrent_kernel_int2ext(cell._recurrent_kernel)  # [NH, DH_in, 4, DH_out]
                L.recurrent.copy_(r_ext.reshape(nh, dh, 4 * dh))
                b_ext = cell._bias_int2ext(cell._bias)  # [NH, 4, DH]
                L.bias.copy_(b_ext.permute(1, 0, 2).reshape(4, nh * dh))
                L.out_norm_weight.copy_(ln(T.group_norm.weight))
                ours.ffn_norm.weight.copy_(ln(theirs.ffn_norm.weight))
                ours.ffn.up_proj.weight.copy_(theirs.ffn.proj_up.weight)
                ours.ffn.down_proj.weight.copy_(theirs.ffn.proj_down.weight)
        post = stack.post_blocks_norm
        post_weight = ln(post.weight) if hasattr(post, "weight") else torch.ones_like(backbone.post_norm.weight)
        backbone.post_norm.weight.copy_(post_weight)
