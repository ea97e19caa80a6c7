"""The sLSTM scan on lram's fused CPU kernels (``slstm_train_cpu.cpp``), differentiable.

:func:`slstm_scan_fused` computes the same function as :func:`lram.models.xlstm.slstm_scan` (values and
gradients, to float32 rounding) with one compiled call for the forward scan and one for the backward scan,
instead of ~15 PyTorch operations per time step in each direction."""

from __future__ import annotations

import torch

from lram.models import kernels


def slstm_kernel_available() -> bool:
    """Whether the fused sLSTM scan ops are usable (loading lram's CPU kernels if they are not yet)."""
    return kernels.load_cpu_kernels() and hasattr(torch.ops.lram, "slstm_scan_fwd")


class SLSTMScanFunction(torch.autograd.Function):
    """Autograd wrapper of ``torch.ops.lram.slstm_scan_fwd`` / ``slstm_scan_bwd``.

    Inputs wx [B, T, 4, NH, DH], R [NH, DH, 4 DH], h0, c0, n0, m0 [B, NH, DH]; outputs hs [B, T, NH, DH]
    and the final h, c, n, m [B, NH, DH]."""

    @staticmethod
    def forward(ctx, wx, R, h0, c0, n0, m0):
        hs, h, c, n, m, gates, cs, ns = torch.ops.lram.slstm_scan_fwd(wx, R, h0, c0, n0, m0, True)
        ctx.save_for_backward(R, h0, c0, n0, hs, gates, cs, ns)
        ctx.set_materialize_grads(False)  # unused outputs (often the final state) cost nothing in the backward
        return hs, h, c, n, m

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hs, grad_h, grad_c, grad_n, grad_m):
        R, h0, c0, n0, hs, gates, cs, ns = ctx.saved_tensors
        grads = torch.ops.lram.slstm_scan_bwd(grad_hs, grad_h, grad_c, grad_n, grad_m, R, h0, c0, n0, hs, gates, cs, ns)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def slstm_scan_fused(wx: torch.Tensor, R: torch.Tensor, st: dict[str, torch.Tensor]):
    """:func:`lram.models.xlstm.slstm_scan` on the fused kernels: the same arguments and results
    (h [B, T, NH, DH] and the final state dict h/c/n/m).  Without autograd it skips saving the backward's
    tensors."""
    args = (wx, R, st["h"], st["c"], st["n"], st["m"])
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        hs, h, c, n, m = SLSTMScanFunction.apply(*args)
    else:
        hs, h, c, n, m = torch.ops.lram.slstm_scan_fwd(*args, False)[:5]
    return hs, {"h": h, "c": c, "n": n, "m": m}
