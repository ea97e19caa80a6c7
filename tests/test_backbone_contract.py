"""The backbone contract, checked for every backbone on random weights and random inputs (fp32).

- parallel forward == token-by-token ``step`` == ``step`` on chunks of mixed sizes, over a sequence
  several times longer than a training window (C = 50 timesteps = 150 tokens);
- ``bb(x[:, :a])`` then ``bb(x[:, a:], state)`` == ``bb(x)``;
- ``reset_state`` on some rows in the middle of a batch == running those rows fresh;
- bad input raises ValueError naming the argument.

Every check that steps runs for both step implementations: ``torch`` (a backbone never prepared: PyTorch
ops) and ``fused`` (``prepare_for_inference()`` with lram's compiled CPU kernels, which must load here).

Relative error is max|a - b| / max|b| over the whole output (elementwise ratios are meaningless near 0).
"""

from __future__ import annotations

import pytest
import torch

from lram.models import RecurrentState, build_backbone
from lram.models.kernels import load_cpu_kernels

TRAIN_WINDOW_TOKENS = 150
SEQ = 3 * TRAIN_WINDOW_TOKENS + 30  # several training windows
D = 64
TOL = 1e-4

CONFIGS = {
    "xlstm[1:0]": ("xlstm", dict(num_blocks=2)),
    "xlstm[7:1]": ("xlstm", dict(num_blocks=3, slstm_at=[1])),
    "mamba": ("mamba", dict(num_blocks=2)),
    "transformer-full": ("transformer", dict(num_blocks=2, head_dim=16, max_positions=2048)),
    "transformer-window": ("transformer", dict(num_blocks=2, head_dim=16, max_positions=2048, kv_window=60)),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


IMPLS = ["torch", "fused"]


def make(name: str, seed: int = 0, impl: str = "torch"):
    """A backbone with random weights stepping with ``impl`` ("torch": never prepared; "fused": prepared)."""
    kind, opts = CONFIGS[name]
    torch.manual_seed(seed)
    bb = build_backbone(kind, d_model=D, **opts).eval()
    _randomize(bb)
    if impl == "fused":
        assert load_cpu_kernels(required=True)
        assert bb.prepare_for_inference() == "fused"
    assert bb.step_implementation == impl
    return bb


def _randomize(bb: torch.nn.Module) -> None:
    """Perturb every parameter so that no weight is at a special init value (zeros, ones)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def step_in_chunks(bb, x: torch.Tensor, sizes: list[int], state: RecurrentState | None = None):
    state = bb.init_state(x.shape[0]) if state is None else state
    outs, t, i = [], 0, 0
    while t < x.shape[1]:
        k = min(sizes[i % len(sizes)], x.shape[1] - t)
        y, state = bb.step(x[:, t : t + k], state)
        outs.append(y)
        t += k
        i += 1
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_parallel_equals_recurrent(name, impl):
    bb = make(name, impl=impl)
    x = torch.randn(2, SEQ, D)
    with torch.no_grad():
        y_par, st_par = bb(x)
        y_tok, st_tok = step_in_chunks(bb, x, [1])
        y_mix, st_mix = step_in_chunks(bb, x, [3, 1, 7, 2, 64, 5])
    assert y_par.shape == x.shape
    assert rel_err(y_tok, y_par) <= TOL, f"token-by-token step vs parallel: {rel_err(y_tok, y_par):.2e}"
    assert rel_err(y_mix, y_par) <= TOL, f"mixed-chunk step vs parallel: {rel_err(y_mix, y_par):.2e}"
    # the final states agree too: continuing from any of them gives the same next outputs
    x_next = torch.randn(2, 5, D)
    with torch.no_grad():
        y_a, _ = bb.step(x_next, st_par)
        y_b, _ = bb.step(x_next, st_tok)
        y_c, _ = bb.step(x_next, st_mix)
    assert rel_err(y_b, y_a) <= TOL and rel_err(y_c, y_a) <= TOL


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_runs_the_chosen_implementation(name, impl):
    """A prepared recurrent backbone runs its fused block op; an unprepared one none of the step ops; the two
    give the same numbers (the Transformer's fused choice is the row kernel, unused at this small width).
    (The sLSTM scan op is a ``train_kernel`` choice, the same in both.)"""
    bb = make(name, impl=impl)
    x = torch.randn(2, 3, D)
    with torch.no_grad(), torch.profiler.profile() as prof:
        y, _ = bb.step(x, bb.init_state(2))
    step_ops = {"lram::mlstm_block_step", "lram::mamba_block_step", "lram::linear_rows"}
    ops = {e.name for e in prof.events()} & step_ops
    block_ops = {f"lram::{op}" for op in bb.fused_step_ops if op != "linear_rows"}
    assert ops == (block_ops if impl == "fused" else set())
    with torch.no_grad():
        y_ref, _ = make(name).step(x, bb.init_state(2))
    assert rel_err(y, y_ref) <= 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_continues_from_state(name):
    bb = make(name)
    x = torch.randn(3, 200, D)
    with torch.no_grad():
        y_full, _ = bb(x)
        for a in (1, 77, 150):
            y1, st = bb(x[:, :a])
            y2, _ = bb(x[:, a:], st)
            err = rel_err(torch.cat([y1, y2], dim=1), y_full)
            assert err <= TOL, f"split at {a}: {err:.2e}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_reset_rows_equals_fresh_run(name, impl):
    bb = make(name, impl=impl)
    B, T1, T2 = 4, 40, 30
    x1, x2 = torch.randn(B, T1, D), torch.randn(B, T2, D)
    reset = torch.tensor([False, True, False, True])
    with torch.no_grad():
        _, st = step_in_chunks(bb, x1, [3])
        st = bb.reset_state(st, reset)
        y, _ = step_in_chunks(bb, x2, [3], st)
        y_fresh, _ = bb(x2[reset])  # the reset rows, run from scratch
        y_kept, _ = bb(torch.cat([x1, x2], dim=1)[~reset])  # the other rows keep their history
    assert rel_err(y[reset], y_fresh) <= TOL
    assert rel_err(y[~reset], y_kept[:, T1:]) <= TOL


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_rows_cat_and_save(name, impl, tmp_path):
    bb = make(name, impl=impl)
    x = torch.randn(3, 20, D)
    with torch.no_grad():
        _, st = bb(x)
        parts = RecurrentState.cat([st.rows(0), st.rows([1, 2])])
        st.save(tmp_path / "state.safetensors")
        loaded = RecurrentState.load(tmp_path / "state.safetensors")
        x_next = torch.randn(3, 4, D)
        y_ref, _ = bb.step(x_next, st.clone())
        y_cat, _ = bb.step(x_next, parts)
        y_load, _ = bb.step(x_next, loaded)
    assert rel_err(y_cat, y_ref) <= TOL and rel_err(y_load, y_ref) <= TOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_flow_in_parallel_mode(name):
    bb = make(name).train()
    x = torch.randn(2, 40, D, requires_grad=True)
    y, _ = bb(x, return_state=False)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for n, p in bb.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bad_input_is_named(name):
    bb = make(name)
    st = bb.init_state(2)
    with pytest.raises(ValueError, match=r"x: expected shape \[B, T, 64\]"):
        bb(torch.randn(2, 5, D + 1))
    with pytest.raises(ValueError, match="x: expected a floating-point"):
        bb(torch.zeros(2, 5, D, dtype=torch.long))
    with pytest.raises(ValueError, match="x: contains NaN"):
        bb.step(torch.full((2, 1, D), float("nan")), st)
    with pytest.raises(ValueError, match="batch size 2, but x has batch size 3"):
        bb.step(torch.randn(3, 1, D), st)
    other = build_backbone("xlstm" if CONFIGS[name][0] != "xlstm" else "mamba", d_model=D, num_blocks=1)
    with pytest.raises(ValueError, match="state comes from another configuration"):
        bb.step(torch.randn(2, 1, D), other.init_state(2))
    with pytest.raises(ValueError, match="mask"):
        bb.reset_state(st, torch.tensor([True, False, True]))
