"""The ``actions-in-context`` and ``context-length`` experiments: smoke runs of the whole pipeline, the
consecutive-action statistic against an independent computation, the verdict rules on synthetic results,
and the sliding-window agent their evaluation relies on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lram.evaluation.window import WindowAgent
from lram.experiments import EXPERIMENTS, main
from lram.experiments.context_length import arm_context
from lram.experiments.core import Arm, Scale, aggregate
from lram.models.policy import LRAMConfig, LRAMPolicy, RecurrentAgent, TrajectoryBatch


def fake_report(scores: dict[str, float]) -> dict:
    domains: dict = {}
    for key, s in scores.items():
        d, t = key.split("/")
        domains.setdefault(d, {"tasks": {}})["tasks"][t] = {"normalised_score": s}
    return {"domains": domains}


def synthetic(exp, groups: dict[str, float], scale: str = "cpu", seeds: int = 3, tasks=None, spread: float = 0.05):
    """results.json of ``exp`` from fake reports: group g's score of (seed, task) is level_g + the same
    N(0, spread) draw for every group (so the IQMs differ by exactly the levels' difference)."""
    tasks = tasks or [f"metaworld/t{i}" for i in range(4)] + [f"dmcontrol/d{i}" for i in range(2)]
    noise = np.random.default_rng(0).normal(0.0, spread, (seeds, len(tasks)))
    arms = [Arm(g, s) for g in groups for s in range(seeds)]
    reports = {a.name: fake_report({t: float(groups[a.group] + noise[a.seed, i]) for i, t in enumerate(tasks)})
               for a in arms}
    return aggregate(exp, scale, Scale(), arms, reports, reps=300), reports


@pytest.mark.parametrize("backbone,actions", [("xlstm[1:0]", False), ("xlstm[1:0]", True), ("transformer", True),
                                              ("mamba", False)])
def test_window_agent_acts_on_the_last_window_only(backbone, actions):
    """Each step's logits are the parallel forward's over the last W timesteps (previous reward before them,
    no previous action, as training windows have); a window as long as the episode is the recurrent agent."""
    torch.manual_seed(0)
    model = LRAMPolicy(LRAMConfig.from_preset("tiny", backbone, use_images=False, action_condition=actions,
                                              max_act_dim=4)).eval()
    B, T, W = 3, 9, 4
    obs, rew, rtg = torch.randn(B, T, 6), torch.randn(B, T), torch.randn(B, T)
    kw = {"discrete": False, "action_dims": 2, "reward_scale": 1.0}
    rec, whole, win = RecurrentAgent(model, B, **kw), WindowAgent(model, B, window=T, **kw), WindowAgent(model, B, window=W, **kw)
    acts = []
    for t in range(T):
        prev = rew[:, t - 1] if t else torch.zeros(B)
        rec.act(obs[:, t], prev, rtg[:, t])
        whole.act(obs[:, t], prev, rtg[:, t])
        acts.append(win.act(obs[:, t], prev, rtg[:, t])[:, :2])
        torch.testing.assert_close(whole.last_logits, rec.last_logits, atol=2e-4, rtol=1e-4)
        s = max(0, t + 1 - W)
        batch = TrajectoryBatch(states=obs[:, s:t + 1], returns_to_go=rtg[:, s:t + 1], rewards=rew[:, s:t + 1],
                                actions=torch.stack(acts, 1)[:, s:], action_dims=2,
                                prev_reward=rew[:, s - 1] if s else None)
        with torch.no_grad():
            expected = model(batch).logits[:, -1]
        torch.testing.assert_close(win.last_logits, expected, atol=1e-5, rtol=1e-5)
    win.reset(torch.tensor([True, False, False]))  # a new episode empties only that row's window
    assert win.count.tolist() == [0, W, W]


def test_actions_in_context_smoke(tmp_path):
    assert main(["actions-in-context", "--scale", "smoke", "--out", str(tmp_path), "--quiet"]) == 0
    root = tmp_path / "actions-in-context"
    results = json.loads((root / "results.json").read_text())
    assert list(results["groups"]) == ["xlstm[1:0]/no-actions", "xlstm[1:0]/with-actions"]
    for g in results["groups"].values():
        assert {"metaworld/reach-v3", "dmcontrol/cartpole-balance"} <= set(g["tasks"]) and "iqm_ci" in g
    for arm, flag in (("xlstm1-0-no-actions-seed0", False), ("xlstm1-0-with-actions-seed0", True)):
        cfg = json.loads((root / "runs" / arm / "config.json").read_text())
        assert cfg["model"]["action_condition"] is flag and cfg["model"]["max_act_dim"] == 4
    table = (root / "table.md").read_text()
    assert table.count("\n| xlstm[1:0]/") == 2 and "| metaworld/reach-v3 | 2 |" in table
    # the statistic, recomputed here from the packed arrays
    stats = results["action_smoothness"]
    for key in ("metaworld/reach-v3", "dmcontrol/cartpole-balance"):
        folder = root / "data" / "packed" / key
        a, off = np.load(folder / "actions.npy").astype(np.float64), np.load(folder / "offsets.npy")
        sq = [np.diff(a[off[i]:off[i + 1]], axis=0) ** 2 for i in range(len(off) - 1)]
        msd = float(np.concatenate(sq).mean())
        assert stats["tasks"][key]["consecutive_msd"] == pytest.approx(msd, rel=1e-6)
        assert stats["tasks"][key]["independent_msd"] == pytest.approx(2 * a.var(axis=0).mean(), rel=1e-6)
        assert f"| {key} |" in table
    assert stats["tasks"]["metaworld/reach-v3"]["consecutive_msd"] > 0.01  # action noise 0.1: >= ~2 x 0.1^2
    assert EXPERIMENTS["actions-in-context"]().verdict(results).startswith("not a result (smoke")


def test_actions_in_context_verdict():
    exp = EXPERIMENTS["actions-in-context"]()
    no, wa = "xlstm[1:0]/no-actions", "xlstm[1:0]/with-actions"
    assert exp.verdict(synthetic(exp, {no: 0.8, wa: 0.4})[0]).startswith("agrees")
    assert exp.verdict(synthetic(exp, {no: 0.4, wa: 0.8})[0]).startswith("disagrees")
    assert exp.verdict(synthetic(exp, {no: 0.52, wa: 0.5}, spread=0.3)[0]).startswith("partly")
    assert exp.verdict(synthetic(exp, {no: 0.8, wa: 0.4}, scale="smoke")[0]).startswith("not a result")
    assert exp.verdict(synthetic(exp, {no: 0.8})[0]) == "not measured"


def test_context_length_smoke(tmp_path):
    assert main(["context-length", "--scale", "smoke", "--out", str(tmp_path), "--quiet"]) == 0
    root = tmp_path / "context-length"
    results = json.loads((root / "results.json").read_text())
    assert list(results["groups"]) == ["xlstm[1:0]/C=1", "xlstm[1:0]/C=4", "transformer/C=1", "transformer/C=4"]
    exp = EXPERIMENTS["context-length"]()
    for arm in exp.arms(exp.scales["smoke"]):
        cfg = json.loads((root / "runs" / arm.name / "config.json").read_text())
        assert cfg["data"]["context"] == arm_context(arm) and cfg["model"]["backbone"] == arm.group.split("/")[0]
    curve = results["context_length"]["backbones"]
    assert [p["context"] for p in curve["xlstm[1:0]"]] == [1, 4] == [p["context"] for p in curve["transformer"]]
    assert curve["transformer"][1]["iqm"] == results["groups"]["transformer/C=4"]["iqm"]
    table = (root / "table.md").read_text()
    assert table.count("\n| xlstm[1:0]/C=") == 2 and "| backbone | C=1 | C=4 |" in table and "\n| transformer | " in table
    assert (root / "context-length-curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_context_length_verdict():
    exp = EXPERIMENTS["context-length"]()
    scale = Scale(data={"backbones": ("xlstm[1:0]",), "contexts": (1, 5, 40)})

    def verdict(levels, spread=0.05):
        res, reports = synthetic(exp, {f"xlstm[1:0]/C={c}": v for c, v in zip((1, 5, 40), levels)}, spread=spread)
        exp.summarise(res, reports, scale)
        return exp.verdict(res)

    assert verdict((0.3, 0.5, 0.8)).startswith("agrees")
    assert verdict((0.8, 0.5, 0.3)).startswith("disagrees")
    assert verdict((0.5, 0.5, 0.52), spread=0.3).startswith("partly")
