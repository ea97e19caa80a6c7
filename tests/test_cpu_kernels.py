"""The fused CPU step kernels compute the same function as the PyTorch step, and which one a backbone uses
is its own explicit choice (``prepare_for_inference``), never a process-wide switch."""

from __future__ import annotations

import pytest
import torch

from lram.models import build_backbone
from lram.models import kernels as cpu_kernels
from lram.models.layers import Linear, use_row_kernel


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
    assert ref.prepare_for_inference() == "torch" and fused.prepare_for_inference() == "fused"
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


def test_states_lram_makes_suit_the_fused_step_and_others_are_refused():
    """Every state lram makes (init_state, forward, step, reset_state, rows, cat) is contiguous float32, which
    the fused step reads without per-step checks; a hand-made strided state is refused by the kernel with a
    clear error (not read wrongly), and the PyTorch step takes it."""
    ref, fused = _pair(d_model=64, num_blocks=2, slstm_at=[1])
    x = torch.randn(3, 6, 64)
    with torch.no_grad():
        _, s = ref(x[:, :2])
        made = [fused.init_state(3), s, ref.step(x[:, 2:4], s.clone())[1], fused.step(x[:, 2:4], s.clone())[1],
                ref.reset_state(s, torch.tensor([True, False, True])), s.rows([0, 2]), s.rows(1)]
        for st in made:
            assert all(t.is_contiguous() and t.dtype == torch.float32 for t in st.tensors.values())
        s_nc = s.clone()
        name = next(n for n in s_nc.tensors if n.endswith(".C"))
        s_nc.tensors[name] = s_nc.tensors[name].transpose(-1, -2).contiguous().transpose(-1, -2)
        with pytest.raises(RuntimeError, match="C must be a contiguous float32 tensor"):
            fused.step(x[:, 4:], s_nc.clone())
        y_ref, _ = ref.step(x[:, 4:], s.clone())
        y, _ = ref.step(x[:, 4:], s_nc)
    assert rel_err(y, y_ref) <= 1e-5


def test_an_unprepared_backbone_steps_with_pytorch_ops_whatever_ran_before():
    """The choice is per backbone: preparing one with the fused kernels (which loads them) switches nothing
    in another one, which keeps stepping with PyTorch ops and gives the same numbers."""
    ref, fused = _pair("xlstm", d_model=64, num_blocks=2)
    other = build_backbone("xlstm", d_model=64, num_blocks=2).eval()  # step_kernel="auto", never prepared
    other.load_state_dict(ref.state_dict())
    assert other.step_implementation == "torch" and fused.step_implementation == "fused"
    x = torch.randn(1, 3, 64)
    with torch.no_grad(), torch.profiler.profile() as prof:
        y_other, _ = other.step(x, other.init_state(1))
    assert not any(e.name.startswith("lram::") for e in prof.events())
    with torch.no_grad():
        y_fused, _ = fused.step(x, fused.init_state(1))
    assert rel_err(y_fused, y_other) <= 1e-5
    assert other.prepare_for_inference() == "fused"  # "auto" takes the kernels once asked to


@pytest.mark.parametrize("kind", ["xlstm", "mamba"])
def test_prepared_choice_follows_parameter_changes(kind):
    """load_state_dict (copying or assigning tensors) and dtype conversions after prepare_for_inference keep
    the fused step right: the cached weights are refreshed, and non-float32 weights step with PyTorch ops."""
    ref, fused = _pair(kind, d_model=64, num_blocks=2)
    x = torch.randn(2, 3, 64)
    torch.manual_seed(5)
    new = {k: v + 0.1 * torch.randn_like(v) for k, v in ref.state_dict().items()}
    ref.load_state_dict(new)
    for assign in (False, True):
        fused.load_state_dict({k: v.clone() for k, v in new.items()}, assign=assign)
        assert fused.step_implementation == "fused"
        with torch.no_grad():
            y_ref, _ = ref.step(x, ref.init_state(2))
            y, _ = fused.step(x, fused.init_state(2))
        assert rel_err(y, y_ref) <= 1e-5, assign
    fused.double()
    assert fused.step_implementation == "torch"
    with torch.no_grad():
        y64, _ = fused.step(x.double(), fused.init_state(2))
    assert y64.dtype == torch.float64 and rel_err(y64.float(), y_ref) <= 1e-5
    fused.float()
    assert fused.step_implementation == "fused"
    with torch.no_grad():
        y, _ = fused.step(x, fused.init_state(2))
    assert rel_err(y, y_ref) <= 1e-5


def test_kernel_choice_errors_are_clear(monkeypatch):
    for kind in ("xlstm", "mamba"):
        with pytest.raises(ValueError, match="step_kernel"):
            build_backbone(kind, d_model=64, num_blocks=1, step_kernel="cuda-graphs")
    monkeypatch.setenv("LRAM_CPU_KERNELS", "0")
    assert cpu_kernels._build() == (False, "disabled by LRAM_CPU_KERNELS=0")
    bb = build_backbone("mamba", d_model=64, num_blocks=1, step_kernel="fused").double()
    with pytest.raises(RuntimeError, match="step_kernel='fused' cannot be used: the weights are torch.float64"):
        bb.prepare_for_inference()
    monkeypatch.setitem(cpu_kernels._status, "loaded", False)
    monkeypatch.setitem(cpu_kernels._status, "error", "no compiler")
    with pytest.raises(RuntimeError, match="step_kernel='fused'.*no compiler"):
        cpu_kernels.load_cpu_kernels(required=True)
    with pytest.raises(RuntimeError, match="step_kernel='fused'.*no compiler"):
        build_backbone("xlstm", d_model=64, num_blocks=1, step_kernel="fused").prepare_for_inference()
    auto = build_backbone("xlstm", d_model=64, num_blocks=1)
    assert auto.prepare_for_inference() == "torch"  # "auto" falls back to PyTorch ops


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
    use_row_kernel(layer, True)
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
    args = list(fused._fused_args[0])
    args[1] = args[1][:, :32]  # up_w cut in half (and not contiguous)
    with torch.no_grad(), pytest.raises(RuntimeError, match="up_w must be a contiguous float32 tensor of shape"):
        torch.ops.lram.mlstm_block_step(x, *args, *(st[f"blocks.0.{k}"] for k in ("C", "n", "m", "conv")), 1e-5, 1e-6)


def test_use_row_kernel_affects_only_the_module_it_is_applied_to():
    torch.manual_seed(0)
    on, off = (torch.nn.Sequential(Linear(600, 517), torch.nn.GELU(), Linear(517, 600)) for _ in range(2))
    off.load_state_dict(on.state_dict())
    use_row_kernel(on, True)
    assert all(m.row_kernel for m in on if isinstance(m, Linear))
    assert not any(m.row_kernel for m in off if isinstance(m, Linear))
    x = torch.randn(3, 600)

    def lram_ops(model):
        with torch.no_grad(), torch.profiler.profile() as prof:
            y = model(x)
        return y, [e.name for e in prof.events() if e.name.startswith("lram::")]

    (y_on, ops_on), (y_off, ops_off) = lram_ops(on), lram_ops(off)
    assert ops_on == ["lram::linear_rows"] * 2 and ops_off == []
    assert rel_err(y_on, y_off) <= 1e-5
    use_row_kernel(on, False)
    assert lram_ops(on)[1] == []
