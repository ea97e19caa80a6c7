"""`lram bench`: the figures it reports are consistent (ratios, throughput), and the memory guard is exact."""

from __future__ import annotations

import math
import statistics
import time

import torch

from lram.bench.latency import (
    _fill_state,
    _transformer_cache_bytes,
    format_table,
    format_throughput,
    run,
    step_weight_shapes,
    throughput_benchmark,
)
from lram.models import LRAMConfig, LRAMPolicy


def test_bench_reports_consistent_figures(tmp_path):
    res = run("tiny", ("xlstm[1:0]", "transformer"), (4, 8), repeats=3, warmup=1, progress=False,
              out=tmp_path / "lat.json", batch_sizes=(3,))
    assert (tmp_path / "lat.json").exists()
    for name, e in res["backbones"].items():
        for c in ("4", "8"):
            t = e["per_context"][c]
            assert abs(t["ratio_to_floor"] - t["median_ms"] / e["floor"]["median_ms"]) < 1e-9
            tp = e["throughput"]["3"][c]
            assert abs(tp["steps_per_s"] - 3 / (tp["median_ms"] / 1e3)) < 1e-6
        model = LRAMPolicy(LRAMConfig.from_preset("tiny", name, use_images=False)).eval()
        assert e["floor"]["weights"] == sum(math.prod(s) for s in step_weight_shapes(model))
        # an independent clock: a batch-1 agent's step timed here, against the reported median (a unit or
        # bookkeeping error -- seconds for ms, the wrong call timed -- is off by far more than machine noise)
        agent = model.make_agent(1, discrete=False, action_dims=6)
        obs, zero = torch.randn(1, 39), torch.zeros(1)
        with torch.inference_mode():
            for _ in range(3):
                agent.act(obs, zero, zero)
            times = []
            for _ in range(15):
                t0 = time.perf_counter()
                agent.act(obs, zero, zero)
                times.append((time.perf_counter() - t0) * 1e3)
        mine = statistics.median(times)
        reported = e["per_context"]["4"]["median_ms"]
        assert mine / 8 < reported < mine * 8, (name, reported, mine)
    assert "xlstm[1:0]" in format_table(res) and "transformer" in format_throughput(res)


def test_transformer_cache_estimate_is_exact_and_guards_memory():
    torch.manual_seed(0)
    model = LRAMPolicy(LRAMConfig.from_preset("tiny", "transformer", use_images=False,
                                              backbone_options={"max_positions": 600})).eval()
    agent = model.make_agent(2, discrete=False, action_dims=6)
    _fill_state(model, agent, 40, 7, torch.Generator().manual_seed(0))
    kv = sum(t.numel() * t.element_size() for n, t in agent.state.tensors.items() if n.startswith(("k.", "v.")))
    assert kv == _transformer_cache_bytes(model, 2, 40, 7)
    out = throughput_benchmark(model, (2,), (40,), repeats=2, warmup=1, generator=torch.Generator().manual_seed(0),
                               memory_budget=kv // 2)
    assert "skipped" in out["2"]["40"] and "OOM" in format_throughput({"contexts": [40], "backbones": {
        "transformer": {"throughput": out}}})
