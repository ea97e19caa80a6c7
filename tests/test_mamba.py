"""The Mamba backbone against the ``mambapy`` library (an independent Mamba-1 implementation), its
parameter count against the formula, its initialisation, the hand-written scan backward, and the wiring of
the optional ``mamba_ssm`` kernel path (with reference kernels written here, since CI has no GPU)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import lram.models.mamba as M
from lram.models import build_backbone
from lram.models.mamba import MambaConfig, load_from_mamba_library, selective_scan

TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _perturb(module: torch.nn.Module, seed: int = 1234) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


# ============================================================================ parity with mambapy
PARITY_CONFIGS = {
    "default": dict(d_state=16, expand=2, d_conv=4, dt_rank=None),
    "small-odd": dict(d_state=8, expand=3, d_conv=3, dt_rank=5),
}


def _pair(opts: dict, d_model: int = 48, num_blocks: int = 2):
    """(mambapy model with perturbed weights, our backbone with the same weights)."""
    mp = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    ref_cfg = mp.MambaConfig(
        d_model=d_model,
        n_layers=num_blocks,
        d_state=opts["d_state"],
        expand_factor=opts["expand"],
        d_conv=opts["d_conv"],
        dt_rank=opts["dt_rank"] if opts["dt_rank"] is not None else "auto",
        pscan=True,
    )
    ref = mp.Mamba(ref_cfg)
    _perturb(ref)
    bb = build_backbone("mamba", d_model=d_model, num_blocks=num_blocks, **opts)
    load_from_mamba_library(bb, ref)
    with torch.no_grad():  # a non-trivial final norm (mambapy has none; we apply ours to its output)
        bb.norm_f.weight.add_(torch.randn(d_model) * 0.1)
    return ref, bb


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_parallel_matches_mambapy(name):
    ref, bb = _pair(PARITY_CONFIGS[name])
    x = torch.randn(2, 37, bb.d_model)
    with torch.no_grad():
        y_ref = bb.norm_f(ref(x))
        y, _ = bb(x)
    assert rel_err(y, y_ref) <= TOL, f"{rel_err(y, y_ref):.2e}"


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_step_matches_mambapy_step(name):
    opts = PARITY_CONFIGS[name]
    ref, bb = _pair(opts)
    B, T = 2, 20
    x = torch.randn(B, T, bb.d_model)
    E = opts["expand"] * bb.d_model
    caches = [(None, torch.zeros(B, E, opts["d_conv"] - 1)) for _ in ref.layers]
    state = bb.init_state(B)
    with torch.no_grad():
        ref_out, ours = [], []
        for t in range(T):
            o, caches = ref.step(x[:, t], caches)
            ref_out.append(o)
        for t in range(0, T, 3):  # ours in chunks of 3 tokens (one LRAM timestep)
            y, state = bb.step(x[:, t : t + 3], state)
            ours.append(y)
        y_ref = bb.norm_f(torch.stack(ref_out, dim=1))
        y = torch.cat(ours, dim=1)
    assert rel_err(y, y_ref) <= TOL, f"{rel_err(y, y_ref):.2e}"
    # the states agree with the library's cache: conv inputs and SSM state of every block
    for i, (h, inputs) in enumerate(caches):
        assert rel_err(state[f"h.{i}"], h) <= TOL
        assert rel_err(state[f"conv.{i}"], inputs.transpose(1, 2)) <= TOL


def test_gradients_match_mambapy():
    """The hand-written scan backward gives the library's (autograd through its parallel scan) gradients."""
    ref, bb = _pair(PARITY_CONFIGS["default"], d_model=32)
    x = torch.randn(2, 45, bb.d_model)  # 45 = several scan chunks and a partial one
    w = torch.randn(2, 45, bb.d_model)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    ((bb.norm_f(ref(x_ref)) * w).sum()).backward()
    ((bb(x_ours, return_state=False)[0] * w).sum()).backward()
    assert rel_err(x_ours.grad, x_ref.grad) <= TOL
    ref_params = dict(ref.named_parameters())
    for name, p in bb.named_parameters():
        if name == "norm_f.weight":
            continue
        g_ref = ref_params[name.replace("blocks.", "layers.", 1)].grad
        assert rel_err(p.grad, g_ref) <= TOL, f"{name}: {rel_err(p.grad, g_ref):.2e}"


# ============================================================================ the scan itself
@pytest.mark.parametrize("chunk", [1, 3, 8, 32])
def test_scan_backward_gradcheck(chunk):
    g = torch.Generator().manual_seed(0)
    B, T, E, N = 2, 11, 3, 4
    kw = dict(dtype=torch.float64)
    delta = (torch.rand(B, T, E, generator=g, **kw) * 0.5).requires_grad_()
    dx = torch.randn(B, T, E, generator=g, **kw).requires_grad_()
    A = (-torch.rand(E, N, generator=g, **kw) - 0.2).requires_grad_()
    Bm = torch.randn(B, T, N, generator=g, **kw).requires_grad_()
    Cm = torch.randn(B, T, N, generator=g, **kw).requires_grad_()
    h0 = torch.randn(B, E, N, generator=g, **kw).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk=chunk), (delta, dx, A, Bm, Cm, h0))


def test_scan_equals_naive_recurrence():
    g = torch.Generator().manual_seed(0)
    B, T, E, N = 3, 21, 5, 4
    delta = torch.rand(B, T, E, generator=g)
    dx = torch.randn(B, T, E, generator=g)
    A = -torch.rand(E, N, generator=g)
    Bm, Cm = torch.randn(B, T, N, generator=g), torch.randn(B, T, N, generator=g)
    h = torch.randn(B, E, N, generator=g)
    y, h_last = selective_scan(delta, dx, A, Bm, Cm, h, chunk=4)
    ys = []
    for t in range(T):
        h = torch.exp(delta[:, t, :, None] * A) * h + dx[:, t, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    assert rel_err(y, torch.stack(ys, 1)) <= 1e-5 and rel_err(h_last, h) <= 1e-5


# ============================================================================ size and initialisation
def expected_params(d_model, num_blocks, d_state=16, d_conv=4, expand=2, dt_rank=None) -> int:
    D, N, K = d_model, d_state, d_conv
    E = expand * D
    R = dt_rank if dt_rank is not None else math.ceil(D / 16)
    mixer = (
        D * 2 * E  # in_proj
        + (E * K + E)  # depthwise conv weight + bias
        + E * (R + 2 * N)  # x_proj
        + (R * E + E)  # dt_proj weight + bias
        + E * N  # A_log
        + E  # D
        + E * D  # out_proj
    )
    return num_blocks * (mixer + D) + D  # + a norm per block, + norm_f


@pytest.mark.parametrize(
    "d_model,num_blocks,opts",
    [(512, 8, {}), (768, 12, {}), (100, 3, dict(d_state=8, d_conv=3, expand=3, dt_rank=5))],
)
def test_parameter_count(d_model, num_blocks, opts):
    bb = build_backbone("mamba", d_model=d_model, num_blocks=num_blocks, **opts)
    assert bb.num_parameters() == expected_params(d_model, num_blocks, **opts)


def test_initialisation_follows_mamba_ssm():
    cfg = MambaConfig(d_model=64, num_blocks=4)
    torch.manual_seed(0)
    bb = build_backbone("mamba", d_model=64, num_blocks=4)
    E, N, R = cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
    for block in bb.blocks:
        m = block.mixer
        dt = F.softplus(m.dt_proj.bias)
        assert dt.min() >= cfg.dt_min * 0.999 and dt.max() <= cfg.dt_max * 1.001
        assert m.dt_proj.weight.abs().max() <= R**-0.5
        assert torch.allclose(m.A_log, torch.log(torch.arange(1, N + 1.0)).expand(E, N))
        assert torch.equal(m.D, torch.ones(E))
        bound = 1 / math.sqrt(E) / math.sqrt(cfg.num_blocks)  # kaiming-uniform(a=sqrt 5), / sqrt(n_layer)
        assert 0.9 * bound < m.out_proj.weight.abs().max() <= bound
        assert torch.equal(block.norm.weight, torch.ones(64))


# ============================================================================ options and dtypes
def test_config_errors():
    with pytest.raises(ValueError, match="kernel"):
        build_backbone("mamba", d_model=32, num_blocks=1, kernel="cuda")
    with pytest.raises(ValueError, match="d_state"):
        build_backbone("mamba", d_model=32, num_blocks=1, d_state=0)


def test_requesting_mamba_ssm_without_it_names_the_extra(monkeypatch):
    monkeypatch.setattr(M, "_mamba_ssm", "ModuleNotFoundError: No module named 'mamba_ssm'")  # import failed
    with pytest.raises(ImportError, match=r"pip install 'lram\[gpu\]'"):
        build_backbone("mamba", d_model=32, num_blocks=1, kernel="mamba_ssm")


def test_mamba_ssm_kernel_on_cpu_tensors_is_an_error(monkeypatch):
    fake = SimpleNamespace(selective_scan_fn=None, selective_state_update=None)
    monkeypatch.setattr(M, "_mamba_ssm", fake)  # as if installed
    bb = build_backbone("mamba", d_model=32, num_blocks=1, kernel="mamba_ssm")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        bb(torch.randn(1, 4, 32))


def test_cpu_path_never_imports_mamba_ssm(monkeypatch):
    monkeypatch.setattr(M, "_mamba_ssm", None)  # not tried yet
    bb = build_backbone("mamba", d_model=32, num_blocks=1)
    with torch.no_grad():
        _, st = bb(torch.randn(1, 5, 32))
        bb.step(torch.randn(1, 3, 32), st)
    assert M._mamba_ssm is None


def test_bfloat16_autocast_keeps_fp32_state():
    torch.manual_seed(0)
    bb = build_backbone("mamba", d_model=32, num_blocks=2).eval()
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        y32, _ = bb(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16, st = bb(x)
            y16s, st2 = bb.step(x[:, :3], bb.init_state(2))
    assert all(t.dtype == torch.float32 for t in list(st.tensors.values()) + list(st2.tensors.values()))
    assert rel_err(y16.float(), y32) < 5e-2 and rel_err(y16s.float(), y32[:, :3]) < 5e-2


# ============================================================================ mamba_ssm kernel path (reference kernels)
def ref_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` semantics: u, delta, z [b, d, l];
    B, C [b, n, l]; starts from a zero state."""
    b, d, l = u.shape
    assert delta.shape == u.shape and A.shape[0] == d and B.shape == C.shape == (b, A.shape[1], l)
    # the CUDA kernel's dtype checks: delta, B, C, z in the input dtype; A, D, delta_bias fp32
    assert all(t.dtype == u.dtype for t in (delta, B, C) + ((z,) if z is not None else ()))
    assert A.dtype == torch.float32 and all(t is None or t.dtype == torch.float32 for t in (D, delta_bias))
    dt = delta.float() + (delta_bias.float()[:, None] if delta_bias is not None else 0)
    dt = F.softplus(dt) if delta_softplus else dt
    h = u.new_zeros(b, d, A.shape[1], dtype=torch.float32)
    ys = []
    for t in range(l):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t].float())[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u.float()
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y


def ref_selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """``mamba_ssm.ops.triton.selective_state_update`` semantics: one token, state [b, d, n] updated in place."""
    b, d, n = state.shape
    assert x.shape == dt.shape == (b, d) and A.shape == (d, n) and B.shape == C.shape == (b, n)
    dt = dt.float() + (dt_bias.float() if dt_bias is not None else 0)
    dt = F.softplus(dt) if dt_softplus else dt
    state.copy_(torch.exp(dt[..., None] * A) * state + (dt * x.float())[..., None] * B[:, None, :])
    out = (state * C[:, None, :]).sum(-1)
    if D is not None:
        out = out + D * x.float()
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(x.dtype)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_kernel_path_wiring_matches_torch_path(monkeypatch, autocast):
    torch.manual_seed(0)
    # step_kernel="torch": the CUDA kernels' wiring is under test, not the fused CPU step
    bb = build_backbone("mamba", d_model=32, num_blocks=2, step_kernel="torch").eval()
    _perturb(bb)
    x = torch.randn(2, 30, 32)
    x_next = torch.randn(2, 3, 32)
    tol = 5e-2 if autocast else TOL
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y_ref, st_ref = bb(x)
        y_ref_step, _ = bb.step(x_next, st_ref)
        fake = SimpleNamespace(selective_scan_fn=ref_selective_scan_fn, selective_state_update=ref_selective_state_update)
        monkeypatch.setattr(M, "_kernels_for", lambda x, mode: fake)
        y1, st1 = bb(x[:, :11])  # fresh: z fused into the kernel
        y2, st2 = bb(x[:, 11:], st1)  # from a state: the h0 term added outside the kernel
        h_before = st2["h.0"].clone()
        y_step, _ = bb.step(x_next, st2)
    assert rel_err(torch.cat([y1, y2], dim=1).float(), y_ref.float()) <= tol
    for k in st_ref:
        assert st2[k].dtype == torch.float32 and rel_err(st2[k], st_ref[k]) <= tol, k
    assert rel_err(y_step.float(), y_ref_step.float()) <= tol
    assert torch.equal(st2["h.0"], h_before)  # the in-place kernel works on a copy
