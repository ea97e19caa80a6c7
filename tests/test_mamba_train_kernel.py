"""lram's fused CPU Mamba training kernels (mamba_train_cpu.cpp) against PyTorch references.

The selective scan op (through its autograd wrapper ``fused_selective_scan``) is compared with a float64
plain loop and with the PyTorch chunked scan ``selective_scan``, in values and in the gradients of every
input; the fused RMSNorm with ``F.rms_norm``; a whole Mamba backbone with ``train_kernel="fused"`` must give
the outputs and loss gradients of ``train_kernel="torch"``.  Bad arguments must raise an error naming the
argument.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lram.models import build_backbone
from lram.models.kernels import load_cpu_kernels
from lram.models.mamba import fused_scan_available, fused_selective_scan, selective_scan

NAMES = ("delta", "x", "A", "B", "C", "h0", "D", "z", "delta_bias")


@pytest.fixture(scope="module", autouse=True)
def kernels():
    load_cpu_kernels(required=True)
    assert fused_scan_available()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def reference_scan(delta, x, A, B, C, h0=None, D=None, z=None, delta_bias=None, delta_softplus=False,
                   mul_delta=False):
    """The function fused_selective_scan computes, as a plain loop over time (any dtype)."""
    d = delta if delta_bias is None else delta + delta_bias
    if delta_softplus:
        d = F.softplus(d)
    u = d * x if mul_delta else x
    h = delta.new_zeros(delta.shape[0], A.shape[0], A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(delta.shape[1]):
        h = torch.exp(d[:, t, :, None] * A) * h + u[:, t, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, 1)
    if D is not None:
        y = y + D * x
    if z is not None:
        y = y * F.silu(z)
    return y, h


def make_inputs(batch, T, E, N, full, h0, seed=0):
    """float64 inputs of the scan: delta > 0 for the plain form; all optional terms for the Mamba form."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    delta = rnd(batch, T, E) - 1.0 if full else torch.rand(batch, T, E, generator=g, dtype=torch.float64) * 0.5
    A = -torch.rand(E, N, generator=g, dtype=torch.float64) * 2 - 0.1
    inputs = dict(delta=delta, x=rnd(batch, T, E), A=A, B=rnd(batch, T, N), C=rnd(batch, T, N),
                  h0=rnd(batch, E, N) if h0 else None)
    if full:
        inputs.update(D=rnd(E), z=rnd(batch, T, E), delta_bias=0.3 * rnd(E))
    return inputs


def value_and_grads(fn, inputs, flags, weights, requires_grad=None):
    """fn's (y, h_T) and the gradients of sum(y * wy) + sum(h_T * wh) with respect to every given input."""
    leaves = {k: v.detach().clone().requires_grad_(requires_grad is None or k in requires_grad)
              for k, v in inputs.items() if v is not None}
    y, h = fn(**leaves, **flags)
    wy, wh = weights
    loss = (y * wy.to(y.dtype)).sum() + (h * wh.to(h.dtype)).sum()
    wanted = [k for k, v in leaves.items() if v.requires_grad]
    grads = torch.autograd.grad(loss, [leaves[k] for k in wanted])
    return y.detach(), h.detach(), dict(zip(wanted, grads))


SHAPES = [  # batch, T, E, N, checkpoint chunk: odd sizes, T not a multiple of the chunk, partial lane blocks
    (2, 37, 40, 16, 8),
    (1, 5, 16, 16, 16),
    (3, 20, 33, 5, 7),
    (1, 1, 3, 2, 4),
    (2, 17, 20, 8, 3),
]


@pytest.mark.parametrize("batch,T,E,N,chunk", SHAPES)
@pytest.mark.parametrize("full", [False, True], ids=["plain", "mamba-form"])
@pytest.mark.parametrize("h0", [False, True], ids=["zero-h0", "h0"])
def test_fused_scan_equals_float64_loop(batch, T, E, N, chunk, full, h0):
    inputs = make_inputs(batch, T, E, N, full, h0)
    flags = dict(delta_softplus=full, mul_delta=full)
    g = torch.Generator().manual_seed(1)
    weights = (torch.randn(batch, T, E, generator=g), torch.randn(batch, E, N, generator=g))
    y0, h0_, g0 = value_and_grads(reference_scan, inputs, flags, weights)
    inputs32 = {k: (None if v is None else v.float()) for k, v in inputs.items()}
    y1, h1, g1 = value_and_grads(lambda **kw: fused_selective_scan(**kw, chunk=chunk), inputs32, flags, weights)
    assert rel_err(y1, y0) < 1e-5
    assert rel_err(h1, h0_) < 1e-5
    assert set(g1) == set(g0)
    for name in g0:
        assert rel_err(g1[name], g0[name]) < 1e-5, name


@pytest.mark.parametrize("batch,T,E,N,chunk", SHAPES[:3])
def test_fused_scan_equals_pytorch_chunked_scan(batch, T, E, N, chunk):
    """The plain form is selective_scan's function (the _SelectiveScan path), values and gradients."""
    inputs = {k: (None if v is None else v.float()) for k, v in make_inputs(batch, T, E, N, False, True).items()}
    weights = (torch.randn(batch, T, E), torch.randn(batch, E, N))
    y0, h0, g0 = value_and_grads(lambda delta, x, A, B, C, h0: selective_scan(delta, x, A, B, C, h0, chunk),
                                 inputs, {}, weights)
    y1, h1, g1 = value_and_grads(lambda **kw: fused_selective_scan(**kw, chunk=chunk), inputs, {}, weights)
    assert rel_err(y1, y0) < 1e-5 and rel_err(h1, h0) < 1e-5
    for name in g0:
        assert rel_err(g1[name], g0[name]) < 1e-5, name


def test_h0_without_grad_and_strided_views():
    """h0 given but not trained; x, z, B, C as the strided views the mixer passes (chunk / split outputs)."""
    batch, T, E, N = 2, 19, 24, 16
    inputs = make_inputs(batch, T, E, N, True, True, seed=3)
    flags = dict(delta_softplus=True, mul_delta=True)
    weights = (torch.randn(batch, T, E), torch.randn(batch, E, N))
    trained = set(NAMES) - {"h0"}
    y0, h0, g0 = value_and_grads(reference_scan, inputs, flags, weights, requires_grad=trained)
    xz = torch.cat([inputs["x"], inputs["z"]], -1).float()
    bc = torch.cat([torch.randn(batch, T, 3, dtype=torch.float64), inputs["B"], inputs["C"]], -1).float()
    views = dict(x=xz[..., :E], z=xz[..., E:], B=bc[..., 3:3 + N], C=bc[..., 3 + N:])
    assert not views["z"].is_contiguous() and not views["B"].is_contiguous()
    inputs32 = {k: (None if v is None else v.float()) for k, v in inputs.items()} | views
    y1, h1, g1 = value_and_grads(lambda **kw: fused_selective_scan(**kw, chunk=8), inputs32, flags, weights,
                                 requires_grad=trained)
    assert "h0" not in g1
    assert rel_err(y1, y0) < 1e-5 and rel_err(h1, h0) < 1e-5
    for name in g0:
        assert rel_err(g1[name], g0[name]) < 1e-5, name


def test_no_grad_forward_equals_reference():
    inputs = {k: v.float() for k, v in make_inputs(2, 30, 40, 16, True, True).items()}
    with torch.no_grad():
        y, h = fused_selective_scan(**inputs, delta_softplus=True, mul_delta=True)
    y0, h0 = reference_scan(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True, mul_delta=True)
    assert rel_err(y, y0) < 1e-5 and rel_err(h, h0) < 1e-5


@pytest.mark.parametrize("shape", [(3, 7, 37), (2, 40, 128), (5,)])
def test_fused_rms_norm_equals_reference(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    w = torch.randn(shape[-1], dtype=torch.float64)
    gy = torch.randn(*shape, dtype=torch.float64)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y0 = F.rms_norm(xr, w.shape, wr, 1e-5)
    y0.backward(gy)
    y, rstd = torch.ops.lram.rms_norm_fwd(x.float(), w.float(), 1e-5)
    gx, gw = torch.ops.lram.rms_norm_bwd(gy.float(), x.float(), w.float(), rstd)
    assert rel_err(y, y0.detach()) < 1e-6
    assert rel_err(gx, xr.grad) < 1e-5 and rel_err(gw, wr.grad) < 1e-5


BACKBONES = {
    "d_state=16": dict(d_model=64, num_blocks=2),
    "d_state=5 d_conv=3": dict(d_model=48, num_blocks=2, d_state=5, d_conv=3, dt_rank=7),
}


def _backbone_pair(options):
    torch.manual_seed(0)
    ref = build_backbone("mamba", train_kernel="torch", **options)
    with torch.no_grad():
        for p in ref.parameters():  # away from the init (unit norms, D = 1): every term matters
            p.add_(0.1 * torch.randn_like(p))
    fused = build_backbone("mamba", train_kernel="fused", **options)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_gradients_fused_equal_torch(name):
    """Two windows, the second continuing the first's state: every parameter's gradient and the inputs'."""
    ref, fused = _backbone_pair(BACKBONES[name])
    D = BACKBONES[name]["d_model"]
    x = torch.randn(3, 29, D)
    results = []
    for model in (ref, fused):
        xi = x.clone().requires_grad_()
        y1, state = model(xi[:, :13])
        y2, state = model(xi[:, 13:], state)
        y = torch.cat([y1, y2], 1)
        h = state.tensors["h.1"]
        loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + h.square().sum()
        loss.backward()
        results.append((y.detach(), xi.grad, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (y0, gx0, g0), (y1, gx1, g1) = results
    assert rel_err(y1, y0) < 1e-5
    assert rel_err(gx1, gx0) < 1e-5
    for n in g0:
        assert rel_err(g1[n], g0[n]) < 1e-5, n


def test_fused_ops_are_what_training_runs():
    ref, fused = _backbone_pair(BACKBONES["d_state=16"])
    x = torch.randn(2, 20, 64)
    for model, expect in ((fused, True), (ref, False)):
        with torch.profiler.profile() as prof:
            model(x)[0].sum().backward()
        names = {e.name for e in prof.events()}
        for op in ("lram::selective_scan_fwd", "lram::selective_scan_bwd", "lram::rms_norm_fwd", "lram::rms_norm_bwd"):
            assert (op in names) == expect, op


def test_backbone_inference_uses_the_fused_forward():
    ref, fused = _backbone_pair(BACKBONES["d_state=16"])
    x = torch.randn(2, 20, 64)
    with torch.no_grad():
        y0, s0 = ref(x)
        y1, s1 = fused(x)
    assert rel_err(y1, y0) < 1e-5
    for k, t in s0.tensors.items():
        assert rel_err(s1.tensors[k], t) < 1e-5, k


def _scan_args(batch=2, T=6, E=20, N=4):
    return dict(delta=torch.rand(batch, T, E), x=torch.randn(batch, T, E), A=-torch.rand(E, N),
                B=torch.randn(batch, T, N), C=torch.randn(batch, T, N), h0=None, D=None, z=None, delta_bias=None)


@pytest.mark.parametrize("name,bad", [
    ("delta", lambda a: a["delta"].double()),
    ("x", lambda a: a["x"][:, :-1]),
    ("A", lambda a: a["A"][:-1]),
    ("B", lambda a: a["B"][..., :-1]),
    ("C", lambda a: torch.randn(1, 6, 4)),
    ("h0", lambda a: torch.randn(2, 20, 5)),
    ("D", lambda a: torch.randn(19)),
    ("z", lambda a: torch.randn(2, 6, 20, dtype=torch.float64)),
    ("delta_bias", lambda a: torch.randn(21)),
])
def test_bad_scan_arguments_are_named(name, bad):
    args = _scan_args()
    args[name] = bad(args)
    with pytest.raises(RuntimeError, match=f"'{name}'"):
        torch.ops.lram.selective_scan_fwd(*args.values(), False, False, 4)


def test_bad_backward_and_norm_arguments_are_named():
    args = _scan_args()
    with pytest.raises(RuntimeError, match="'checkpoint_every'"):
        torch.ops.lram.selective_scan_fwd(*args.values(), False, False, -1)
    y, h, ck = torch.ops.lram.selective_scan_fwd(*args.values(), False, False, 4)
    with pytest.raises(RuntimeError, match="'checkpoints'"):
        torch.ops.lram.selective_scan_bwd(y, None, *args.values(), False, False, ck[:, :, :1], 4)
    with pytest.raises(RuntimeError, match="'grad_y'"):
        torch.ops.lram.selective_scan_bwd(y[:, 1:], None, *args.values(), False, False, ck, 4)
    with pytest.raises(RuntimeError, match="'grad_h_last'"):
        torch.ops.lram.selective_scan_bwd(y, h[:1], *args.values(), False, False, ck, 4)
    with pytest.raises(RuntimeError, match="'x'"):
        torch.ops.lram.rms_norm_fwd(torch.randn(3, 8), torch.randn(7), 1e-5)
    x = torch.randn(3, 8)
    out, rstd = torch.ops.lram.rms_norm_fwd(x, torch.randn(8), 1e-5)
    with pytest.raises(RuntimeError, match="'rstd'"):
        torch.ops.lram.rms_norm_bwd(out, x, torch.randn(8), rstd[:2])
