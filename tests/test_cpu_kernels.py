"""The fused CPU step kernel of the mLSTM block computes the same function as the PyTorch step."""

from __future__ import annotations

import pytest
import torch

from lram.models import build_backbone
from lram.models import kernels as cpu_kernels
from lram.models.layers import Linear


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _pair(kind="xlstm", **options):
    """Two backbones with the same random weights: one stepping with PyTorch ops, one with the fused kernel."""
    torch.manual_seed(0)
    ref = build_backbone(kind, step_kernel="torch", **options).eval()
    with torch.no_grad():
        for p in ref.parameters():  # weights well away from the init (zero gate weights, unit norms) exercise every term
            p.add_(0.2 * torch.randn_like(p))
    fused = build_backbone(kind, step_kernel="fused", **options).eval()
    fused.load_state_dict(ref.state_dict())
    return ref, fused


CONFIGS = {
    "xlstm[1:0] DH=64": dict(kind="xlstm", d_model=128, num_blocks=3),
    "xlstm[7:1] DH=64": dict(kind="xlstm", d_model=128, num_blocks=3, slstm_at=[1]),
    "xlstm DH=24 (no column strips)": dict(kind="xlstm", d_model=96, num_blocks=2, num_heads=8),
    "mamba": dict(kind="mamba", d_model=96, num_blocks=2),
    "mamba d_state=5 d_conv=3": dict(kind="mamba", d_model=64, num_blocks=2, d_state=5, d_conv=3, dt_rank=7),
}


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("batch,tokens", [(1, 1), (1, 3), (2, 2), (3, 4), (2, 5), (2, 16)])
def test_fused_step_equals_pytorch_step(config, batch, tokens):
    ref, fused = _pair(**CONFIGS[config])
    D = CONFIGS[config]["d_model"]
    x = torch.randn(batch, 9 + 2 * tokens, D)
    with torch.no_grad():
        _, s_ref = ref(x[:, :9])
        s_ref = ref.reset_state(s_ref, torch.arange(batch) == 0)  # one fresh row (empty memory) among used ones
        s_fused = s_ref.clone()
        for t0 in (9, 9 + tokens):  # two consecutive calls: the in-place state update is read back correctly
            y_ref, s_ref = ref.step(x[:, t0 : t0 + tokens], s_ref)
            y_fused, s_fused = fused.step(x[:, t0 : t0 + tokens], s_fused)
            tol = 1e-5 if tokens <= 5 else 5e-5  # 16-token chunks: float32 summation order differs more
            assert rel_err(y_fused, y_ref) <= tol
            for name, t in s_ref.tensors.items():
                assert rel_err(s_fused.tensors[name], t) <= tol, name


@pytest.mark.parametrize("kind,op", [("xlstm", "lram::mlstm_block_step"), ("mamba", "lram::mamba_block_step")])
def test_fused_kernel_is_what_a_cpu_inference_step_runs(kind, op):
    _, fused = _pair(kind, d_model=64, num_blocks=2)
    x = torch.randn(1, 3, 64)
    state = fused.init_state(1)
    with torch.no_grad(), torch.profiler.profile() as prof:
        fused.step(x, state)
    names = {e.name for e in prof.events()}
    assert op in names
    # with autograd on, the step stays differentiable (PyTorch ops), and gives the same result
    y_grad, _ = fused.step(x, fused.init_state(1))
    with torch.no_grad():
        y_fused, _ = fused.step(x, fused.init_state(1))
    assert y_grad.requires_grad and rel_err(y_fused, y_grad.detach()) <= 1e-5


def test_non_contiguous_state_falls_back_to_pytorch_ops():
    ref, fused = _pair(d_model=64, num_blocks=2)
    x = torch.randn(2, 4, 64)
    with torch.no_grad():
        _, s = ref(x[:, :2])
        s_nc = s.clone()
        name = next(n for n in s_nc.tensors if n.endswith(".C"))
        s_nc.tensors[name] = s_nc.tensors[name].transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not cpu_kernels.fused_step_applies("auto", x[:, 2:], s_nc, fused.post_norm.weight)
        y_ref, _ = ref.step(x[:, 2:], s.clone())
        y, _ = fused.step(x[:, 2:], s_nc)
    assert rel_err(y, y_ref) <= 1e-5


def test_kernel_choice_errors_are_clear(monkeypatch):
    for kind in ("xlstm", "mamba"):
        with pytest.raises(ValueError, match="step_kernel"):
            build_backbone(kind, d_model=64, num_blocks=1, step_kernel="cuda-graphs")
    monkeypatch.setenv("LRAM_CPU_KERNELS", "0")
    assert cpu_kernels._build() == (False, "disabled by LRAM_CPU_KERNELS=0")
    monkeypatch.setattr(cpu_kernels, "LOADED", False)
    monkeypatch.setitem(cpu_kernels._status, "loaded", False)
    monkeypatch.setitem(cpu_kernels._status, "error", "no compiler")
    with pytest.raises(RuntimeError, match="step_kernel='fused'.*no compiler"):
        cpu_kernels.load_cpu_kernels(required=True)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9])
@pytest.mark.parametrize("bias", [True, False])
def test_few_rows_linear_equals_f_linear(rows, bias):
    assert cpu_kernels.load_cpu_kernels(required=True)
    torch.manual_seed(rows)
    layer = Linear(600, 517, bias=bias)  # odd sizes (no multiple of the vector width), over 1 MB: the kernel path
    x = torch.randn(rows, 600)
    with torch.no_grad():
        ref = torch.nn.functional.linear(x.double(), layer.weight.double(), None if bias is False else layer.bias.double())
        y = torch.ops.lram.linear_rows(x, layer.weight, layer.bias)
    assert y.shape == (rows, 517) and rel_err(y.double(), ref) <= 1e-6
    with torch.no_grad():  # the layer itself takes that path at inference, and a [B, T, in] input keeps its shape
        y3 = layer(x.reshape(1, rows, 600))
    assert y3.shape == (1, rows, 517) and rel_err(y3.reshape(rows, 517).double(), ref) <= 1e-6
    y_grad = layer(x)  # with autograd: the differentiable PyTorch path, same numbers
    assert y_grad.requires_grad and rel_err(y_grad.detach().double(), ref) <= 1e-6


def test_fused_op_refuses_mismatched_arguments():
    """The ops index raw memory: a weight of the wrong shape is an error naming it, never a wrong read."""
    _, fused = _pair("xlstm", d_model=64, num_blocks=1)
    x = torch.randn(1, 2, 64)
    st = fused.init_state(1).tensors
    args = list(fused._fused_arguments()[0])
    args[1] = args[1][:, :32]  # up_w cut in half (and not contiguous)
    with torch.no_grad(), pytest.raises(RuntimeError, match="up_w must be a contiguous float32 tensor of shape"):
        torch.ops.lram.mlstm_block_step(x, *args, *(st[f"blocks.0.{k}"] for k in ("C", "n", "m", "conv")), 1e-5, 1e-6)
