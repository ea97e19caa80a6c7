"""The fused CPU sLSTM scan (``slstm_train_cpu.cpp``) computes the same function as ``slstm_scan``: values
and gradients (wx, R and every initial state tensor), and a whole xLSTM [7:1] backbone trains the same."""

from __future__ import annotations

import pytest
import torch

from lram.models import build_backbone
from lram.models import kernels as cpu_kernels
from lram.models import xlstm as xlstm_module
from lram.models.slstm_kernel import slstm_kernel_available, slstm_scan_fused
from lram.models.xlstm import M_EMPTY, slstm_scan

STATE = ("h", "c", "n", "m")


@pytest.fixture(scope="module", autouse=True)
def kernels_loaded_one_thread():
    """The kernels must build; one thread (the references are thousands of tiny ops, which threads only slow
    down; the kernels' work split over threads has its own test)."""
    assert cpu_kernels.load_cpu_kernels(required=True)
    assert slstm_kernel_available()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def fresh_state(B, NH, DH):
    z = torch.zeros(B, NH, DH)
    return {"h": z, "c": z.clone(), "n": z.clone(), "m": torch.full_like(z, M_EMPTY)}


def used_state(B, NH, DH, g):
    """The state after a random prefix, with row 0 reset to a fresh one (rows of one batch differ)."""
    R = torch.randn(NH, DH, 4 * DH, generator=g) / DH**0.5
    with torch.no_grad():
        _, st = slstm_scan(torch.randn(B, 5, 4, NH, DH, generator=g), R, fresh_state(B, NH, DH))
    for name, value in fresh_state(1, NH, DH).items():
        st[name][0] = value[0]
    return st


def values_and_grads(scan, wx, R, st, weights):
    """Outputs (h over time, final state) and the gradients of a loss reading all of them."""
    wx, R = wx.clone().requires_grad_(), R.clone().requires_grad_()
    st = {k: v.clone().requires_grad_() for k, v in st.items()}
    hs, final = scan(wx, R, st)
    loss = (hs * weights[0]).sum() + sum((final[k] * w).sum() for k, w in zip(STATE, weights[1:]))
    loss.backward()
    out = {"hs": hs, **{f"final {k}": final[k] for k in STATE}, "d wx": wx.grad, "d R": R.grad}
    out.update({f"d {k}0": st[k].grad for k in STATE})
    return out


def assert_same(fused, ref, tol):
    for name, r in ref.items():
        assert fused[name].shape == r.shape, name
        assert rel_err(fused[name], r) <= tol, f"{name}: rel err {rel_err(fused[name], r):.2e}"


@pytest.mark.parametrize("heads,dh", [(4, 32), (4, 24)], ids=["DH=32", "DH=24"])
@pytest.mark.parametrize("T", [1, 7, 150])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "used"])
def test_fused_scan_equals_reference_values_and_gradients(B, T, heads, dh, fresh):
    g = torch.Generator().manual_seed(B * 1000 + T + dh)
    wx = torch.randn(B, T, 4, heads, dh, generator=g) * 2
    R = torch.randn(heads, dh, 4 * dh, generator=g) / dh**0.5
    st = fresh_state(B, heads, dh) if fresh else used_state(B, heads, dh, g)
    weights = [torch.randn(B, T, heads, dh, generator=g)] + [torch.randn(B, heads, dh, generator=g) for _ in STATE]
    ref = values_and_grads(slstm_scan, wx, R, st, weights)
    fused = values_and_grads(slstm_scan_fused, wx, R, st, weights)
    assert_same(fused, ref, 2e-5 if T > 7 else 2e-6)
    if fresh:  # an empty memory: its c, n, m get no gradient (the forget gate is exp(-inf) = 0)
        for k in ("c", "n", "m"):
            assert fused[f"d {k}0"].abs().max() == 0


def test_stabiliser_tie_splits_the_gradient_like_torch_maximum():
    """With R = 0 and f = 200 (logsigmoid = 0 exactly), i == m_prev ties in max(i, m_prev + logsigmoid(f)):
    torch.maximum sends half the gradient each way, and so must the kernel."""
    g = torch.Generator().manual_seed(3)
    B, T, NH, DH = 2, 3, 2, 8
    wx = torch.randn(B, T, 4, NH, DH, generator=g)
    wx[:, :, 1] = 200.0
    st = used_state(B, NH, DH, g)
    st["m"] = wx[:, 0, 0].clone()
    weights = [torch.randn(B, T, NH, DH, generator=g)] + [torch.randn(B, NH, DH, generator=g) for _ in STATE]
    ref = values_and_grads(slstm_scan, wx, torch.zeros(NH, DH, 4 * DH), st, weights)
    fused = values_and_grads(slstm_scan_fused, wx, torch.zeros(NH, DH, 4 * DH), st, weights)
    assert ref["d m0"][1:].abs().min() > 0  # the tie is there: m0 gets gradient in every used row
    assert_same(fused, ref, 1e-6)


def test_large_and_small_pre_activations():
    """Saturated gates (|pre-activation| up to ~300) and tiny ones stay within float32 rounding."""
    g = torch.Generator().manual_seed(5)
    B, T, NH, DH = 2, 20, 4, 24
    for scale in (1e-3, 30.0, 100.0):
        wx = torch.randn(B, T, 4, NH, DH, generator=g) * scale
        R = torch.randn(NH, DH, 4 * DH, generator=g) / DH**0.5
        st = used_state(B, NH, DH, g)
        weights = [torch.randn(B, T, NH, DH, generator=g)] + [torch.randn(B, NH, DH, generator=g) for _ in STATE]
        assert_same(values_and_grads(slstm_scan_fused, wx, R, st, weights),
                    values_and_grads(slstm_scan, wx, R, st, weights), 2e-5)


def test_without_autograd_the_forward_saves_nothing_and_returns_contiguous_states():
    g = torch.Generator().manual_seed(6)
    wx, R = torch.randn(3, 9, 4, 4, 8, generator=g), torch.randn(4, 8, 32, generator=g) / 8**0.5
    st = used_state(3, 4, 8, g)
    with torch.no_grad():
        h_ref, s_ref = slstm_scan(wx, R, st)
        h, s = slstm_scan_fused(wx, R, st)
        saved = torch.ops.lram.slstm_scan_fwd(wx, R, st["h"], st["c"], st["n"], st["m"], False)[5:]
    assert rel_err(h, h_ref) <= 1e-6 and all(t.numel() == 0 for t in saved)
    for k in STATE:
        assert s[k].is_contiguous() and rel_err(s[k], s_ref[k]) <= 1e-6, k


@pytest.mark.parametrize("heads,B", [(1, 3), (4, 9)])
def test_work_split_over_threads_gives_the_same_result(heads, B):
    """Every (row, head) recurrence runs on its own, whichever thread and row chunk it falls in: the results
    with 2 threads equal those with 1 bit for bit (dR, one matrix product after the scan, to rounding)."""
    g = torch.Generator().manual_seed(8)
    wx, R = torch.randn(B, 7, 4, heads, 16, generator=g), torch.randn(heads, 16, 64, generator=g) / 4
    st = used_state(B, heads, 16, g)
    weights = [torch.randn(B, 7, heads, 16, generator=g)] + [torch.randn(B, heads, 16, generator=g) for _ in STATE]
    one = values_and_grads(slstm_scan_fused, wx, R, st, weights)
    torch.set_num_threads(2)
    try:
        two = values_and_grads(slstm_scan_fused, wx, R, st, weights)
    finally:
        torch.set_num_threads(1)
    for name, t in one.items():
        assert torch.equal(two[name], t) if name != "d R" else rel_err(two[name], t) <= 1e-6, name


def _backbones(**options):
    """Two xLSTM backbones with the same (perturbed) weights, training on PyTorch ops and on the kernels."""
    torch.manual_seed(0)
    ref = build_backbone("xlstm", train_kernel="torch", **options)
    with torch.no_grad():
        for p in ref.parameters():  # away from the init (zero recurrent weights, unit norms): every term counts
            p.add_(0.2 * torch.randn_like(p))
    fused = build_backbone("xlstm", train_kernel="fused", **options)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("options", [dict(d_model=64, num_blocks=3, slstm_at=[1]),
                                     dict(d_model=96, num_blocks=2, slstm_at=[0, 1], slstm_heads=4)],
                         ids=["xlstm[7:1] DH=16", "two sLSTM blocks DH=24"])
def test_backbone_gradients_with_fused_kernel_equal_pytorch(options, monkeypatch):
    ref, fused = _backbones(**options)
    D = options["d_model"]
    x = torch.randn(3, 40, D)
    with torch.no_grad():  # continue from a used state, one row of it fresh
        _, state = ref(torch.randn(3, 6, D))
        state = ref.reset_state(state, torch.tensor([True, False, False]))
    calls = []

    def counted(*args):  # which scan the layers run, and whether autograd records the kernel's backward
        hs, cell = slstm_scan_fused(*args)
        calls.append(type(hs.grad_fn).__name__)
        return hs, cell

    monkeypatch.setattr(xlstm_module, "slstm_scan_fused", counted)
    grads = []
    for bb in (ref, fused):
        calls.clear()
        xi = x.clone().requires_grad_()
        y, new_state = bb(xi, state.clone())
        loss = (y * torch.linspace(-1, 1, D)).sum() + sum(
            t.sum() for name, t in new_state.tensors.items() if name.endswith((".h", ".c")))
        loss.backward()
        assert calls == ([] if bb is ref else ["SLSTMScanFunctionBackward"] * len(options["slstm_at"]))
        grads.append({"x": xi.grad, "y": y.detach(), **{n: p.grad for n, p in bb.named_parameters()}})
    for name, g_ref in grads[0].items():
        assert g_ref is not None and grads[1][name] is not None, name
        assert rel_err(grads[1][name], g_ref) <= 1e-4, name


def test_bad_inputs_name_the_argument():
    wx, R = torch.randn(2, 3, 4, 2, 8), torch.randn(2, 8, 32)
    s = [torch.zeros(2, 2, 8) for _ in range(4)]
    fwd = torch.ops.lram.slstm_scan_fwd
    with pytest.raises(RuntimeError, match="'wx'.*shape"):
        fwd(wx[:, :, :3], R, *s, True)
    with pytest.raises(RuntimeError, match="'wx'.*float32"):
        fwd(wx.double(), R, *s, True)
    with pytest.raises(RuntimeError, match="'R'.*shape"):
        fwd(wx, R[:, :, :16], *s, True)
    with pytest.raises(RuntimeError, match="'m0'.*shape"):
        fwd(wx, R, *s[:3], torch.zeros(2, 8), True)
    with pytest.raises(RuntimeError, match="'c0'.*float32"):
        fwd(wx, R, s[0], s[1].half(), *s[2:], True)
    hs, _, _, _, _, gates, cs, ns = fwd(wx, R, *s, True)
    bwd = torch.ops.lram.slstm_scan_bwd
    _, _, _, _, _, no_gates, _, _ = fwd(wx, R, *s, False)
    with pytest.raises(RuntimeError, match="'gates'.*save=true"):
        bwd(torch.ones_like(hs), None, None, None, None, R, *s[:3], hs, no_gates, cs, ns)
    with pytest.raises(RuntimeError, match="'grad_c'.*shape"):
        bwd(torch.ones_like(hs), None, torch.ones(2, 8), None, None, R, *s[:3], hs, gates, cs, ns)
