"""Mamba backbone: a stack of Mamba-1 (selective SSM) blocks as used by the LRAM paper's Mamba baseline.

Structure (``mamba_ssm`` 2.x ``MixerModel`` built with ``create_block``, a Mamba-1 mixer and
``d_intermediate=0``, i.e. no MLP): every block is pre-norm residual ``x = x + Mixer(RMSNorm(x))``, and a
final RMSNorm (``norm_f``) follows the last block.  The mixer (ED = expand * D, N = d_state)::

    x, z  = in_proj(u).chunk(2)                       # Linear(D, 2 ED), no bias
    x     = SiLU(causal depthwise conv1d(x))          # ED channels, kernel d_conv, bias
    dt, B, C = x_proj(x).split(dt_rank, N, N)         # Linear(ED, dt_rank + 2N), no bias
    delta = softplus(dt_proj(dt))                     # Linear(dt_rank, ED), bias
    h_t   = exp(delta_t A) h_{t-1} + delta_t B_t x_t  # A = -exp(A_log) [ED, N], h [B, ED, N]
    y_t   = C_t . h_t + D x_t
    out   = out_proj(y * SiLU(z))                     # Linear(ED, D), no bias

Parameter names equal ``mamba_ssm``'s and ``mambapy``'s (``blocks.{i}`` here, ``layers.{i}`` there); see
:func:`load_from_mamba_library`.

State per block i (fp32): ``conv.{i}`` [B, d_conv - 1, ED], the last conv inputs, and ``h.{i}`` [B, ED, N].

Kernels.  ``kernel="auto"`` (default) uses the ``mamba_ssm`` CUDA kernels when that package is installed
and the input is on a GPU; ``"mamba_ssm"`` requires them; ``"torch"`` never uses them.  The CPU path never
imports ``mamba_ssm``.  On the CPU, ``train_kernel`` ("auto": lram's compiled kernels when they build,
float32, no autocast; "fused": require them; "torch": PyTorch ops only) selects lram's fused ops for the
sequence ``forward`` (training, and inference without autograd):

* the scan with softplus(dt + bias), the D skip and the SiLU(z) gate as one op forward and one backward
  (:func:`fused_selective_scan`: ``torch.ops.lram.selective_scan_fwd`` / ``_bwd``, ``mamba_train_cpu.cpp``).
  16 channels per vector, the N state rows of a channel block in registers; the forward keeps the state
  every ``scan_chunk`` steps, the backward recomputes each chunk from it and runs the reverse recurrence;
* RMSNorm as one op each way (``rms_norm_fwd`` / ``_bwd``; PyTorch's backward is ~10 ops);
* in_proj's backward as one product per half of the weight (no concatenation of the x and z gradients).

The PyTorch scan (:func:`selective_scan`, the reference and the fallback) is a sequential loop over time
inside chunks of ``scan_chunk`` steps (exp(delta A) and delta B x per chunk, one multiply-add per step),
with a hand-written backward (a reverse scan that recomputes each chunk from the state saved at its start).
It keeps only T/chunk states for the backward; the same loop under plain autograd keeps two [B, T, ED, N]
tensors per block, log-space chunks overflow fp32 past exp(-88), and a Blelloch scan (``mambapy.pscan``) is
10-20x slower on the CPU.

Measured on the shared 2-core CPU (noisy: other jobs ran meanwhile; best of several runs): the scan with
softplus, skip and gate, B=32, T=150, ED=1024, N=16, forward + backward, one thread: fused 0.13 s, PyTorch
1.3 s; per 16M-preset block (B=8, T=150, ED=1024) fused ~7 ms forward and ~13 ms backward on one thread.
Whole backbone, D=512, 8 blocks, B=32, T=150, forward + backward: 3.0 s (2 threads), 6.3 s (1 thread), against
16 s for ``train_kernel="torch"`` on one thread.  A full optimizer step of the 16M policy (C=50, B=8),
single-thread CPU time: Transformer ~0.9 s, Mamba ~1.2 s (``train_kernel="torch"``: ~3.1 s); the remaining
Mamba time is mostly the matrix products (~55%), the causal conv (~15%, PyTorch ops) and the scan (~15%).
``step`` at batch 1 on 3 tokens (D=512, 8 blocks): ~7.5-8.5 ms, against ~4 ms for one pass over its weight
matrices (the memory-bound floor); the scan is ~1.5 ms of the difference, the other small ops the rest.

``step`` (k >= 1 new tokens) runs the same layer code on [B, k, D] (``MambaMixer.forward(..., step=True)``):
every weight matrix is read once per call and only the scan loops over the k tokens.  After
:meth:`~lram.models.backbone.Backbone.prepare_for_inference` chose lram's fused CPU kernels (``step_kernel``),
each block of a CPU inference step is one compiled call (``torch.ops.lram.mamba_block_step``, the same function).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from lram.models.backbone import Backbone
from lram.models.kernels import STEP_KERNELS, fused_training_applies
from lram.models.kernels import training as train_ops
from lram.models.layers import Linear, exporting
from lram.models.state import RecurrentState
from lram.utils.checks import check_choice, check_positive_int

KERNELS = ("auto", "torch", "mamba_ssm")
LOG2E = math.log2(math.e)
_GPU_HINT = "install the GPU extra: pip install 'lram[gpu]' (mamba-ssm, causal-conv1d)"


@dataclass
class MambaConfig:
    """Configuration of a Mamba-1 block stack (defaults: ``mamba_ssm``'s, as in the LRAM paper)."""

    d_model: int
    num_blocks: int
    d_state: int = 16  # N
    d_conv: int = 4
    expand: int = 2  # ED = expand * d_model
    dt_rank: int | None = None  # None: ceil(d_model / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    norm_eps: float = 1e-5
    scan_chunk: int = 8  # time steps per chunk of the scans (their backward keeps one state per chunk)
    kernel: str = "auto"  # "auto" | "torch" | "mamba_ssm"
    # inference step on the CPU: "auto" = the fused compiled kernel when it builds, else PyTorch ops;
    # "fused" = require it; "torch" = PyTorch ops only (see lram.models.kernels)
    step_kernel: str = "auto"
    # training (forward + backward) on the CPU: "auto" = lram's fused CPU forward/backward kernels when they
    # build (float32, no autocast), else PyTorch ops; "fused" = require them; "torch" = PyTorch ops only
    train_kernel: str = "auto"

    def __post_init__(self):
        for name in ("d_model", "num_blocks", "d_state", "d_conv", "expand", "scan_chunk"):
            check_positive_int(name, getattr(self, name))
        if self.dt_rank is not None:
            check_positive_int("dt_rank", self.dt_rank)
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min, dt_max: expected 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        check_choice("kernel", self.kernel, KERNELS)
        check_choice("step_kernel", self.step_kernel, STEP_KERNELS)
        check_choice("train_kernel", self.train_kernel, STEP_KERNELS)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)


# ============================================================================ selective scan (PyTorch)
# The scan works time-major so that every per-step slice is contiguous: delta, dx (= delta * x) [T, B, E];
# A [E, N]; B, C [T, B, N]; h [B, E, N].  It returns y_t = C_t . h_t (without the D skip) and the last state.


def _scan_chunk(delta, dx, A2, B, C, h, H, readout: bool = True):
    """Run the recurrence over one chunk from state ``h``, writing h_1..h_n into ``H`` [n, B, E, N].
    ``A2`` is A * log2(e): exp2 is ~3x faster than exp on CPU.  Returns y [n, B, E] (None without
    ``readout``) and exp(delta A) [n, B, E, N]."""
    dA = torch.exp2(delta.unsqueeze(-1) * A2)
    u = dx.unsqueeze(-1) * B.unsqueeze(-2)
    for t in range(delta.shape[0]):
        h = torch.addcmul(u[t], dA[t], h, out=H[t])
    if not readout:
        return None, dA
    return _rowvec_matmul(C, H), dA


def _rowvec_matmul(v, M):
    """sum_n v[..., n] M[..., e, n] as a batched [1, N] @ [N, E] product (3x faster on CPU than
    M @ v[..., None] or a multiply-and-sum): v [..., N], M [..., E, N] -> [..., E]."""
    return (v.unsqueeze(-2) @ M.transpose(-1, -2)).squeeze(-2)


def _scan_forward(delta, dx, A, B, C, h0, chunk: int, starts: list | None = None):
    """The chunked scan without autograd; appends the state at each chunk start to ``starts`` if given."""
    T = delta.shape[0]
    H = delta.new_empty(min(chunk, T), *h0.shape)
    A2 = A * LOG2E
    ys, h = [], h0
    for s in range(0, T, chunk):
        n = min(chunk, T - s)
        if starts is not None:
            starts.append(h)
        y, _ = _scan_chunk(delta[s : s + n], dx[s : s + n], A2, B[s : s + n], C[s : s + n], h, H[:n])
        ys.append(y)
        h = H[n - 1].clone()
    return (ys[0] if len(ys) == 1 else torch.cat(ys)), h


class _SelectiveScan(torch.autograd.Function):
    """Chunked scan with a hand-written backward (a reverse scan that recomputes each chunk's states)."""

    @staticmethod
    def forward(ctx, delta, dx, A, B, C, h0, chunk):
        starts: list[torch.Tensor] = []
        y, h = _scan_forward(delta, dx, A, B, C, h0, chunk, starts)
        ctx.save_for_backward(delta, dx, A, B, C, *starts)
        ctx.chunk = chunk
        return y, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gh_last):
        delta, dx, A, B, C, *starts = ctx.saved_tensors
        chunk, T = ctx.chunk, delta.shape[0]
        g_delta, g_dx, g_B, g_C = (torch.empty_like(t) for t in (delta, dx, B, C))
        g_A = torch.zeros_like(A)
        Hp = delta.new_empty(min(chunk, T) + 1, *starts[0].shape)  # h_{s-1}, h_s, ..., h_{s+n-1}
        A2 = A * LOG2E
        carry = gh_last  # d loss / d h at the end of the chunk, from later chunks
        for c in range(len(starts) - 1, -1, -1):
            s = c * chunk
            n = min(chunk, T - s)
            sl = slice(s, s + n)
            Hp[0] = starts[c]
            _, dA = _scan_chunk(delta[sl], dx[sl], A2, B[sl], C[sl], starts[c], Hp[1 : n + 1], readout=False)
            gy_c = gy[sl]
            G = gy_c.unsqueeze(-1) * C[sl].unsqueeze(-2)  # becomes d loss / d h_t
            G[n - 1] += carry
            for t in range(n - 2, -1, -1):
                torch.addcmul(G[t], dA[t + 1], G[t + 1], out=G[t])
            carry = dA[0] * G[0]
            g_C[sl] = (gy_c.unsqueeze(-2) @ Hp[1 : n + 1]).squeeze(-2)
            g_dx[sl] = _rowvec_matmul(B[sl], G)
            g_B[sl] = (dx[sl].unsqueeze(-2) @ G).squeeze(-2)
            Q = G.mul_(Hp[:n]).mul_(dA)  # d loss / d (delta A)
            g_delta[sl] = (Q * A).sum(-1)
            g_A += (Q * delta[sl].unsqueeze(-1)).sum((0, 1))
        return g_delta, g_dx, g_A, g_B, g_C, carry, None


def selective_scan(delta, dx, A, B, C, h0, chunk: int = 8):
    """y_t = C_t . h_t with h_t = exp(delta_t A) h_{t-1} + dx_t B_t, batch-first fp32 inputs
    (delta, dx [B, T, E], A [E, N], B, C [B, T, N], h0 [B, E, N]); returns (y [B, T, E], h_T)."""
    delta, dx, B, C = (t.transpose(0, 1).contiguous() for t in (delta, dx, B, C))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (delta, dx, A, B, C, h0)):
        y, h = _SelectiveScan.apply(delta, dx, A, B, C, h0, chunk)
    else:
        y, h = _scan_forward(delta, dx, A, B, C, h0, chunk)
    return y.transpose(0, 1), h


# ============================================================================ selective scan (fused CPU op)
FUSED_SCAN_OPS = ("selective_scan_fwd", "selective_scan_bwd")


def fused_scan_available() -> bool:
    """Whether lram's compiled CPU scan ops (``mamba_train_cpu.cpp``) are registered."""
    return all(hasattr(torch.ops.lram, op) for op in FUSED_SCAN_OPS)


class _FusedSelectiveScan(torch.autograd.Function):
    """``torch.ops.lram.selective_scan_fwd`` / ``_bwd``: the forward keeps the state every ``chunk`` steps,
    the backward recomputes each chunk from it."""

    @staticmethod
    def forward(ctx, delta, x, A, B, C, h0, D, z, delta_bias, softplus, mul_delta, chunk):
        ctx.set_materialize_grads(False)
        y, h, ck = torch.ops.lram.selective_scan_fwd(delta, x, A, B, C, h0, D, z, delta_bias, softplus, mul_delta, chunk)
        ctx.save_for_backward(delta, x, A, B, C, h0, D, z, delta_bias, ck)
        ctx.flags = (softplus, mul_delta, chunk)
        return y, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gh):
        delta, x, A, B, C, h0, D, z, delta_bias, ck = ctx.saved_tensors
        softplus, mul_delta, chunk = ctx.flags
        if gy is None:
            gy = torch.zeros_like(delta)
        grads = torch.ops.lram.selective_scan_bwd(gy, gh, delta, x, A, B, C, h0, D, z, delta_bias, softplus, mul_delta,
                                                  ck, chunk)
        return (*grads, None, None, None)


def fused_selective_scan(delta, x, A, B, C, h0=None, D=None, z=None, delta_bias=None, delta_softplus=False,
                         mul_delta=False, chunk: int = 8):
    """The selective scan as one compiled CPU op forward and one backward (float32, batch-first, strided
    views allowed): with delta' = softplus(delta + delta_bias) (or delta [+ delta_bias]),
    h_t = exp(delta'_t A) h_{t-1} + u_t B_t (u = delta' x if ``mul_delta`` else x) from h0 (zeros if None)
    and y_t = (C_t . h_t + D x_t) * SiLU(z_t) (D, z optional).  delta, x, z [B, T, E], A [E, N], B, C
    [B, T, N], h0 [B, E, N]; returns (y [B, T, E], h_T).  ``selective_scan(delta, dx, A, B, C, h0)`` is the
    case without the optional terms.  With autograd the forward keeps the state every ``chunk`` steps for the
    backward (and no [B, T, E, N] tensor)."""
    tensors = (delta, x, A, B, C, h0, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _FusedSelectiveScan.apply(*tensors, delta_softplus, mul_delta, chunk)
    y, h, _ = torch.ops.lram.selective_scan_fwd(*tensors, delta_softplus, mul_delta, 0)
    return y, h


# ============================================================================ optional mamba_ssm kernels
_mamba_ssm: SimpleNamespace | str | None = None  # None: not tried yet; str: why the import failed


def _load_mamba_ssm() -> SimpleNamespace | None:
    """The ``mamba_ssm`` kernels, imported on first use (None if unavailable)."""
    global _mamba_ssm
    if _mamba_ssm is None:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        except Exception as e:  # not installed, or installed without a working CUDA / Triton build
            _mamba_ssm = f"{type(e).__name__}: {e}"
            if not isinstance(e, ModuleNotFoundError):
                warnings.warn(f"mamba_ssm failed to import ({_mamba_ssm}); using the PyTorch scan", stacklevel=3)
        else:
            _mamba_ssm = SimpleNamespace(selective_scan_fn=selective_scan_fn, selective_state_update=selective_state_update)
    return _mamba_ssm if isinstance(_mamba_ssm, SimpleNamespace) else None


def _require_mamba_ssm() -> SimpleNamespace:
    kernels = _load_mamba_ssm()
    if kernels is None:
        raise ImportError(f"kernel='mamba_ssm': cannot import mamba_ssm ({_mamba_ssm}); {_GPU_HINT}")
    return kernels


def _kernels_for(x: torch.Tensor, mode: str) -> SimpleNamespace | None:
    """The ``mamba_ssm`` kernels to use for ``x`` under ``mode``, or None for the PyTorch path."""
    if mode == "torch":
        return None
    if not x.is_cuda:
        if mode == "mamba_ssm":
            raise ValueError(f"kernel='mamba_ssm' needs CUDA tensors, got a tensor on {x.device}; use kernel='auto'")
        return None
    return _require_mamba_ssm() if mode == "mamba_ssm" else _load_mamba_ssm()


def _no_autocast(device_type: str):
    """Disable autocast for the scan (fp32 inside); a no-op context when autocast is off (cheaper)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# ============================================================================ modules
def _fused_training(mode: str, *tensors: torch.Tensor) -> bool:
    """Whether lram's fused CPU training ops apply (``train_kernel`` ``mode``, see
    :func:`lram.models.kernels.fused_training_applies`); never while a graph is exported or traced."""
    if exporting() or torch.jit.is_tracing():
        return False
    return fused_training_applies(mode, *tensors)


class _FusedRMSNorm(torch.autograd.Function):
    """``torch.ops.lram.rms_norm_fwd`` / ``_bwd`` (one pass per row each way)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = torch.ops.lram.rms_norm_fwd(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, weight, rstd = ctx.saved_tensors
        gx, gw = torch.ops.lram.rms_norm_bwd(gy, x, weight, rstd)
        return gx, gw, None


class _SplitLinear(torch.autograd.Function):
    """``F.linear(u, weight).chunk(2, -1)`` whose backward multiplies by each half of the weight instead of
    concatenating the two halves' gradients first (a copy of the [B, T, 2 ED] gradient per block)."""

    @staticmethod
    def forward(ctx, u, weight):
        ctx.save_for_backward(u, weight)
        return F.linear(u, weight).chunk(2, dim=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gx, gz):
        u, weight = ctx.saved_tensors
        half = weight.shape[0] // 2
        u2 = u.reshape(-1, u.shape[-1])
        gx = (torch.zeros_like(u2[:, :1]).expand(-1, half) if gx is None else gx.reshape(-1, half))
        gz = (torch.zeros_like(u2[:, :1]).expand(-1, half) if gz is None else gz.reshape(-1, half))
        gu = gw = None
        if ctx.needs_input_grad[0]:
            gu = torch.addmm(gx @ weight[:half], gz, weight[half:]).view_as(u)
        if ctx.needs_input_grad[1]:
            gw = torch.empty_like(weight)
            torch.mm(gx.t(), u2, out=gw[:half])
            torch.mm(gz.t(), u2, out=gw[half:])
        return gu, gw


class RMSNorm(nn.Module):
    """RMSNorm with a weight (computed in fp32, like ``mamba_ssm``).  In training on the CPU (``train_kernel``)
    it runs as one compiled op forward and one backward."""

    def __init__(self, dim: int, eps: float, train_kernel: str = "auto"):
        super().__init__()
        self.eps = eps
        self.train_kernel = train_kernel
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and _fused_training(self.train_kernel, x, self.weight)
                and hasattr(torch.ops.lram, "rms_norm_fwd")):
            return _FusedRMSNorm.apply(x, self.weight, self.eps)
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


class MambaMixer(nn.Module):
    """The Mamba-1 mixer; ``forward`` (a sequence) and ``step`` (k new tokens) compute the same function."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        D, E, N, R = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
        self.cfg = cfg
        self.in_proj = Linear(D, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, cfg.d_conv, groups=E, padding=cfg.d_conv - 1, bias=True)
        self.x_proj = Linear(E, R + 2 * N, bias=False)
        self.dt_proj = Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.empty(E, N))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = Linear(E, D, bias=False)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    # ------------------------------------------------------------ shared pieces
    def _conv(self, x: torch.Tensor, conv_state: torch.Tensor | None):
        """SiLU(causal depthwise conv) of x [B, T, E] continuing from the last d_conv - 1 inputs."""
        K = self.cfg.d_conv
        T = x.shape[1]
        if T > 8 and _fused_training(self.cfg.train_kernel, x, self.conv1d.weight) and train_ops.available("causal_conv_fwd"):
            # training windows on the CPU: conv + SiLU as one fused op forward and backward
            state = None if conv_state is None else conv_state.to(x.dtype)
            y = train_ops.causal_conv(x, self.conv1d.weight.view(-1, K), self.conv1d.bias, state, True)
            tail = x[:, T - (K - 1) :] if T >= K - 1 else torch.cat([x.new_zeros(x.shape[0], K - 1 - T, x.shape[2])
                                                                      if state is None else state[:, T:], x], dim=1)
            return y, tail.to(torch.float32, copy=True)
        prev = x.new_zeros(x.shape[0], K - 1, x.shape[2]) if conv_state is None else conv_state.to(x.dtype)
        xs = torch.cat([prev, x], dim=1)
        w = self.conv1d.weight.squeeze(1)  # [E, K]
        if T <= 8:  # a few tokens (inference): windows times taps, one op
            y = (xs.unfold(1, K, 1) * w).sum(-1) + self.conv1d.bias
        else:  # long sequences: K shifted multiply-adds (faster than conv1d on CPU, forward and backward)
            wt = w.t()
            y = torch.addcmul(self.conv1d.bias, xs[:, :T], wt[0])
            for j in range(1, K):
                y = torch.addcmul(y, xs[:, j : j + T], wt[j])
        new_state = xs[:, xs.shape[1] - (K - 1) :].to(torch.float32, copy=True)
        return F.silu(y), new_state

    def _ssm_inputs(self, x: torch.Tensor):
        """dt (before dt_proj's bias), B, C from the conv output."""
        N, R = self.cfg.d_state, self.cfg.resolved_dt_rank
        dt, B, C = self.x_proj(x).split([R, N, N], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C

    def _fused_scan_applies(self, *tensors) -> bool:
        """Whether the sequence scan runs on the fused CPU op (``train_kernel``, see
        :func:`lram.models.kernels.fused_training_applies`)."""
        mode = self.cfg.train_kernel
        if not _fused_training(mode, *(t for t in tensors if t is not None)):
            return False
        if fused_scan_available():
            return True
        if mode == "fused":
            raise RuntimeError("train_kernel='fused': lram's compiled CPU kernels lack the selective_scan ops")
        return False

    def _scan_fused(self, x, z, dt, B, C, h):
        """The fused CPU scan: softplus(dt + bias), the recurrence, skip and gate in one op."""
        A = -torch.exp(self.A_log)
        return fused_selective_scan(dt, x, A, B, C, h, self.D, z, self.dt_proj.bias, delta_softplus=True,
                                    mul_delta=True, chunk=self.cfg.scan_chunk)

    def _scan_torch(self, x, z, dt, B, C, h):
        """PyTorch selective scan + skip + gate, fp32 inside."""
        xf = x.float()
        delta = F.softplus(dt.float() + self.dt_proj.bias.float())
        A = -torch.exp(self.A_log.float())
        if h is None:
            h = xf.new_zeros(x.shape[0], *A.shape)
        y, h = selective_scan(delta, delta * xf, A, B.float(), C.float(), h, self.cfg.scan_chunk)
        y = torch.addcmul(y, xf, self.D.float()).to(x.dtype)
        return y * F.silu(z), h

    # ------------------------------------------------------------ modes
    def forward(self, u: torch.Tensor, conv_state: torch.Tensor | None = None, h: torch.Tensor | None = None, *,
                step: bool = False):
        """u [B, T, D] -> (out [B, T, D], conv_state, h); None states mean a fresh sequence.

        ``step=True`` (see :meth:`step`) is the same function on k new tokens: the same layer code, which only
        picks the scan for a few tokens (token updates with ``mamba_ssm``, the PyTorch scan on the CPU)."""
        if (not step and torch.is_grad_enabled() and self.in_proj.bias is None
                and _fused_training(self.cfg.train_kernel, u, self.in_proj.weight)):
            x, z = _SplitLinear.apply(u, self.in_proj.weight)
        else:
            x, z = self.in_proj(u).chunk(2, dim=-1)
        x, conv_state = self._conv(x, conv_state)
        dt, B, C = self._ssm_inputs(x)
        kernels = _kernels_for(u, self.cfg.kernel)
        if (not step and kernels is None
                and self._fused_scan_applies(x, z, dt, B, C, h, self.A_log, self.D, self.dt_proj.bias)):
            y, h = self._scan_fused(x, z, dt, B, C, h)
        else:
            with _no_autocast(u.device.type):
                if kernels is None:
                    y, h = self._scan_torch(x, z, dt, B, C, h)
                elif step:
                    y, h = self._step_cuda(kernels, x, z, dt, B, C, h)
                else:
                    y, h = self._scan_cuda(kernels, x, z, dt, B, C, h)
        return self.out_proj(y), conv_state, h

    def step(self, u: torch.Tensor, conv_state: torch.Tensor, h: torch.Tensor):
        """u [B, k, D], k >= 1 new tokens -> (out [B, k, D], conv_state, h): :meth:`forward` continuing a
        state, with every weight read once for the k tokens (only the scan loops over them)."""
        return self.forward(u, conv_state, h, step=True)

    # ------------------------------------------------------------ mamba_ssm kernels (CUDA)
    def _scan_cuda(self, k, x, z, dt, B, C, h0):
        """``selective_scan_fn`` over the sequence.  It cannot start from a state, so a given h0 is added
        exactly: h_t += exp(sum_{s<=t} delta_s A) h0 (and its readout C_t . h_t).  Gradients do not flow
        through the kernel's returned last state (a ``mamba_ssm`` limitation)."""
        A = -torch.exp(self.A_log.float())
        bias = self.dt_proj.bias.float()
        dtype = x.dtype
        y, last = k.selective_scan_fn(
            x.transpose(1, 2),
            dt.to(dtype).transpose(1, 2),
            A,
            B.to(dtype).transpose(1, 2),
            C.to(dtype).transpose(1, 2),
            self.D.float(),
            z=None if h0 is not None else z.to(dtype).transpose(1, 2),
            delta_bias=bias,
            delta_softplus=True,
            return_last_state=True,
        )
        y, last = y.transpose(1, 2), last.to(torch.float32, copy=True)
        if h0 is not None:
            delta = F.softplus(dt.float() + bias)
            decay = torch.exp(torch.cumsum(delta.unsqueeze(-1) * A, dim=1)) * h0.unsqueeze(1)  # [B, T, E, N]
            y = (y.float() + (decay @ C.float().unsqueeze(-1)).squeeze(-1)).to(dtype) * F.silu(z)
            last = last + decay[:, -1]
        return y, last

    def _step_cuda(self, k, x, z, dt, B, C, h):
        """``selective_state_update`` once per new token (it updates a copy of h in place)."""
        A = -torch.exp(self.A_log.float())
        h = h.clone()
        ys = [
            k.selective_state_update(
                h, x[:, t], dt[:, t], A, B[:, t], C[:, t], D=self.D, z=z[:, t], dt_bias=self.dt_proj.bias, dt_softplus=True
            )
            for t in range(x.shape[1])
        ]
        return torch.stack(ys, dim=1), h


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + Mixer(RMSNorm(x)) (no MLP, as ``create_block`` with d_intermediate=0)."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.train_kernel)
        self.mixer = MambaMixer(cfg)

    def forward(self, x, conv_state=None, h=None, *, step: bool = False):
        y, conv_state, h = self.mixer(self.norm(x), conv_state, h, step=step)
        return x + y, conv_state, h

    def step(self, x, conv_state, h):
        """:meth:`forward` on k new tokens continuing a state (see :meth:`MambaMixer.step`)."""
        return self.forward(x, conv_state, h, step=True)


# ============================================================================ the backbone
class MambaBackbone(Backbone):
    """A stack of Mamba-1 blocks with a final RMSNorm; parallel ``forward`` and recurrent ``step``."""

    kind = "mamba"
    fused_step_ops = ("mamba_block_step", "linear_rows")

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        if config.kernel == "mamba_ssm":
            _require_mamba_ssm()  # fail at build time, with the install hint
        self.blocks = nn.ModuleList(MambaBlock(config) for _ in range(config.num_blocks))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps, config.train_kernel)
        self._keys = [(f"conv.{i}", f"h.{i}") for i in range(config.num_blocks)]
        self.reset_parameters()

    def state_fields(self) -> tuple[str, ...]:
        return ("d_model", "num_blocks", "d_state", "d_conv", "expand")

    # ---------------------------------------------------------------- modes
    def _forward(self, x, state, return_state):
        new = {}
        for block, (kc, kh) in zip(self.blocks, self._keys):
            conv, h = (None, None) if state is None else (state[kc], state[kh])
            x, new[kc], new[kh] = block(x, conv, h)
        y = self.norm_f(x)
        return y, (RecurrentState(new, self.state_signature()) if return_state else None)

    def _step(self, x, state):
        if self._fused_step_applies(x):
            return self._fused_step(x, state)
        new = {}
        for block, (kc, kh) in zip(self.blocks, self._keys):
            x, new[kc], new[kh] = block.step(x, state[kc], state[kh])
        return self.norm_f(x), RecurrentState(new, state.signature)

    def _fused_step(self, x, state):
        """The step with each block as one compiled CPU call (``torch.ops.lram.mamba_block_step``: the same
        function as ``MambaBlock.step``, updating the state tensors in place)."""
        tensors = state.tensors
        eps = self.config.norm_eps
        for (kc, kh), args in zip(self._keys, self._fused_args):
            x = torch.ops.lram.mamba_block_step(x, *args, tensors[kc], tensors[kh], eps)
        return self.norm_f(x), RecurrentState(dict(tensors), state.signature)

    def _fused_step_arguments(self) -> list[tuple[torch.Tensor, ...]]:
        """Per block, the weights the fused step reads."""
        return [
            (b.norm.weight, m.in_proj.weight, m.conv1d.weight, m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight,
             m.dt_proj.bias, m.A_log, m.D, m.out_proj.weight)
            for b, m in ((b, b.mixer) for b in self.blocks)
        ]

    def _init_state(self, batch_size, device):
        cfg = self.config
        out = {}
        for kc, kh in self._keys:
            out[kc] = torch.zeros(batch_size, cfg.d_conv - 1, cfg.d_inner, device=device)
            out[kh] = torch.zeros(batch_size, cfg.d_inner, cfg.d_state, device=device)
        return out

    # ------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``mamba_ssm``'s initialisation: default Linear/Conv1d init; dt_proj weight U(+-dt_rank^-0.5) and
        bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max]; A = 1..N per channel; D = 1; out_proj
        kaiming-uniform(a=sqrt(5)) / sqrt(num_blocks) (one residual branch per block, no MLP)."""
        cfg = self.config
        E, N, R = cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
        for block in self.blocks:
            block.norm.weight.fill_(1.0)
            m = block.mixer
            for lin in (m.in_proj, m.x_proj, m.conv1d):
                lin.reset_parameters()
            nn.init.uniform_(m.dt_proj.weight, -(R**-0.5), R**-0.5)
            log_dt = torch.rand(E) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
            dt = torch.exp(log_dt).clamp(min=cfg.dt_init_floor)
            m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            m.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
            m.D.fill_(1.0)
            nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
            m.out_proj.weight.div_(math.sqrt(cfg.num_blocks))
        self.norm_f.weight.fill_(1.0)


# ============================================================================ weights of the reference libraries
@torch.no_grad()
def load_from_mamba_library(backbone: MambaBackbone, source: nn.Module | dict[str, torch.Tensor]) -> None:
    """Copy weights from a ``mambapy.mamba.Mamba``, a ``mamba_ssm`` ``MixerModel`` / ``MambaLMHeadModel`` or
    their state dicts (``[prefix.]layers.{i}.{norm,mixer}.*`` and, if present, ``[prefix.]norm_f.weight``).
    ``mambapy`` has no final norm: ``norm_f`` is then left as it is."""
    sd = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    for name, p in backbone.named_parameters():
        suffix = name.replace("blocks.", "layers.", 1)
        hits = [k for k in sd if k == suffix or k.endswith("." + suffix)]
        if not hits:
            if name == "norm_f.weight":
                continue
            raise KeyError(f"load_from_mamba_library: no tensor for {name!r} (looked for '*{suffix}')")
        t = sd[hits[0]]
        if t.shape != p.shape:
            raise ValueError(f"load_from_mamba_library: {hits[0]} has shape {list(t.shape)}, {name} {list(p.shape)}")
        p.copy_(t)
