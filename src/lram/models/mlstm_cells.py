"""mLSTM cell kernels (Beck et al. 2024): the cell of the xLSTM backbone's mLSTM blocks, apart from the model
(as NX-AI's ``xlstm_large`` keeps its kernels apart), in several forms that compute the same function:

* :func:`mlstm_chunkwise` (the default sequence form: exact, memory linear in T) and :func:`mlstm_recurrent`
  (the defining token-by-token recurrence, a reference);
* :func:`mlstm_parallel` / :func:`mlstm_parallel_fused` (training windows from an empty memory: the fully
  parallel form with a hand-written backward, the latter on lram's fused CPU gate kernels);
* :func:`mlstm_step` (inference on a few new tokens; in place or functional for ``torch.compile``);
* ``mlstm_kernels:<name>``: a sequence kernel of the ``mlstm_kernels`` package (e.g. Triton on a GPU).

:func:`get_mlstm_kernel` resolves ``XLSTMConfig.mlstm_kernel`` names.  Every kernel has the signature
``kernel(q, k, v, i, f, state, chunk_size, eps) -> (h, (C, n, m))``.

Stabiliser convention: a fresh state has m = -inf, stored as the finite sentinel :data:`M_EMPTY`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

M_EMPTY = -1.0e30  # stabiliser value of an empty memory (acts as -inf without inf arithmetic)

# Shapes: q, k, v [B, NH, T, DH]; i, f (gate pre-activations) [B, NH, T];
# state C [B, NH, DH, DH], n [B, NH, DH], m [B, NH].  Returns h [B, NH, T, DH] and the new (C, n, m).
MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def mlstm_chunkwise(q, k, v, i, f, state: MLSTMState, chunk_size: int, eps: float = 1e-6):
    """mLSTM cell, chunkwise-parallel form: exact (same function as the recurrence), memory O(T * chunk)."""
    B, NH, T, DH = q.shape
    C0, n0, m0 = state
    L = min(chunk_size, T)
    NC = -(-T // L)
    pad = NC * L - T
    k = k * (DH**-0.5)
    lf = F.logsigmoid(f)
    if pad:  # padded tokens neither write (i = -inf) nor forget (log f = 0): the state passes through
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        i = F.pad(i, (0, pad), value=M_EMPTY)
        lf = F.pad(lf, (0, pad), value=0.0)
    q, k, v = (t.reshape(B, NH, NC, L, DH) for t in (q, k, v))
    i, lf = i.reshape(B, NH, NC, L), lf.reshape(B, NH, NC, L)

    b = lf.cumsum(-1)  # log forget from chunk start to t (inclusive)
    g = b[..., -1]  # log forget through the whole chunk
    # summary of each chunk's own contribution to the state at its end
    a = g.unsqueeze(-1) - b + i  # [B, NH, NC, L]
    m_loc = a.max(-1).values
    w = torch.exp(a - m_loc.unsqueeze(-1)).unsqueeze(-1)
    C_loc = (k * w).transpose(-1, -2) @ v  # [B, NH, NC, DH, DH]
    n_loc = (k * w).sum(-2)  # [B, NH, NC, DH]

    # inter-chunk recurrence: states at the start of every chunk
    C_starts, n_starts, m_starts = [], [], []
    C, n, m = C0, n0, m0
    for c in range(NC):
        C_starts.append(C)
        n_starts.append(n)
        m_starts.append(m)
        m_new = torch.maximum(g[..., c] + m, m_loc[..., c])
        decay = torch.exp(g[..., c] + m - m_new)
        scale = torch.exp(m_loc[..., c] - m_new)
        C = decay[..., None, None] * C + scale[..., None, None] * C_loc[:, :, c]
        n = decay[..., None] * n + scale[..., None] * n_loc[:, :, c]
        m = m_new
    C_prev = torch.stack(C_starts, 2)  # [B, NH, NC, DH, DH]
    n_prev = torch.stack(n_starts, 2)  # [B, NH, NC, DH]
    m_prev = torch.stack(m_starts, 2)  # [B, NH, NC]

    # outputs: intra-chunk (causal, gated attention-like) + inter-chunk (from the chunk-start state)
    log_d = b.unsqueeze(-1) - b.unsqueeze(-2) + i.unsqueeze(-2)  # [B, NH, NC, L(t), L(s)]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    log_inter = b + m_prev.unsqueeze(-1)  # [B, NH, NC, L]
    m_t = torch.maximum(log_d.max(-1).values, log_inter)
    d = torch.exp(log_d - m_t.unsqueeze(-1))
    s = (q @ k.transpose(-1, -2)) * d  # [B, NH, NC, L, L]
    inter = torch.exp(log_inter - m_t).unsqueeze(-1)
    q_inter = q * inter
    num = s @ v + q_inter @ C_prev
    den = s.sum(-1) + (q_inter * n_prev.unsqueeze(-2)).sum(-1)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_t)) + eps).unsqueeze(-1)
    h = h.reshape(B, NH, NC * L, DH)[:, :, :T]
    return h, (C, n, m)


def mlstm_recurrent(q, k, v, i, f, state: MLSTMState, chunk_size: int = 0, eps: float = 1e-6):
    """mLSTM cell, one token at a time (the defining recurrence; a reference and a small-k step kernel)."""
    DH = q.shape[-1]
    k = k * (DH**-0.5)
    lf = F.logsigmoid(f)
    C, n, m = state
    hs = []
    for t in range(q.shape[2]):
        m_new = torch.maximum(lf[:, :, t] + m, i[:, :, t])
        decay = torch.exp(lf[:, :, t] + m - m_new)
        scale = torch.exp(i[:, :, t] - m_new)
        kt, vt, qt = k[:, :, t], v[:, :, t], q[:, :, t]
        C = decay[..., None, None] * C + scale[..., None, None] * (kt.unsqueeze(-1) * vt.unsqueeze(-2))
        n = decay[..., None] * n + scale[..., None] * kt
        m = m_new
        num = (qt.unsqueeze(-2) @ C).squeeze(-2)
        den = (qt * n).sum(-1)
        hs.append(num / (torch.maximum(den.abs(), torch.exp(-m)) + eps).unsqueeze(-1))
    return torch.stack(hs, 2), (C, n, m)


class _MLSTMParallel(torch.autograd.Function):
    """The mLSTM cell over a whole window from an empty memory, in its fully parallel (quadratic) form,
    with a hand-written backward: ~10 passes over the [T, T] gate matrix and 6 batched products in all,
    instead of autograd's record of the chunkwise form.  The stabiliser m_t = max_s log D[t, s] gets its
    gradient exactly as autograd would give it (to the arg-max entry), so values and gradients equal the
    chunkwise form's (tests)."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, eps: float):
        T, DH = q.shape[-2:]
        scale = DH**-0.5
        b = F.logsigmoid(f).cumsum(-1)
        log_d = (b.unsqueeze(-1) - b.unsqueeze(-2)).add_(i.unsqueeze(-2))  # [B, NH, T(t), T(s)]
        log_d.masked_fill_(_future_mask(T, q.device), float("-inf"))
        m, arg = log_d.max(-1)
        d = log_d.sub_(m.unsqueeze(-1)).exp_()  # stabilised decay (0 above the diagonal)
        s_raw = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
        s = s_raw * d
        r = s.sum(-1)
        em = torch.exp(-m)
        den = torch.maximum(r.abs(), em) + eps
        h = torch.matmul(s, v).div_(den.unsqueeze(-1))
        ctx.save_for_backward(q, k, v, f, s, d, r, em, den, h, arg)
        ctx.scale = scale
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh):
        q, k, v, f, s, d, r, em, den, h, arg = ctx.saved_tensors
        dnum = dh / den.unsqueeze(-1)
        dden = -(dh * h).sum(-1) / den
        by_r = r.abs() >= em  # which side of max(|r|, exp(-m)) the normaliser took
        dr = torch.where(by_r, dden * torch.sign(r), 0.0)
        dm = torch.where(by_r, 0.0, -dden * em)
        ds = torch.matmul(dnum, v.transpose(-1, -2)).add_(dr.unsqueeze(-1))
        dv = torch.matmul(s.transpose(-1, -2), dnum)
        ds_raw = ds * d
        dq = torch.matmul(ds_raw, k).mul_(ctx.scale)
        dk = torch.matmul(ds_raw.transpose(-1, -2), q).mul_(ctx.scale)
        dlog = ds.mul_(s)  # d loss / d log D[t, s] through D = exp(log D - m)
        dm = dm - dlog.sum(-1)
        dlog.scatter_add_(-1, arg.unsqueeze(-1), dm.unsqueeze(-1))  # m = max_s log D[t, s]
        di = dlog.sum(-2)
        dlf = (dlog.sum(-1) - di).flip(-1).cumsum(-1).flip(-1)  # log D[t, s] = b_t - b_s + i_s, b = cumsum
        return dq, dk, dv, di, dlf * torch.sigmoid(-f), None


def cell_input_grads(dq, dk, dv, di, db, f):
    """The parallel cell's input gradients in the [B, NH, T, ...] layout from its kernels' [B NH, T, ...] ones;
    db (the gradient of b = cumsum(log sigmoid f)) mapped to f."""
    B, NH, T = f.shape
    dlf = db.view(B, NH, T).flip(-1).cumsum(-1).flip(-1)
    shape = (B, NH, T, -1)
    return dq.view(shape), dk.view(shape), dv.view(shape), di.view(B, NH, T), dlf * torch.sigmoid(-f)


class _MLSTMParallelFused(torch.autograd.Function):
    """:class:`_MLSTMParallel` with its gate-matrix passes fused into two CPU kernels
    (``lram::mlstm_gates_fwd`` / ``mlstm_gates_bwd``: the decay matrix, stabiliser, S = S_raw * D and its
    row sums in one pass forward; (dS + dr) * D, the gate gradients and the stabiliser's in one pass
    backward); the products stay batched matrix multiplies."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, eps: float):
        B, NH, T, DH = q.shape
        scale = DH**-0.5
        qf, kf, vf = (t.reshape(B * NH, T, DH) for t in (q, k, v))
        b = F.logsigmoid(f).cumsum(-1).reshape(B * NH, T)
        s = torch.bmm(qf, kf.transpose(1, 2))
        d, m, arg, r = torch.ops.lram.mlstm_gates_fwd(s, b, i.reshape(B * NH, T).contiguous(), scale)  # s <- S_raw * D
        em = torch.exp(-m)
        den = torch.maximum(r.abs(), em).add_(eps)
        h = torch.bmm(s, vf).div_(den.unsqueeze(-1))
        ctx.save_for_backward(qf, kf, vf, f, s, d, r, em, den, h, arg)
        ctx.scale = scale
        return h.view(B, NH, T, DH)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh):
        qf, kf, vf, f, s, d, r, em, den, h, arg = ctx.saved_tensors
        B, NH, T = f.shape
        dh = dh.reshape(B * NH, T, -1)
        dnum = dh / den.unsqueeze(-1)
        dden = -(dh * h).sum(-1) / den
        by_r = r.abs() >= em
        dr = torch.where(by_r, dden * torch.sign(r), 0.0)
        dm = torch.where(by_r, 0.0, -dden * em)
        ds = torch.bmm(dnum, vf.transpose(1, 2))
        dv = torch.bmm(s.transpose(1, 2), dnum)
        ds_raw, di, db = torch.ops.lram.mlstm_gates_bwd(ds, s, d, dr, dm, arg, ctx.scale)  # scale folded in
        dq = torch.bmm(ds_raw, kf)
        dk = torch.bmm(ds_raw.transpose(1, 2), qf)
        return (*cell_input_grads(dq, dk, dv, di, db, f), None)


class _MLSTMParallelCell(torch.autograd.Function):
    """:class:`_MLSTMParallel` as two CPU kernels per head (``lram::mlstm_cell_fwd`` / ``mlstm_cell_bwd``) that
    keep each head's [T, T] matrices in cache: the products (BLAS, skipping the tiles above the diagonal), the
    gate pass and the normaliser in one sweep; the backward recomputes S and D instead of saving them, so a
    window's activations are O(T) per head, not O(T^2)."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, eps: float, tile: int):
        B, NH, T, DH = q.shape
        scale = DH**-0.5
        qf, kf, vf = (t.reshape(B * NH, T, DH).contiguous() for t in (q, k, v))
        b = F.logsigmoid(f).cumsum(-1).reshape(B * NH, T).contiguous()
        i2 = i.reshape(B * NH, T).contiguous()
        h, m, arg, r, den = torch.ops.lram.mlstm_cell_fwd(qf, kf, vf, i2, b, scale, eps, tile)
        ctx.save_for_backward(qf, kf, vf, i2, b, f, h, m, arg, r, den)
        ctx.scale, ctx.eps, ctx.tile = scale, eps, tile
        return h.view(B, NH, T, DH)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh):
        qf, kf, vf, i2, b, f, h, m, arg, r, den = ctx.saved_tensors
        B, NH, T = f.shape
        dq, dk, dv, di, db = torch.ops.lram.mlstm_cell_bwd(dh.reshape(h.shape).contiguous(), qf, kf, vf, i2, b, h, m, arg,
                                                           r, den, ctx.scale, ctx.eps, ctx.tile)
        return (*cell_input_grads(dq, dk, dv, di, db, f), None, None)


CELL_TILE = 32  # row tiles of the per-head products (tokens): blocks above the diagonal are skipped


def mlstm_parallel(q, k, v, i, f, state: MLSTMState | None = None, chunk_size: int = 0, eps: float = 1e-6):
    """mLSTM cell over a window from an **empty** memory (``state`` is ignored), fully parallel; returns no
    final state.  The training form for windows up to a few hundred tokens (see ``parallel_max_tokens``)."""
    return _MLSTMParallel.apply(q, k, v, i, f, eps), (None, None, None)


def mlstm_parallel_fused(q, k, v, i, f, state: MLSTMState | None = None, chunk_size: int = 0, eps: float = 1e-6):
    """:func:`mlstm_parallel` on lram's fused CPU kernels (float32, CPU): the per-head cell kernels when this
    PyTorch exposes its BLAS to extensions, else the gate kernels around batched products."""
    if mlstm_cell_kernels_available():
        return _MLSTMParallelCell.apply(q, k, v, i, f, eps, CELL_TILE), (None, None, None)
    return _MLSTMParallelFused.apply(q, k, v, i, f, eps), (None, None, None)


_CELL_KERNELS: list[bool] = []  # decided once the CPU kernels are loaded


def mlstm_cell_kernels_available() -> bool:
    """Whether the per-head cell kernels run here: lram's CPU kernels are loaded and PyTorch's BLAS is
    reachable from them (``sgemm_``; not every build exports it)."""
    if not _CELL_KERNELS:
        if not hasattr(torch.ops.lram, "mlstm_cell_fwd"):
            return False
        _CELL_KERNELS.append(bool(torch.ops.lram.has_sgemm()))
    return _CELL_KERNELS[0]


@functools.cache
def _future_mask(L: int, device: torch.device) -> torch.Tensor:
    """[L, L] True above the diagonal (s > t), cached per size: the step builds it once, not every call."""
    return torch.ones(L, L, dtype=torch.bool, device=device).triu(1)


def mlstm_step(q, k, v, i, f, state: MLSTMState, chunk_size: int = 0, eps: float = 1e-6, *, inplace: bool = False):
    """Inference step of the mLSTM cell on a few tokens (one chunk): the arithmetic of one chunk of
    :func:`mlstm_chunkwise`, arranged so that the matrix memory C (the largest tensor of the step: heads x
    DH x DH per block) is read once for the outputs and updated once.

    ``inplace=True`` (no autograd; the eager CPU step) updates the state tensors in place and returns them,
    instead of copying C; ``inplace=False`` returns new state tensors in a form that ``torch.compile``
    fuses into one pass over C (compiled agents)."""
    B, NH, L, DH = q.shape
    C, n, m = state
    k = k * (DH**-0.5)
    b = F.logsigmoid(f).cumsum(-1)  # [B, NH, L]
    log_d = b.unsqueeze(-1) - b.unsqueeze(-2) + i.unsqueeze(-2)  # [B, NH, L, L]
    if L > 1:  # the cached mask in eager mode; a compiled step builds it in its graph
        future = _future_mask(L, q.device) if inplace else torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1)
        log_d = log_d.masked_fill(future, float("-inf"))
    # readout: intra-chunk (gated attention-like) + inter-chunk (from the state at the chunk start)
    log_inter = b + m.unsqueeze(-1)
    m_t = torch.maximum(log_d.amax(-1), log_inter)
    s = (q @ k.transpose(-1, -2)) * torch.exp(log_d - m_t.unsqueeze(-1))
    q_inter = q * torch.exp(log_inter - m_t).unsqueeze(-1)
    num = torch.baddbmm((s @ v).reshape(B * NH, L, DH), q_inter.reshape(B * NH, L, DH), C.reshape(B * NH, DH, DH))
    den = s.sum(-1) + (q_inter @ n.unsqueeze(-1)).squeeze(-1)
    h = num.view(B, NH, L, DH) / (torch.maximum(den.abs(), torch.exp(-m_t)) + eps).unsqueeze(-1)
    # state update: C <- decay * C + sum_s w_s k_s v_s^T, n likewise, m <- m_new
    g = b[..., -1]
    a = g.unsqueeze(-1) - b + i
    m_new = torch.maximum(g + m, a.amax(-1))
    kw = k * torch.exp(a - m_new.unsqueeze(-1)).unsqueeze(-1)  # [B, NH, L, DH]
    decay = torch.exp(g + m - m_new)
    if not inplace:
        C_new = C * decay[..., None, None] + (kw.unsqueeze(-1) * v.unsqueeze(-2)).sum(-3)
        return h, (C_new, n * decay.unsqueeze(-1) + kw.sum(-2), m_new)
    C.mul_(decay[..., None, None]).view(B * NH, DH, DH).baddbmm_(kw.transpose(-1, -2).reshape(B * NH, DH, L),
                                                                 v.reshape(B * NH, L, DH))
    n.mul_(decay.unsqueeze(-1)).add_(kw.sum(-2))
    m.copy_(m_new)
    return h, (C, n, m)


@torch.no_grad()
def mlstm_step_inplace(q, k, v, i, f, state: MLSTMState, chunk_size: int = 0, eps: float = 1e-6):
    """:func:`mlstm_step` updating the state in place (no autograd): the eager inference step."""
    return mlstm_step(q, k, v, i, f, state, chunk_size, eps, inplace=True)


def mlstm_step_compilable(q, k, v, i, f, state: MLSTMState, chunk_size: int = 0, eps: float = 1e-6):
    """:func:`mlstm_step` in functional form (new state tensors): the step inside ``torch.compile``."""
    return mlstm_step(q, k, v, i, f, state, chunk_size, eps, inplace=False)


def _mlstm_kernels_adapter(name: str) -> Callable:
    """Wrap a sequence kernel of the ``mlstm_kernels`` package (e.g. Triton kernels on GPU)."""
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError(
            f"mlstm_kernel={name!r} needs the 'mlstm_kernels' package: pip install 'lram[gpu]'"
        ) from e
    kernel = get_mlstm_kernel(name)

    def run(q, k, v, i, f, state, chunk_size, eps=1e-6):
        T = q.shape[2]
        cs = min(chunk_size, T)
        pad = -T % cs
        if pad:  # same pass-through padding as mlstm_chunkwise
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            i = F.pad(i, (0, pad), value=M_EMPTY)
            f = F.pad(f, (0, pad), value=1e4)  # logsigmoid(1e4) = 0: no forgetting
        # their memory holds unscaled keys (they scale q instead): C_theirs = sqrt(DH) * C_ours
        root = q.shape[-1] ** 0.5
        C, n, m = state
        h, (C, n, m) = kernel(
            q=q, k=k, v=v, i=i, f=f, c_initial=C * root, n_initial=n * root, m_initial=m,
            return_last_states=True, chunk_size=cs, eps=eps,
        )
        return h[:, :, :T], (C / root, n / root, m.reshape(m.shape[0], m.shape[1]))

    return run


MLSTM_KERNELS: dict[str, Callable] = {"chunkwise": mlstm_chunkwise, "recurrent": mlstm_recurrent}


def get_mlstm_kernel(name: str) -> Callable:
    """The sequence kernel of an ``XLSTMConfig.mlstm_kernel`` name (see :data:`MLSTM_KERNELS`)."""
    if name.startswith("mlstm_kernels:"):
        return _mlstm_kernels_adapter(name.split(":", 1)[1])
    return MLSTM_KERNELS[name]
