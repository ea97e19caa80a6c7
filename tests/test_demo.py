"""`lram demo --quick`: the whole pipeline (data, training, scores, latency) end to end, and it resumes."""

from __future__ import annotations

import json

from lram.demo import main


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--quick", "--quiet", "--out", str(out)]) == 0
    report = (out / "REPORT.md").read_text()
    for section in ("## Targets", "## Training", "## Scores in the training tasks", "## In-context RL on Dark-Room",
                    "## Latency per environment step"):
        assert section in report
    scores = json.loads((out / "run" / "eval" / "scores.json").read_text())
    assert set(scores["domains"]) == {"metaworld", "darkroom"}
    assert scores["domains"]["metaworld"]["tasks"]["reach-v3"]["episodes"] == 2
    icl = json.loads((out / "run" / "eval" / "darkroom_heldout.json").read_text())
    (task, row), = icl["domains"]["darkroom"]["tasks"].items()
    assert row["in_training_data"] is False and len(row["episodes_detail"]) == 2
    # training goals are scored over consecutive episodes on one recurrent state (in context)
    assert all(len(r["episodes_detail"]) == 2 for r in scores["domains"]["darkroom"]["tasks"].values())
    latency = json.loads((out / "latency.json").read_text())
    assert set(latency["backbones"]) == {"xlstm[1:0]", "transformer"}
    first = sorted(p.name for p in (out / "run" / "checkpoints").glob("step-*"))
    # a re-run keeps the data and the finished training, and measures again
    assert main(["--quick", "--quiet", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "run" / "checkpoints").glob("step-*")) == first
    assert "held-out Dark-Room goals" in capsys.readouterr().out


def test_cpu_tiny_config_is_the_demo_recipe():
    """The demo trains the packaged recipe, which is the repository's configs/cpu_tiny.yaml; with the default
    budget, demo_overrides change nothing but paths."""
    from pathlib import Path

    from lram.demo import DemoBudget, demo_config, recipe_path
    from lram.training.config import load_config

    root = Path(__file__).resolve().parents[1]
    assert recipe_path().read_bytes() == (root / "configs" / "cpu_tiny.yaml").read_bytes()
    shipped = load_config(root / "configs" / "cpu_tiny.yaml").to_dict()
    demo = demo_config(Path("out"), Path("data"), DemoBudget()).to_dict()
    for cfg in (shipped, demo):
        cfg["logging"].pop("run_dir")
        cfg["logging"].pop("tensorboard")
        cfg["data"]["domains"] = [{k: v for k, v in d.items() if k != "path"} for d in cfg["data"]["domains"]]
    assert shipped == demo


def test_missing_recipe_is_a_clear_error(monkeypatch, tmp_path):
    import pytest

    import lram.demo

    monkeypatch.setattr(lram.demo, "RECIPE", "no-such-recipe.yaml")
    with pytest.raises(FileNotFoundError, match="demo's training recipe .*no-such-recipe.yaml is missing"):
        lram.demo.demo_config(tmp_path, tmp_path, lram.demo.DemoBudget())
