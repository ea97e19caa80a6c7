"""benchmarks/train_throughput.py: its FLOP formulas match hand counts and its figures are consistent."""

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lram.bench.throughput import _flop_formulas, check_targets, format_summary, make_batch, measure


def _flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=_flop_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def test_depthwise_conv_backward_is_twice_its_forward():
    x = torch.randn(2, 8, 10, requires_grad=True)  # [B, channels, T]
    w = torch.randn(8, 1, 4, requires_grad=True)  # depthwise: one 4-tap filter per channel
    forward = 2 * 2 * 8 * 7 * 4  # 2 flops per multiply-add, B x channels x output positions x taps
    assert _flops(lambda: F.conv1d(x, w, groups=8)) == forward
    assert _flops(lambda: F.conv1d(x, w, groups=8).sum().backward()) == 3 * forward


def test_cpu_attention_is_counted():
    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))  # [B, heads, T, head dim]
    forward = 2 * 2 * (2 * 4 * 16 * 16 * 8)  # two products (q k^T, p v) of B H T T D multiply-adds, 2 flops each
    assert _flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)) == forward
    assert _flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()) == 3.5 * forward


def test_measure_reports_consistent_figures():
    res = {"configs": {"tiny|4|vector": measure("tiny", 4, "vector", ["transformer", "mamba"], 2, rounds=2, warmup=1,
                                               peak=100.0, progress=False)}}
    rows = res["configs"]["tiny|4|vector"]
    for r in rows.values():
        assert abs(r["timesteps_per_s"] - 8 / r["step_s"]) < 1e-6 * r["timesteps_per_s"]
        assert abs(r["gflops"] - r["flops_per_step"] / r["step_s"] / 1e9) < 1e-9 + 1e-6 * r["gflops"]
        assert abs(r["mfu"] - r["gflops"] / 100.0) < 1e-9
        # the 6N rule (forward + backward of every weight matrix on every token: 2 windows x 4 steps x 3 tokens)
        # holds within a factor 2 for these small models
        assert 3 * r["params"] * 24 < r["flops_per_step"] < 12 * r["params"] * 24, r
    assert "ratio_to_transformer" in rows["mamba"] and "ratio_to_transformer" not in rows["transformer"]
    assert "**" in format_summary(res).splitlines()[2]
    assert check_targets(res) == []  # no target configuration measured
    states = make_batch("image", 1, 2, torch.Generator().manual_seed(0)).states
    assert states.dtype == torch.uint8 and states.shape == (1, 2, 3, 64, 64)
