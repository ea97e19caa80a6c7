"""`lram experiment`: the smoke scale runs the whole pipeline (data, arms, online evaluation, aggregates, table,
plot) and resumes; the aggregates are rliable's over tasks x seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import trim_mean

from lram.experiments import EXPERIMENTS, main
from lram.experiments.core import Arm, Scale, aggregate, format_table, score_matrix


def fake_report(scores: dict[str, float | None]) -> dict:
    domains: dict = {}
    for key, s in scores.items():
        d, t = key.split("/")
        domains.setdefault(d, {"tasks": {}})["tasks"][t] = {"normalised_score": s}
    return {"domains": domains}


def test_aggregates_are_iqm_and_stratified_bootstrap_over_tasks_and_seeds():
    rng = np.random.default_rng(0)
    tasks = [f"metaworld/t{i}" for i in range(5)] + ["darkroom/g0", "darkroom/g1"]
    arms = [Arm("a", s) for s in range(3)] + [Arm("b", s) for s in range(3)]
    reports = {a.name: fake_report({t: float(rng.normal(0.8 if a.group == "a" else 0.3, 0.1)) for t in tasks})
               for a in arms}
    reports[arms[0].name]["domains"]["darkroom"]["tasks"]["g2"] = {"normalised_score": None}  # no score: left out
    exp = EXPERIMENTS["backbones"]()
    res = aggregate(exp, "smoke", Scale(), arms, reports, reps=500)
    for group in ("a", "b"):
        g = res["groups"][group]
        matrix, names = score_matrix([reports[a.name] for a in arms if a.group == group])
        assert names == sorted(tasks) and matrix.shape == (3, 7)
        assert g["iqm"] == pytest.approx(trim_mean(matrix.ravel(), 0.25))  # the IQM, as rliable defines it
        assert g["mean"] == pytest.approx(matrix.mean())
        assert g["iqm_ci"][0] < g["iqm"] < g["iqm_ci"][1] and g["mean_ci"][0] < g["mean"] < g["mean_ci"][1]
        assert g["domains"]["darkroom"] == pytest.approx(matrix[:, :2].mean())
    assert res["groups"]["a"]["iqm_ci"][0] > res["groups"]["b"]["iqm_ci"][1]  # clearly separated groups
    table = format_table(res)
    assert table.count("\n| a |") == 1 and "IQM [95% CI]" in table


def test_smoke_scale_runs_every_arm_and_resumes(tmp_path, capsys):
    assert main(["backbones", "--scale", "smoke", "--out", str(tmp_path), "--quiet"]) == 0
    root = tmp_path / "backbones"
    results = json.loads((root / "results.json").read_text())
    assert list(results["groups"]) == ["xlstm[1:0]", "xlstm[7:1]", "mamba", "transformer"]
    for g in results["groups"].values():
        assert g["seeds"] == [0] and "metaworld/reach-v3" in g["tasks"] and "iqm_ci" in g
    assert len(list((root / "reports").glob("*.json"))) == 4
    report = json.loads((root / "reports" / "mamba-seed0.json").read_text())
    assert report["domains"]["metaworld"]["tasks"]["reach-v3"]["episodes_detail"]  # every episode kept
    assert (root / "table.md").read_text().count("\n| ") == 5  # header + 4 arms
    assert (root / "backbones.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "reports").glob("*.json")}
    (root / "reports" / "mamba-seed0.json").unlink()  # as if the run had stopped before this arm's evaluation
    capsys.readouterr()
    assert main(["backbones", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "arm 3/4: mamba-seed0" in out and "arm 1/4" not in out  # only the missing arm ran again
    assert {p.name: p.stat().st_mtime_ns for p in (root / "reports").glob("*.json") if p.name != "mamba-seed0.json"} == \
        {k: v for k, v in stamps.items() if k != "mamba-seed0.json"}
    with pytest.raises(SystemExit):
        main(["backbones", "--scale", "huge", "--out", str(tmp_path)])
    assert "has scales" in capsys.readouterr().err


def test_results_doc_is_generated_from_results(tmp_path):
    """docs/results.md comes from results.json files: the table, the command and a computed verdict."""
    rng = np.random.default_rng(1)
    tasks = [f"metaworld/t{i}" for i in range(4)]
    arms = [Arm(b, s) for b in ("xlstm[1:0]", "transformer") for s in range(3)]
    reports = {a.name: fake_report({t: float(rng.normal(0.9 if a.group == "xlstm[1:0]" else 0.2, 0.05)) for t in tasks})
               for a in arms}
    exp = EXPERIMENTS["backbones"]()
    res = aggregate(exp, "cpu", Scale(), arms, reports, reps=300)
    (tmp_path / "results" / "backbones").mkdir(parents=True)
    (tmp_path / "results" / "backbones" / "results.json").write_text(json.dumps(res))
    assert exp.verdict(res).startswith("agrees")
    flipped = {**res, "groups": {"xlstm[1:0]": res["groups"]["transformer"], "transformer": res["groups"]["xlstm[1:0]"]}}
    assert exp.verdict(flipped).startswith("disagrees")
    assert main(["report", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "docs" / "results.md")]) == 0
    doc = (tmp_path / "docs" / "results.md").read_text()
    assert "## backbones" in doc and "lram experiment backbones --scale cpu" in doc and "**Verdict (cpu scale):** agrees" in doc
    assert doc.count("\n| xlstm[1:0] |") == 1
