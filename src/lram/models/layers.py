"""Small building blocks shared by the backbones and the policy."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from lram.models import kernels

FEW_ROWS = 8
BIG_WEIGHT = 1 << 16  # a single row goes the two-column way only for weights larger than this (not cache-resident)
KERNEL_MIN_WEIGHT = 1 << 18  # lram's streaming kernel beats BLAS from about 1 MB of weights (below: call overhead)


_EXPORT = [False]


@contextlib.contextmanager
def export_mode():
    """While exporting a graph (ONNX): no branches on the number of rows, which would fix the batch size."""
    _EXPORT[0] = True
    try:
        yield
    finally:
        _EXPORT[0] = False


def exporting() -> bool:
    return _EXPORT[0] or torch.compiler.is_exporting()


class Linear(nn.Linear):
    """``nn.Linear`` with a fast path for a handful of rows on the CPU (batch-1 inference steps).

    For x with 2..8 rows, CPU BLAS computes ``x @ W^T`` by streaming W once per row (about 3x the memory
    traffic for an environment step of 3 tokens), whereas ``W @ x^T`` streams W once.  A single row is
    sent as two identical columns: BLAS runs a matrix-vector product on one thread (about 10 GB/s from
    memory here) but a two-column product on all of them (about 3x faster).  Same parameters, same result
    (up to float summation order), differentiable either way.  At inference, in a layer switched on with
    :func:`use_row_kernel`, few rows go to ``torch.ops.lram.linear_rows`` (a streaming pass over W, faster
    still)."""

    row_kernel = False  # per instance, set by use_row_kernel (a Backbone's / policy's prepare_for_inference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if exporting():  # a branch on the number of rows would fix the exported batch size
            return F.linear(x, self.weight, self.bias)
        rows = x.numel() // self.in_features
        if 0 < rows <= FEW_ROWS and x.device.type == "cpu" and (rows > 1 or self.weight.numel() >= BIG_WEIGHT):
            if (self.row_kernel and self.weight.numel() >= KERNEL_MIN_WEIGHT and x.dtype == torch.float32
                    and self.weight.dtype == torch.float32
                    and not torch.is_grad_enabled() and not torch.compiler.is_compiling()):
                return torch.ops.lram.linear_rows(x, self.weight, self.bias)  # see lram.models.kernels
            xr = x.reshape(rows, self.in_features)
            xt = (xr.repeat(2, 1) if rows == 1 else xr).t()
            y = self.weight @ xt if self.bias is None else torch.addmm(self.bias.unsqueeze(1), self.weight, xt)
            return y[:, :rows].t().reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)


def use_row_kernel(module: nn.Module, enabled: bool) -> None:
    """Switch lram's few-rows kernel (``torch.ops.lram.linear_rows``) on or off for every :class:`Linear`
    inside ``module`` (and only there).  On, a layer uses it for inference calls (no autograd, CPU float32,
    2..8 rows or one row of a large weight); off, it uses BLAS.  Switching on loads the CPU kernels and
    leaves the layers off if they cannot load."""
    if enabled:
        enabled = kernels.load_cpu_kernels() and hasattr(torch.ops.lram, "linear_rows")
    for m in module.modules():
        if isinstance(m, Linear):
            m.row_kernel = enabled
