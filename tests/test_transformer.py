"""Transformer backbone: attention math against a naive oracle, KV-cache bookkeeping, position limit."""

from __future__ import annotations

import math

import pytest
import torch

from lram.models.transformer import TransformerBackbone, TransformerConfig

TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def make(seed: int = 0, **opts) -> TransformerBackbone:
    """A small backbone with every parameter perturbed away from its init value."""
    cfg = dict(d_model=32, num_blocks=2, head_dim=8, max_positions=256)
    cfg.update(opts)
    torch.manual_seed(seed)
    bb = TransformerBackbone(TransformerConfig(**cfg)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return bb


def step_tokens(bb, x, state=None, k: int = 1):
    state = bb.init_state(x.shape[0]) if state is None else state
    outs = []
    for t in range(0, x.shape[1], k):
        y, state = bb.step(x[:, t : t + k], state)
        outs.append(y)
    return torch.cat(outs, dim=1), state


# --------------------------------------------------------------------------------------------- oracle
def _layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).square().mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight.double() + ln.bias.double()


def _linear(x, lin):
    return x @ lin.weight.double().T + lin.bias.double()


def reference(bb: TransformerBackbone, x: torch.Tensor) -> torch.Tensor:
    """Naive float64 GPT-2 forward with an explicit [T, T] (causal or banded) mask, layer by layer."""
    cfg = bb.config
    B, T, D = x.shape
    H, hd = cfg.num_heads, cfg.head_dim
    i = torch.arange(T)
    dist = i[:, None] - i[None, :]  # query index - key index
    allowed = dist >= 0
    if cfg.kv_window is not None:
        allowed &= dist < cfg.kv_window
    h = x.double() + bb.wpe.weight.double()[:T]
    for blk in bb.blocks:
        q, k, v = _linear(_layer_norm(h, blk.ln1), blk.attn.qkv).split(D, dim=-1)
        q, k, v = (t.reshape(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v
        h = h + _linear(att.transpose(1, 2).reshape(B, T, D), blk.attn.proj)
        u = _linear(_layer_norm(h, blk.ln2), blk.mlp.fc)
        u = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))
        h = h + _linear(u, blk.mlp.proj)
    return _layer_norm(h, bb.ln_f)


@pytest.mark.parametrize("window", [None, 7])
def test_attention_matches_naive_oracle(window):
    bb = make(kv_window=window, kv_margin=3)
    x = torch.randn(2, 24, 32)
    with torch.no_grad():
        y_ref = reference(bb, x)
        y_par, _ = bb(x)
        y_tok, _ = step_tokens(bb, x)
        y_k3, _ = step_tokens(bb, x, k=3)
    assert rel_err(y_par, y_ref) <= TOL, f"forward vs oracle: {rel_err(y_par, y_ref):.2e}"
    assert rel_err(y_tok, y_ref) <= TOL, f"step vs oracle: {rel_err(y_tok, y_ref):.2e}"
    assert rel_err(y_k3, y_ref) <= TOL, f"step(k=3) vs oracle: {rel_err(y_k3, y_ref):.2e}"


# ------------------------------------------------------------------------------------ position limit
def test_positions_beyond_max_positions_raise():
    bb = make(max_positions=10)
    with torch.no_grad():
        bb(torch.randn(1, 10, 32))  # positions 0..9: fine
        with pytest.raises(ValueError, match=r"position 10 .*max_positions=10"):
            bb(torch.randn(1, 11, 32))
        _, st = bb(torch.randn(2, 8, 32))
        with pytest.raises(ValueError, match="max_positions"):
            bb.step(torch.randn(2, 3, 32), st)
        st = bb.reset_state(st, torch.tensor([True, True]))
        y, _ = bb.step(torch.randn(2, 3, 32), st)  # a reset restarts the positions
    assert y.shape == (2, 3, 32)


def test_config_validation():
    with pytest.raises(ValueError, match="head_dim"):
        TransformerConfig(d_model=48, num_blocks=1, head_dim=32)
    with pytest.raises(ValueError, match="kv_window"):
        TransformerConfig(d_model=32, num_blocks=1, head_dim=8, kv_window=0)


# ------------------------------------------------------------------------------------ per-row lengths
@pytest.mark.parametrize("window", [None, 6])
def test_rows_reset_at_different_times_equal_separate_runs(window):
    bb = make(kv_window=window, kv_margin=2)
    T, resets = 30, {0: (5, 17), 1: (12,)}  # row -> times at which that row's episode restarts
    x = torch.randn(2, T, 32)
    with torch.no_grad():
        st, outs = bb.init_state(2), []
        for t in range(T):
            mask = torch.tensor([t in resets[0], t in resets[1]])
            if mask.any():
                st = bb.reset_state(st, mask)
            y, st = bb.step(x[:, t : t + 1], st)
            outs.append(y)
        y_batch = torch.cat(outs, dim=1)
        for row, times in resets.items():
            bounds = [0, *times, T]
            for a, b in zip(bounds[:-1], bounds[1:]):
                y_alone, _ = bb(x[row : row + 1, a:b])  # each episode run on its own
                assert rel_err(y_batch[row : row + 1, a:b], y_alone) <= TOL, (row, a, b)


# ----------------------------------------------------------------------------------- window forgets
@pytest.mark.parametrize("mode", ["forward", "step"])
def test_window_forgets_old_tokens(mode):
    W, L, T = 5, 2, 40
    bb = make(kv_window=W, num_blocks=L, kv_margin=2)  # small ring: the buffer wraps many times
    reach = L * (W - 1)  # receptive field of the last query: tokens q - reach .. q (W - 1 per block)
    x = torch.randn(1, T, 32)
    q = T - 1

    def last_output(x_):
        with torch.no_grad():
            y, _ = bb(x_) if mode == "forward" else step_tokens(bb, x_)
        return y[:, q]

    base = last_output(x)
    outside, inside = x.clone(), x.clone()
    bump = 3.0 * torch.randn(32)  # not a constant shift: LayerNorm would remove that
    outside[:, q - reach - 1] += bump
    inside[:, q - reach] += bump
    assert (last_output(outside) - base).abs().max() <= 1e-6
    assert (last_output(inside) - base).abs().max() >= 1e-3


def test_single_block_window_is_exactly_kv_window_tokens():
    W, T = 4, 12
    bb = make(kv_window=W, num_blocks=1)
    x = torch.randn(1, T, 32)
    with torch.no_grad():
        base, st = bb(x)
        for j in range(T):
            x2 = x.clone()
            x2[:, j] += 3.0 * torch.randn(32)
            y2, _ = step_tokens(bb, x2)
            changed = (y2[0, -1] - base[0, -1]).abs().max() > 1e-4
            assert bool(changed) == (j > T - 1 - W), j


# ------------------------------------------------------------------------------------ parameter count
def test_parameter_count_formula():
    D, L, P, r = 512, 4, 1600, 4
    bb = TransformerBackbone(TransformerConfig(d_model=D, num_blocks=L))
    ln = 2 * D  # weight and bias
    attn = (D * 3 * D + 3 * D) + (D * D + D)  # fused qkv, output projection
    mlp = (D * r * D + r * D) + (r * D * D + D)  # up, down
    per_block = 2 * ln + attn + mlp
    expected = L * per_block + P * D + 2 * D  # blocks, position table, final LayerNorm
    assert per_block == 12 * D * D + 13 * D
    assert bb.num_parameters() == expected == 13_429_760


def test_gpt2_init():
    bb = TransformerBackbone(TransformerConfig(d_model=256, num_blocks=8, head_dim=32))
    blk = bb.blocks[0]
    assert torch.all(blk.attn.qkv.bias == 0) and torch.all(blk.mlp.fc.bias == 0)
    assert abs(blk.attn.qkv.weight.std().item() - 0.02) < 2e-3
    assert abs(blk.mlp.proj.weight.std().item() - 0.02 / math.sqrt(16)) < 1e-3
    assert abs(blk.attn.proj.weight.std().item() - 0.02 / math.sqrt(16)) < 1e-3


# --------------------------------------------------------------------------------- chunked prefill
@pytest.mark.parametrize("window", [None, 10])
def test_chunked_prefill_equals_one_shot(window):
    one_shot = make(kv_window=window)  # prefill_chunk=1024: a single SDPA call per block
    chunked = make(kv_window=window, prefill_chunk=16, kv_margin=4)  # window mode: chunks of 5 tokens
    chunked.load_state_dict(one_shot.state_dict())
    x = torch.randn(2, 70, 32)
    x_next = torch.randn(2, 4, 32)
    with torch.no_grad():
        y1, st1 = one_shot(x)
        y2, st2 = chunked(x)
        n1, _ = one_shot.step(x_next, st1)
        n2, _ = chunked.step(x_next, st2)
    assert rel_err(y2, y1) <= TOL
    assert rel_err(n2, n1) <= TOL


def test_chunked_forward_backpropagates():
    bb = make(prefill_chunk=16).train()
    x = torch.randn(2, 50, 32, requires_grad=True)
    y, _ = bb(x)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad[:, 0].abs().sum() > 0
    assert all(p.grad is not None for p in bb.parameters())


def test_step_writes_cache_in_place_and_grows():
    bb = make(max_positions=1024)
    with torch.no_grad():
        st = bb.init_state(1)
        cap = st["k.0"].shape[2]
        y, st2 = bb.step(torch.randn(1, 3, 32), st)
        assert st2["k.0"].data_ptr() == st["k.0"].data_ptr()  # written in place
        assert int(st2["length"]) == 3 and int(st["length"]) == 0
        _, st3 = bb(torch.randn(1, cap, 32), st2)  # crosses the capacity: doubles
        assert st3["k.0"].shape[2] == min(2 * cap, bb.config.max_positions)
        assert int(st3["length"]) == cap + 3
