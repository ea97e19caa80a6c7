"""`lram experiment latency`: the bench's figures per backbone in results.json, the speed plot, and a verdict
computed from the figures."""

from __future__ import annotations

import json

from lram.experiments import EXPERIMENTS, main
from lram.experiments.report import write_results_doc


def test_latency_smoke_writes_every_figure(tmp_path):
    assert main(["latency", "--scale", "smoke", "--out", str(tmp_path), "--quiet"]) == 0
    root = tmp_path / "latency"
    res = json.loads((root / "results.json").read_text())
    backbones = ["xlstm[1:0]", "xlstm[7:1]", "mamba", "transformer"]
    assert list(res["latency_ms"]) == backbones and res["contexts"] == [4, 32]
    for b in backbones:
        m = res["measurements"][f"{b.replace('[', '').replace(']', '').replace(':', '-')}-seed0"]
        assert m["backbone"] == b and m["threads"] == 1 and m["floor"]["median_ms"] > 0
        for c in ("4", "32"):
            t = m["per_context"][c]
            assert res["latency_ms"][b][c]["median_ms"] == t["median_ms"] and t["p25_ms"] <= t["median_ms"] <= t["p75_ms"]
        for n in ("1", "2"):
            assert res["throughput_steps_per_s"][b][n]["4"] == m["throughput"][n]["4"]["steps_per_s"] > 0
    assert res["scored"] is False and "iqm" not in res["groups"]["mamba"]
    assert (root / "latency-speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (root / "latency.png").exists()
    table = (root / "table.md").read_text()
    assert "| transformer | 4 | " in table and "ms (median [p25, p75])" in table and "IQM" not in table
    assert EXPERIMENTS["latency"]().verdict(res).startswith("not a result (smoke scale")
    doc = write_results_doc(tmp_path, tmp_path / "results.md").read_text()
    assert "## latency" in doc and "latency-speed.png" in doc and "| xlstm[1:0] | 4 | " in doc


def synthetic(xlstm_ms, transformer_ms, xlstm_tp=500.0, transformer_tp=50.0, scale="cpu") -> dict:
    """results.json's figures for two contexts (50, 25600) and batch sizes (1, 16)."""
    lat = lambda a, b: {"50": {"median_ms": a}, "25600": {"median_ms": b}}  # noqa: E731
    tp = lambda v: {"1": {"1600": 100.0}, "16": {"1600": v}}  # noqa: E731
    return {"scale": scale, "contexts": [50, 25600], "batch_sizes": [1, 16], "throughput_contexts": [1600],
            "latency_ms": {"xlstm[1:0]": lat(*xlstm_ms), "mamba": lat(*xlstm_ms), "transformer": lat(*transformer_ms)},
            "throughput_steps_per_s": {"xlstm[1:0]": tp(xlstm_tp), "mamba": tp(xlstm_tp), "transformer": tp(transformer_tp)}}


def test_latency_verdict_on_synthetic_figures():
    v = EXPERIMENTS["latency"]().verdict
    assert v(synthetic((2.6, 2.8), (3.4, 75.8))).startswith("agrees: latency C=25600 vs C=50: xlstm[1:0] 1.08x")
    assert v(synthetic((2.6, 2.8), (3.4, 75.8), transformer_tp=None)).startswith("agrees")  # Transformer OOM
    part = v(synthetic((2.6, 9.0), (3.4, 75.8)))  # the recurrent step grows 3.5x
    assert part.startswith("partly (holds: Transformer growing, xLSTM faster") and "fails: recurrent flat" in part
    assert v(synthetic((2.6, 90.0), (3.4, 4.0), xlstm_tp=10.0)).startswith("disagrees")
    assert v(synthetic((2.6, 2.8), (3.4, 75.8), scale="smoke")).startswith("not a result (smoke scale")
    assert v({"scale": "cpu", "latency_ms": {}}) == "not measured"
