"""Autograd wrappers of lram's fused CPU training kernels (``train_cpu.cpp``).

Each function computes exactly what its PyTorch reference computes (tested in values and gradients,
``tests/test_train_kernels.py``), in one pass over the activations forward and one backward.  Callers
decide with :func:`lram.models.kernels.fused_training_applies` (a model's ``train_kernel`` setting, CPU
float32, no autocast) and keep the PyTorch ops otherwise.
"""

from __future__ import annotations

import torch


class _BlockDiagonal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return torch.ops.lram.block_diag_fwd(x, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx, dw = torch.ops.lram.block_diag_bwd(dy, x, weight)
        return dx, dw


def block_diagonal(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """y[..., b*s + o] = sum_i weight[b, o, i] x[..., b*s + i]: the block-diagonal projection
    (weight [blocks, s, s]) as one fused CPU op forward and backward."""
    return _BlockDiagonal.apply(x, weight)


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, state, silu):
        ctx.save_for_backward(x, weight, bias, state)
        ctx.silu = silu
        return torch.ops.lram.causal_conv_fwd(x, weight, bias, state, silu)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, bias, state = ctx.saved_tensors
        dx, dw, db, dstate = torch.ops.lram.causal_conv_bwd(dy, x, weight, bias, state, ctx.silu)
        return dx, dw, db, (dstate if ctx.needs_input_grad[3] else None), None


def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, state: torch.Tensor | None,
                silu: bool) -> torch.Tensor:
    """Causal depthwise conv over time, y[b, t] = bias + sum_k weight[:, k] * cat(state, x)[b, t + k]
    (x [B, T, C], weight [C, K], state [B, K-1, C]: the inputs before the window, zeros if None), with an
    optional SiLU, as one fused CPU op forward and backward."""
    return _CausalConv.apply(x, weight, bias, state, silu)


def available(*ops: str) -> bool:
    """Whether the named ``torch.ops.lram`` ops are registered (the extension may predate an op)."""
    return all(hasattr(torch.ops.lram, op) for op in ops)


class _MLSTMPre(torch.autograd.Function):
    @staticmethod
    def forward(ctx, up, state, conv_w, conv_b, w_q, w_k, w_v, gate_w_c, gate_w_m, gate_b, num_heads):
        q, k, v, xc, gates = torch.ops.lram.mlstm_pre_fwd(up, state, conv_w, conv_b, w_q, w_k, w_v, num_heads,
                                                          gate_w_c, gate_w_m, gate_b)
        ctx.save_for_backward(xc, up, state, conv_w, conv_b, w_q, w_k, w_v, gate_w_c, gate_w_m)
        ctx.num_heads = num_heads
        return q, k, v, xc, gates

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dq, dk, dv, dxc, dg):
        xc, up, state, *weights, gate_w_c, gate_w_m = ctx.saved_tensors
        d_up, d_state, *d_weights = torch.ops.lram.mlstm_pre_bwd(dq, dk, dv, dxc, xc, up, state, *weights, ctx.num_heads,
                                                                 dg, gate_w_c, gate_w_m)
        return (d_up, d_state if ctx.needs_input_grad[1] else None, *d_weights, None)


def mlstm_pre(up, state, conv_w, conv_b, w_q, w_k, w_v, gate_w_c, gate_w_m, gate_b, num_heads: int):
    """The mLSTM layer from its up-projection ``up`` = [x_m | z] [B, T, 2I] to the cell's inputs:
    x_c = SiLU(causal conv(x_m)) [B, T, I]; q, k (block-diagonal of x_c) and v (of x_m) in head-major layout
    [B, NH, T, DH]; the gate pre-activations W_c x_c + W_m x_m + b [B, G, T] (gate weights [G, I] on x_c and x_m,
    the block-diagonal maps folded in).  Returns (q, k, v, x_c, gates); one fused CPU op forward and backward."""
    return _MLSTMPre.apply(up, state, conv_w, conv_b, w_q, w_k, w_v, gate_w_c, gate_w_m, gate_b, num_heads)


class _MLSTMPost(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, xc, up, weight, skip, eps):
        y, mean, rstd = torch.ops.lram.mlstm_post_fwd(h, xc, up, weight, skip, eps)
        ctx.save_for_backward(h, xc, up, weight, skip, mean, rstd)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        dh, dxc, d_up, dw, dskip = torch.ops.lram.mlstm_post_bwd(dy, *ctx.saved_tensors)
        return dh, dxc, d_up, dw, dskip, None


def mlstm_post(h, xc, up, weight, skip, eps: float):
    """The mLSTM layer from the cell's output h [B, NH, T, DH] to the down-projection's input
    (per-head LayerNorm(h) * weight + skip * x_c) * SiLU(z) [B, T, I] (z = up[..., I:]); one fused CPU op
    forward and backward."""
    return _MLSTMPost.apply(h, xc, up, weight, skip, eps)


class _MLSTMLayerParallel(torch.autograd.Function):
    """:func:`mlstm_pre`, the per-head parallel cell (``lram::mlstm_cell_fwd``) and :func:`mlstm_post` as one
    autograd node, so the backward hands the post pass's d_up (its z half) to the pre pass, which fills the
    x_m half in place instead of autograd adding two full [B, T, 2I] gradients."""

    @staticmethod
    def forward(ctx, up, state, conv_w, conv_b, w_q, w_k, w_v, gate_w_c, gate_w_m, gate_b, norm_w, skip, num_heads: int,
                eps: float, cell_eps: float, tile: int):
        ops = torch.ops.lram
        q, k, v, xc, gates = ops.mlstm_pre_fwd(up, state, conv_w, conv_b, w_q, w_k, w_v, num_heads, gate_w_c, gate_w_m,
                                               gate_b)
        B, NH, T, DH = q.shape
        f = gates[:, NH:]
        i = gates[:, :NH].reshape(B * NH, T)
        b = torch.nn.functional.logsigmoid(f).cumsum(-1).reshape(B * NH, T)
        qf, kf, vf = (t.view(B * NH, T, DH) for t in (q, k, v))
        h, m, arg, r, den = ops.mlstm_cell_fwd(qf, kf, vf, i, b, DH**-0.5, cell_eps, tile)
        y, mean, rstd = ops.mlstm_post_fwd(h.view(B, NH, T, DH), xc, up, norm_w, skip, eps)
        ctx.save_for_backward(up, state, conv_w, conv_b, w_q, w_k, w_v, gate_w_c, gate_w_m, norm_w, skip, qf, kf, vf, xc,
                              f, i, b, h, m, arg, r, den, mean, rstd)
        ctx.options = (num_heads, DH**-0.5, cell_eps, tile)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (up, state, conv_w, conv_b, w_q, w_k, w_v, gate_w_c, gate_w_m, norm_w, skip, qf, kf, vf, xc, f, i, b, h, m, arg,
         r, den, mean, rstd) = ctx.saved_tensors
        num_heads, scale, cell_eps, tile = ctx.options
        ops = torch.ops.lram
        B, NH, T = f.shape
        shape = (B, NH, T, -1)
        dh, dxc, d_up, d_norm_w, d_skip = ops.mlstm_post_bwd(dy, h.view(shape), xc, up, norm_w, skip, mean, rstd)
        from lram.models.mlstm_cells import cell_input_grads

        dq, dk, dv, di, df = cell_input_grads(*ops.mlstm_cell_bwd(dh.view(h.shape), qf, kf, vf, i, b, h, m, arg, r, den,
                                                                  scale, cell_eps, tile), f)
        d_up, d_state, *d_weights = ops.mlstm_pre_bwd(dq, dk, dv, dxc, xc, up, state, conv_w, conv_b, w_q, w_k, w_v,
                                                      num_heads, torch.cat([di, df], 1), gate_w_c, gate_w_m, d_up)
        return (d_up, d_state if ctx.needs_input_grad[1] else None, *d_weights, d_norm_w, d_skip, None, None, None, None)


def mlstm_layer_parallel(up, state, conv_w, conv_b, w_q, w_k, w_v, gate_w_c, gate_w_m, gate_b, norm_w, skip,
                         num_heads: int, eps: float, cell_eps: float, tile: int):
    """``mlstm_post(cell(mlstm_pre(...)), ...)`` for a training window from an empty memory with the per-head
    parallel cell kernels: the down-projection's input [B, T, I]; one autograd node (see the class)."""
    return _MLSTMLayerParallel.apply(up, state, conv_w, conv_b, w_q, w_k, w_v, gate_w_c, gate_w_m, gate_b, norm_w, skip,
                                     num_heads, eps, cell_eps, tile)
