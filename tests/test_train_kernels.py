"""lram's fused CPU training kernels (train_cpu.cpp) against PyTorch references: values and gradients.

Every op is compared with the PyTorch computation it replaces, in float64 for the reference (the kernels
are float32), and a whole xLSTM backbone trained with ``train_kernel="fused"`` must give the gradients of
``train_kernel="torch"``.  Bad arguments must raise an error that names the argument.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lram.models import build_backbone
from lram.models.kernels import load_cpu_kernels
from lram.models.kernels import training as ops
from lram.models.mlstm_cells import (
    M_EMPTY,
    _MLSTMParallelCell,
    _MLSTMParallelFused,
    mlstm_cell_kernels_available,
    mlstm_chunkwise,
    mlstm_parallel,
    mlstm_parallel_fused,
)
from lram.models.xlstm import fold_gate_weights, multihead_norm


@pytest.fixture(scope="module", autouse=True)
def kernels():
    load_cpu_kernels(required=True)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def grads(fn, inputs, weight):
    """Value of fn(*inputs) and d sum(fn * weight) / d inputs (zeros for inputs fn does not use)."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*inputs)
    g = torch.autograd.grad((y * weight.to(y.dtype)).sum(), inputs, allow_unused=True)
    return y.detach(), [torch.zeros_like(x) if d is None else d.detach() for x, d in zip(inputs, g)]


@pytest.mark.parametrize("rows,blocks,size", [(7, 5, 3), (300, 64, 4), (2, 1, 4), (5, 6, 4), (3, 4, 8)])
def test_block_diagonal_equals_reference(rows, blocks, size):
    x = torch.randn(rows, blocks * size, dtype=torch.float64)
    w = torch.randn(blocks, size, size, dtype=torch.float64)
    g = torch.randn(rows, blocks * size, dtype=torch.float64)

    def reference(x, w):
        return (x.reshape(rows, blocks, 1, size) @ w.transpose(-1, -2)).reshape(rows, -1)

    y0, g0 = grads(reference, [x, w], g)
    y1, g1 = grads(ops.block_diagonal, [x.float(), w.float()], g)
    assert rel_err(y1, y0) < 1e-6
    for a, b in zip(g1, g0):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("B,T,C,K,with_state,silu", [(2, 5, 3, 4, True, True), (2, 7, 6, 3, False, False),
                                                      (3, 40, 33, 4, True, True), (1, 2, 17, 4, False, True)])
def test_causal_conv_equals_reference(B, T, C, K, with_state, silu):
    x = torch.randn(B, T, C, dtype=torch.float64)
    w = torch.randn(C, K, dtype=torch.float64)
    b = torch.randn(C, dtype=torch.float64)
    s = torch.randn(B, K - 1, C, dtype=torch.float64)
    g = torch.randn(B, T, C, dtype=torch.float64)

    def reference(x, w, b, s):
        xs = torch.cat([s if with_state else torch.zeros_like(s), x], 1)
        y = F.conv1d(xs.transpose(1, 2), w.unsqueeze(1), b, groups=C).transpose(1, 2)
        return F.silu(y) if silu else y

    def fused(x, w, b, s):
        return ops.causal_conv(x, w, b, s if with_state else None, silu)

    y0, g0 = grads(reference, [x, w, b, s], g)
    y1, g1 = grads(fused, [t.float() for t in (x, w, b, s)], g)
    assert rel_err(y1, y0) < 1e-5
    for a, r in zip(g1[:3], g0[:3]):
        assert rel_err(a, r) < 1e-5
    if with_state:
        assert rel_err(g1[3], g0[3]) < 1e-5


def _cell_inputs(B, NH, T, DH, dtype=torch.float64):
    q, k, v = (torch.randn(B, NH, T, DH, dtype=dtype) for _ in range(3))
    i = torch.randn(B, NH, T, dtype=dtype) * 2
    f = torch.randn(B, NH, T, dtype=dtype) + 3
    return [q, k, v, i, f]


def _chunkwise(q, k, v, i, f):
    B, NH, _, DH = q.shape
    empty = (q.new_zeros(B, NH, DH, DH), q.new_zeros(B, NH, DH), q.new_full((B, NH), M_EMPTY))
    return mlstm_chunkwise(q, k, v, i, f, empty, 16)[0]


def _gates_and_products(q, k, v, i, f):
    return _MLSTMParallelFused.apply(q, k, v, i, f, 1e-6), None


def _cell_kernels(tile):
    def run(q, k, v, i, f):
        return _MLSTMParallelCell.apply(q, k, v, i, f, 1e-6, tile), None
    return run


CELLS = {"parallel": mlstm_parallel, "gate-kernels": _gates_and_products, "cell-kernels-tile4": _cell_kernels(4),
         "cell-kernels-tile32": _cell_kernels(32), "cell-kernels-untiled": _cell_kernels(1000)}


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (2, 2, 60, 16), (1, 4, 70, 32), (2, 1, 1, 4), (1, 2, 45, 64)])
@pytest.mark.parametrize("cell", list(CELLS))
def test_parallel_mlstm_cell_equals_chunkwise(shape, cell):
    """The parallel form (hand-written backward; in PyTorch ops, with the fused gate kernels around batched
    products, and as the per-head cell kernels with and without skipped tiles) is the chunkwise form's
    function: values and gradients of q, k, v and both gates."""
    torch.manual_seed(0)
    inputs = _cell_inputs(*shape)
    g = torch.randn(*shape, dtype=torch.float64)
    y0, g0 = grads(_chunkwise, inputs, g)
    dtype = torch.float64 if cell == "parallel" else torch.float32
    y1, g1 = grads(lambda *t: CELLS[cell](*t)[0], [t.to(dtype) for t in inputs], g)
    # float64: rounding only (q and k gradients can be ~1e-6 of v's, so relative errors reach ~1e-10);
    # float32 against a float64 reference over up to 70 steps
    tol = 1e-8 if dtype == torch.float64 else 3e-4
    assert rel_err(y1, y0) < tol
    for name, a, b in zip("qkvif", g1, g0):
        if b.abs().max() > 0:  # (a single step has no forget-gate gradient)
            assert rel_err(a, b) < tol, name


def _layer_reference(up, conv_state, conv_w, conv_b, w_q, w_k, w_v, gate_w, gate_b, norm_w, skip, num_heads, eps):
    """The mLSTM layer between its projections in PyTorch ops (as MLSTMLayer computes it)."""
    B, T, two_i = up.shape
    inner = two_i // 2
    x_m, z = up.chunk(2, -1)
    xs = torch.cat([conv_state, x_m], 1)
    x_c = F.silu(F.conv1d(xs.transpose(1, 2), conv_w.unsqueeze(1), conv_b, groups=inner).transpose(1, 2))

    def bd(x, w):
        return (x.reshape(B, T, w.shape[0], 1, -1) @ w.transpose(-1, -2)).reshape(B, T, inner)

    q, k, v = bd(x_c, w_q), bd(x_c, w_k), bd(x_m, w_v)
    ig, fg = (torch.cat([q, k, v], -1) @ gate_w.t() + gate_b).transpose(1, 2).chunk(2, dim=1)

    def heads(t):
        return t.reshape(B, T, num_heads, -1).transpose(1, 2)

    h = _chunkwise(heads(q), heads(k), heads(v), ig, fg).transpose(1, 2).reshape(B, T, inner)
    return (multihead_norm(h, num_heads, norm_w, eps) + skip * x_c) * F.silu(z)


def _layer_fused(up, conv_state, conv_w, conv_b, w_q, w_k, w_v, gate_w, gate_b, norm_w, skip, num_heads, eps):
    w_c, w_m = fold_gate_weights(gate_w, w_q, w_k, w_v)
    q, k, v, x_c, gates = ops.mlstm_pre(up, conv_state, conv_w, conv_b, w_q, w_k, w_v, w_c, w_m, gate_b, num_heads)
    ig, fg = gates.chunk(2, dim=1)
    h = mlstm_parallel_fused(q, k, v, ig, fg)[0]
    return ops.mlstm_post(h, x_c, up, norm_w, skip, eps)


@pytest.mark.parametrize("B,T,inner,heads,K", [(2, 20, 32, 4, 4), (3, 33, 48, 8, 4), (1, 17, 24, 2, 3)])
def test_fused_mlstm_layer_passes_equal_reference(B, T, inner, heads, K):
    """mlstm_pre + parallel cell + mlstm_post == the layer in PyTorch ops, values and every gradient."""
    d = torch.float64
    inputs = [torch.randn(B, T, 2 * inner, dtype=d), torch.randn(B, K - 1, inner, dtype=d),
              torch.randn(inner, K, dtype=d) * 0.5, torch.randn(inner, dtype=d) * 0.1,
              *(torch.randn(inner // 4, 4, 4, dtype=d) * 0.5 for _ in range(3)),
              torch.randn(2 * heads, 3 * inner, dtype=d) * 0.1, torch.randn(2 * heads, dtype=d),
              1 + 0.2 * torch.randn(inner, dtype=d), 1 + 0.2 * torch.randn(inner, dtype=d)]
    g = torch.randn(B, T, inner, dtype=d)
    y0, g0 = grads(lambda *t: _layer_reference(*t, heads, 1e-5), inputs, g)
    y1, g1 = grads(lambda *t: _layer_fused(*t, heads, 1e-5), [t.float() for t in inputs], g)
    assert rel_err(y1, y0) < 1e-4
    names = ["up", "conv_state", "conv_w", "conv_b", "w_q", "w_k", "w_v", "gate_w", "gate_b", "norm_w", "skip"]
    for name, a, b in zip(names, g1, g0):
        assert rel_err(a, b) < 1e-3, name


@pytest.mark.parametrize("options,T", [(dict(d_model=64, num_blocks=2), 40), (dict(d_model=64, num_blocks=3, slstm_at=[1]), 60),
                                       (dict(d_model=64, num_blocks=2, parallel_max_tokens=0), 150)])
def test_fused_training_gradients_equal_pytorch_path(options, T):
    """A whole xLSTM backbone: train_kernel="fused" gives the outputs, final states and parameter gradients of
    train_kernel="torch" (parallel cell, and the chunkwise cell with the fused layer passes)."""
    torch.manual_seed(0)
    ref = build_backbone("xlstm", train_kernel="torch", **options)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.2 * torch.randn_like(p))
    fused = build_backbone("xlstm", train_kernel="fused", **options)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, T, options["d_model"])
    for return_state in (False, True):
        y0, s0 = ref(x, return_state=return_state)
        y1, s1 = fused(x, return_state=return_state)
        g = torch.randn_like(y0)
        g0 = torch.autograd.grad((y0 * g).sum(), list(ref.parameters()))
        g1 = torch.autograd.grad((y1 * g).sum(), list(fused.parameters()))
        assert rel_err(y1, y0) < 1e-4
        for (name, _), a, b in zip(ref.named_parameters(), g1, g0):
            assert rel_err(a, b) < 2e-3, name
        if return_state:
            for name, t in s0.tensors.items():
                assert rel_err(s1.tensors[name], t) < 1e-4, name


def test_fused_path_is_what_training_runs():
    """With train_kernel="fused" the training forward calls the fused ops; with "torch" it does not."""
    from torch.profiler import ProfilerActivity, profile

    def ops_called(kernel):
        bb = build_backbone("xlstm", d_model=64, num_blocks=2, train_kernel=kernel)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            y, _ = bb(torch.randn(2, 40, 64), return_state=False)
            y.sum().backward()
        return {e.key for e in prof.key_averages()}

    cell = "lram::mlstm_cell_fwd" if mlstm_cell_kernels_available() else "lram::mlstm_gates_fwd"
    names = {"lram::mlstm_pre_fwd", "lram::mlstm_post_fwd", cell, "lram::mlstm_pre_bwd"}
    assert names <= ops_called("fused")
    assert not names & ops_called("torch")


def test_cell_kernels_are_used_where_pytorch_exposes_its_blas():
    """This machine's PyTorch (the pinned CPU wheel) exports sgemm_, so training takes the per-head cell
    kernels; long windows stay parallel up to ~6 (DH + L) tokens with them."""
    assert torch.ops.lram.has_sgemm() and mlstm_cell_kernels_available()
    bb = build_backbone("xlstm", d_model=64, num_blocks=2, train_kernel="fused")
    span = bb.config.inner_dim // bb.config.num_heads + bb.config.chunk_size
    assert bb.parallel_max_tokens(fused=True) == 6 * span and bb.parallel_max_tokens() == 2 * span
    with pytest.raises(RuntimeError, match="'i' and 'b'"):
        torch.ops.lram.mlstm_cell_fwd(*(torch.randn(2, 5, 4) for _ in range(3)), torch.randn(2, 4), torch.randn(2, 4),
                                      0.5, 1e-6, 8)


def test_bad_arguments_name_the_argument():
    with pytest.raises(RuntimeError, match="'W'"):
        torch.ops.lram.block_diag_fwd(torch.randn(3, 8), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="'x'"):
        torch.ops.lram.block_diag_fwd(torch.randn(3, 7), torch.randn(2, 4, 4))
    with pytest.raises(RuntimeError, match="'state'"):
        torch.ops.lram.causal_conv_fwd(torch.randn(2, 5, 3), torch.randn(3, 4), torch.randn(3), torch.randn(2, 2, 3), True)
    with pytest.raises(RuntimeError, match="'weight'"):
        torch.ops.lram.causal_conv_fwd(torch.randn(2, 5, 3), torch.randn(4, 4), torch.randn(3), None, True)
    with pytest.raises(RuntimeError, match="'s_raw'"):
        torch.ops.lram.mlstm_gates_fwd(torch.randn(2, 3, 4), torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="'conv_w'"):
        torch.ops.lram.mlstm_pre_fwd(torch.randn(1, 5, 16), None, torch.randn(7, 4), torch.randn(8),
                                     *(torch.randn(2, 4, 4) for _ in range(3)), 2)
    with pytest.raises(RuntimeError, match="'w_q'"):
        torch.ops.lram.mlstm_pre_fwd(torch.randn(1, 5, 16), None, torch.randn(8, 4), torch.randn(8),
                                     *(torch.randn(2, 3, 3) for _ in range(3)), 2)
    with pytest.raises(RuntimeError, match="'up'"):
        torch.ops.lram.mlstm_post_fwd(torch.randn(1, 2, 5, 4), torch.randn(1, 5, 8), torch.randn(1, 5, 9),
                                      torch.ones(8), torch.ones(8), 1e-5)
