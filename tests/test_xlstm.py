"""xLSTM: parity with the reference `xlstm` library, and every mLSTM kernel computes the same function."""

from __future__ import annotations

import pytest
import torch

from lram.models import build_backbone
from lram.models import xlstm as lram_xlstm
from lram.models.mlstm_cells import (
    M_EMPTY,
    get_mlstm_kernel,
    mlstm_recurrent,
    mlstm_step,
    mlstm_step_compilable,
    mlstm_step_inplace,
)
from lram.models.xlstm import load_from_xlstm_library


def reference_library():
    """The ``xlstm`` package (the oracle): only the tests that compare against it skip without it."""
    return pytest.importorskip("xlstm", reason="the reference library is a test dependency (pip install -e '.[dev]')")


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def library_stack(d_model: int, num_blocks: int, slstm_at: list[int], context_length: int = 512):
    xlstm = reference_library()
    cfg = xlstm.xLSTMBlockStackConfig(
        mlstm_block=xlstm.mLSTMBlockConfig(
            mlstm=xlstm.mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=4)
        ),
        slstm_block=xlstm.sLSTMBlockConfig(
            slstm=xlstm.sLSTMLayerConfig(backend="vanilla", num_heads=4, conv1d_kernel_size=4,
                                         bias_init="powerlaw_blockdependent"),
            feedforward=xlstm.FeedForwardConfig(proj_factor=1.3, act_fn="gelu"),
        ),
        context_length=context_length, num_blocks=num_blocks, embedding_dim=d_model, slstm_at=slstm_at,
    )
    stack = xlstm.xLSTMBlockStack(cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # random weights everywhere (the library inits some to zero)
        for p in stack.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return stack.eval()


@pytest.mark.parametrize("slstm_at", [[], [1], [0, 2]], ids=["[1:0]", "[7:1]-like", "two-slstm"])
def test_parity_with_reference_library(slstm_at):
    D, nb, T = 64, 3, 300
    stack = library_stack(D, nb, slstm_at)
    ours = build_backbone("xlstm", d_model=D, num_blocks=nb, slstm_at=slstm_at).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in stack.parameters())
    load_from_xlstm_library(ours, stack)
    x = torch.randn(2, T, D)
    with torch.no_grad():
        ref = stack(x)
        y, _ = ours(x)
        # the library's own recurrent mode, token by token
        st, ref_steps = None, []
        for t in range(60):
            o, st = stack.step(x[:, t : t + 1], st)
            ref_steps.append(o)
        y_step, _ = ours.step(x[:, :60], ours.init_state(2))
    assert rel_err(y, ref) <= 1e-4, "parallel forward differs from xlstm.xLSTMBlockStack.forward"
    assert rel_err(y_step, torch.cat(ref_steps, 1)) <= 1e-4, "step differs from xlstm.xLSTMBlockStack.step"


def test_library_weights_of_wrong_layout_are_refused():
    stack = library_stack(64, 2, [1])
    ours = build_backbone("xlstm", d_model=64, num_blocks=2, slstm_at=[0])
    with pytest.raises(ValueError, match="block 0: expected an sLSTM block"):
        load_from_xlstm_library(ours, stack)


def _cell_inputs(B=2, NH=4, T=70, DH=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, NH, T, DH, generator=g) for _ in range(3))
    i = torch.randn(B, NH, T, generator=g) * 3
    f = torch.randn(B, NH, T, generator=g) * 2 + 2
    state = (torch.randn(B, NH, DH, DH, generator=g), torch.randn(B, NH, DH, generator=g), torch.randn(B, NH, generator=g))
    empty = (torch.zeros(B, NH, DH, DH), torch.zeros(B, NH, DH), torch.full((B, NH), M_EMPTY))
    return q, k, v, i, f, state, empty


KERNELS = ["chunkwise", "recurrent", "mlstm_kernels:chunkwise--native_autograd", "step_inplace", "step_compilable"]


def _run_kernel(name, q, k, v, i, f, init, chunk):
    if not name.startswith("step_"):
        return get_mlstm_kernel(name)(q, k, v, i, f, init, chunk)
    # the inference step kernels: consecutive calls of `chunk` tokens (the in-place one updates a copy)
    fn = mlstm_step_inplace if name == "step_inplace" else mlstm_step_compilable
    state, hs = tuple(t.clone() for t in init), []
    for t0 in range(0, q.shape[2], chunk):
        sl = slice(t0, t0 + chunk)
        h, state = fn(q[:, :, sl], k[:, :, sl], v[:, :, sl], i[:, :, sl], f[:, :, sl], state)
        hs.append(h)
    return torch.cat(hs, 2), state


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("chunk", [1, 3, 16, 64, 128])
def test_every_mlstm_kernel_matches_the_recurrence(kernel, chunk):
    if kernel.startswith("mlstm_kernels"):
        pytest.importorskip("mlstm_kernels")
    q, k, v, i, f, state, empty = _cell_inputs()
    for init in (empty, state):
        h_ref, (C_ref, n_ref, m_ref) = mlstm_recurrent(q, k, v, i, f, init)
        h, (C, n, m) = _run_kernel(kernel, q, k, v, i, f, init, chunk)
        assert rel_err(h, h_ref) <= 1e-4
        # states may differ by the stabiliser; the represented memory C*exp(m) must agree
        assert rel_err(C * torch.exp(m - m_ref)[..., None, None], C_ref) <= 1e-4
        assert rel_err(n * torch.exp(m - m_ref)[..., None], n_ref) <= 1e-4


def test_backbone_kernels_agree_in_parallel_and_step_mode():
    torch.manual_seed(0)
    x = torch.randn(2, 130, 64)
    outs = []
    kernels = ["chunkwise", "recurrent"]
    try:
        import mlstm_kernels  # noqa: F401  (optional: compared when installed)
    except ImportError:
        pass
    else:
        kernels.append("mlstm_kernels:chunkwise--native_autograd")
    for kernel in kernels:
        torch.manual_seed(1)
        bb = build_backbone("xlstm", d_model=64, num_blocks=2, slstm_at=[1], mlstm_kernel=kernel, chunk_size=32).eval()
        with torch.no_grad():
            y, _ = bb(x)
            y_step, _ = bb.step(x[:, :10], bb.init_state(2))
        assert rel_err(y_step, y[:, :10]) <= 1e-4
        outs.append(y)
    assert all(rel_err(y, outs[0]) <= 1e-4 for y in outs[1:])


def _largest_allocation(bb, T: int) -> int:
    """Bytes of the largest single tensor any op allocates during a forward over T tokens (torch profiler)."""
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        bb(torch.randn(1, T, 32), return_state=False)
    return max(e.self_cpu_memory_usage for e in prof.events())


@pytest.mark.parametrize("kernel", ["chunkwise", "quadratic-reference"])
def test_parallel_memory_is_linear_in_sequence_length(kernel):
    """The chunkwise form never materialises a [T, T] matrix: the largest allocation grows ~linearly with T.
    The library's fully parallel form, run as a reference, must fail the same check (the test can fail)."""
    bb = build_backbone("xlstm", d_model=32, num_blocks=1, chunk_size=32, segment_tokens=1 << 16).eval()
    if kernel == "quadratic-reference":
        reference_library()
        from xlstm.blocks.mlstm.backends import parallel_stabilized_simple

        def quadratic(q, k, v, i, f, state, chunk_size, eps=1e-6):
            h = parallel_stabilized_simple(q, k, v, i.unsqueeze(-1), f.unsqueeze(-1))
            return h, state

        bb.mlstm_kernel = quadratic
    ratio = _largest_allocation(bb, 4096) / _largest_allocation(bb, 1024)
    if kernel == "chunkwise":
        assert ratio < 6, f"largest allocation grew {ratio:.1f}x for 4x more tokens"
    else:
        assert ratio > 12, ratio


def test_long_sequences_in_segments_equal_one_pass():
    torch.manual_seed(0)
    x = torch.randn(2, 300, 64)
    outs = []
    for seg in (4096, 100, 64):
        torch.manual_seed(1)
        bb = build_backbone("xlstm", d_model=64, num_blocks=2, slstm_at=[1], segment_tokens=seg).eval()
        with torch.no_grad():
            y, st = bb(x)
            y_next, _ = bb.step(x[:, :3], st)
        outs.append((y, y_next))
    for y, y_next in outs[1:]:
        assert rel_err(y, outs[0][0]) <= 1e-4 and rel_err(y_next, outs[0][1]) <= 1e-4


def test_step_forms_share_their_arithmetic():
    """The in-place step (eager inference) and the functional one (torch.compile) are one function: equal
    outputs and states; the in-place form writes into the given state tensors, the functional one never."""
    q, k, v, i, f, state, _ = _cell_inputs(T=3)
    mine = tuple(t.clone() for t in state)
    h_fun, new = mlstm_step(q, k, v, i, f, state)
    assert all(torch.equal(a, b) for a, b in zip(state, mine))  # untouched
    h_in, same = mlstm_step_inplace(q, k, v, i, f, mine)
    assert all(a is b for a, b in zip(same, mine))
    assert rel_err(h_in, h_fun) <= 1e-6 and all(rel_err(a, b) <= 1e-6 for a, b in zip(same, new))


def test_cell_kernels_are_importable_from_the_model_module():
    for name in ("M_EMPTY", "MLSTM_KERNELS", "get_mlstm_kernel", "mlstm_chunkwise", "mlstm_parallel",
                 "mlstm_parallel_fused", "mlstm_recurrent", "mlstm_step_inplace", "mlstm_step_compilable"):
        assert hasattr(lram_xlstm, name), name
