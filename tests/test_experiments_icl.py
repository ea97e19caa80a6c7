"""Dark-Room in-context experiments (``icl-darkroom``, ``slstm-ratio``, ``extrapolation``): rooms of other sizes
end to end (names, environments, histories: checked against positions and returns worked out by hand), the
batched in-context evaluation, the verdicts on synthetic results and the smoke scale of each experiment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lram.data.generators.darkroom import LearnerConfig, generate_learning_histories, task_name
from lram.data.storage import open_task
from lram.evaluation.envs import make_eval_env
from lram.experiments import EXPERIMENTS, main
from lram.experiments.core import Arm, Scale, aggregate
from lram.experiments.icl import ROOM_10, evaluate_in_context, history_tokens
from lram.models.domain import DomainSpec, TaskSpec

# 5x5 room, 25 steps, goal (3, 1).  The sweep expert stays at step 0 (is the start the goal?), then sweeps
# row 0 rightwards to (4, 0), goes down to (4, 1) and left to (3, 1): its 7th action (index 6) ends on the goal,
# where it stays: 25 - 6 = 19.  Once the goal is known: 4 moves (the 4th, index 3, ends on it): 25 - 3 = 22.
# Goal (0, 4) is cell 20 of the sweep (row 4 starts there): 25 - 20 = 5, then again 22 (distance 4).
HAND = {(3, 1): (19.0, 22.0), (0, 4): (5.0, 22.0)}


def test_room_names_give_the_room_they_were_made_in():
    assert task_name((3, 1)) == "darkroom_3_1"
    assert task_name((3, 1), 5) == "darkroom5_3_1"
    assert task_name((3, 1), 5, 25) == "darkroom5t25_3_1"
    assert task_name((3, 1), 10, 50) == "darkroom10t50_3_1"
    for name, size, steps in (("darkroom_3_1", 10, 100), ("darkroom5_3_1", 5, 100), ("darkroom5t25_3_1", 5, 25),
                              ("darkroom10t50_3_1", 10, 50)):
        env = make_eval_env("darkroom", name)
        assert (env.size, env.max_steps, env.goal) == (size, steps, (3, 1))
    with pytest.raises(ValueError, match="goal"):
        make_eval_env("darkroom", "darkroom5t25_7_1")  # outside the 5x5 room


def test_a_5x5_room_steps_as_worked_out_by_hand():
    env = make_eval_env("darkroom", "darkroom5t25_3_1")
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0]
    # right x3, down (goal), down, noop, up (goal again), right, right (wall), up, up (wall)
    actions = [1, 1, 1, 2, 2, 4, 0, 1, 1, 0, 0]
    want = [((1, 0), 0), ((2, 0), 0), ((3, 0), 0), ((3, 1), 1), ((3, 2), 0), ((3, 2), 0), ((3, 1), 1), ((4, 1), 0),
            ((4, 1), 0), ((4, 0), 0), ((4, 0), 0)]
    for a, (pos, r) in zip(actions, want):
        obs, reward, terminated, truncated, _ = env.step(a)
        assert (tuple(int(v) for v in obs), reward, terminated, truncated) == (pos, r, False, False)
    for t in range(len(actions), 25):
        *_, truncated, _ = env.step(4)
        assert truncated == (t == 24)  # the 25th step ends the episode


def test_5x5_sweep_histories_match_the_hand_computation(tmp_path):
    summary = generate_learning_histories(tmp_path, [(3, 1), (0, 4)], 3, config=LearnerConfig("sweep"), size=5,
                                          max_steps=25, progress=False)
    assert list(summary) == ["darkroom5t25_3_1", "darkroom5t25_0_4"]
    for goal, (first, later) in HAND.items():
        td = open_task(tmp_path / task_name(goal, 5, 25))
        returns = [float(td.read(k)["rewards"].sum()) for k in range(3)]
        assert returns == [first, later, later] and list(td.lengths) == [25, 25, 25]
    states = open_task(tmp_path / "darkroom5t25_3_1").read(0)["states"][:8].astype(int).tolist()
    assert states == [[0, 0], [0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [4, 1], [3, 1]]


class SweepAgent:
    """A scripted in-context learner (the sweep expert): it remembers the goal only if its state is kept."""

    def __init__(self, n: int, size: int):
        self.num_envs, self.size = n, size
        self.t = np.zeros(n, dtype=int)
        self.goal: list[tuple[int, int] | None] = [None] * n
        self.kept: list[bool] = []

    def reset(self, mask, keep_context=False):
        self.kept.append(keep_context)
        m = np.asarray(mask)
        self.t[m] = 0
        if not keep_context:
            self.goal = [None if m[i] else g for i, g in enumerate(self.goal)]

    def act(self, obs, prev_reward, rtg):
        out, last = [], self.size - 1
        for i, (x, y) in enumerate(np.asarray(obs).astype(int).tolist()):
            if prev_reward[i] > 0 and self.goal[i] is None:
                self.goal[i] = (x, y)
            g = self.goal[i]
            if g is not None:
                a = 4 if (x, y) == g else 1 if g[0] > x else 3 if g[0] < x else 2 if g[1] > y else 0
            elif self.t[i] == 0:
                a = 4
            elif y % 2 == 0:
                a = 1 if x < last else (2 if y < last else 4)
            else:
                a = 3 if x > 0 else 2
            out.append(a)
            self.t[i] += 1
        return torch.tensor(out)


def test_in_context_evaluation_steps_every_goal_on_one_state():
    domain = DomainSpec("darkroom", discrete=True, in_context=True, return_condition=False,
                        tasks={"darkroom5t25_1_1": TaskSpec("darkroom5t25_1_1", num_actions=5)})
    tasks = ["darkroom5t25_3_1", "darkroom5t25_0_4"]
    agent = SweepAgent(2, 5)
    res = evaluate_in_context(None, domain, tasks, 4, agent=agent)
    for task, goal in zip(tasks, HAND):
        first, later = HAND[goal]
        assert [e.total_return for e in res[task]] == [first, later, later, later]
        assert [e.episode for e in res[task]] == [0, 1, 2, 3] and all(e.length == 25 for e in res[task])
    assert agent.kept and all(agent.kept)  # the state is carried from episode to episode
    cut = evaluate_in_context(None, domain, tasks[:1], 2, max_steps=10, agent=SweepAgent(1, 5))
    assert [(e.total_return, e.length) for e in cut[tasks[0]]] == [(4.0, 10), (7.0, 10)]


def fake_report(rows: dict[str, list[float]], optimal: float = 10.0, random: float = 0.0) -> dict:
    tasks = {t: {"episodes_detail": [{"total_return": r} for r in rets], "random_return_mean": random,
                 "target_return": optimal, "normalised_score": (np.mean(rets) - random) / (optimal - random)}
             for t, rets in rows.items()}
    return {"domains": {"darkroom": {"tasks": tasks}}}


def synthetic_results(exp, curves: dict[str, callable], scale_name="cpu", goals=8, episodes=8, seeds=(0, 1)):
    """results.json of ``exp`` from fake reports: ``curves[group](rng, episodes)`` gives one goal's returns."""
    rng = np.random.default_rng(0)
    arms = [Arm(g, s) for g in curves for s in seeds]
    reports = {a.name: fake_report({f"darkroom_{i}_9": curves[a.group](rng, episodes) for i in range(goals)})
               for a in arms}
    scale = Scale(context=30, seeds=seeds, eval_episodes=episodes, data={"rooms": (ROOM_10,)})
    res = aggregate(exp, scale_name, scale, arms, reports, reps=200)
    exp.summarise(res, reports, scale)
    return res


def learner(rng, k):
    return np.r_[rng.uniform(2, 4), rng.uniform(8, 9.5, k - 1)]


def flat(level):
    return lambda rng, k: rng.uniform(level - 0.5, level + 0.5, k)


def test_icl_verdict_says_whether_improvement_emerges():
    exp = EXPERIMENTS["icl-darkroom"]()
    res = synthetic_results(exp, {"xlstm[1:0]/10x10": learner, "transformer/10x10": flat(3.0)})
    c = res["curves"]["xlstm[1:0]/10x10"]
    assert len(c["return"]["mean"]) == 8 and c["n"] == 16 and c["room"] == "10x10"
    st = res["icl"]["xlstm[1:0]/10x10"]
    assert st["last_k"] == 2 and st["gain_iqm_ci"][0] > 0.3 and st["first"] < 0.45 < 0.8 < st["last_iqm"]
    assert st["gain_ci"][0] < st["gain"] < st["gain_ci"][1] and st["gain"] == pytest.approx(st["last"] - st["first"])
    v = exp.verdict(res)
    assert v.startswith("10x10: in-context improvement emerges for xlstm[1:0]") and "not for transformer" in v
    assert "best (clearly) xlstm[1:0]" in v
    none = exp.verdict(synthetic_results(exp, {"xlstm[1:0]/10x10": flat(5.0), "mamba/10x10": flat(5.2)}))
    assert none.startswith("10x10: in-context improvement does not emerge for any arm")
    assert "ep 1 |" in exp.extra_table(res) and "gain IQM [95% CI]" in exp.extra_table(res)
    assert exp.verdict(synthetic_results(exp, {"xlstm[1:0]/10x10": learner}, "smoke")).startswith("not a result")


def test_slstm_ratio_verdict_compares_7_1_with_1_0():
    exp = EXPERIMENTS["slstm-ratio"]()
    worse = lambda rng, k: learner(rng, k) - np.r_[0, np.full(k - 1, 4.0)]  # noqa: E731
    assert exp.verdict(synthetic_results(exp, {"xlstm[1:0]/10x10": worse, "xlstm[7:1]/10x10": learner})).startswith("agrees")
    assert exp.verdict(synthetic_results(exp, {"xlstm[1:0]/10x10": learner, "xlstm[7:1]/10x10": worse})).startswith(
        "disagrees")
    assert exp.verdict(synthetic_results(exp, {"xlstm[1:0]/10x10": learner, "xlstm[7:1]/10x10": learner})).startswith(
        "inconclusive")
    assert exp.verdict(synthetic_results(exp, {"xlstm[1:0]/10x10": flat(2), "xlstm[7:1]/10x10": flat(2)})).startswith(
        "not measurable")


def test_extrapolation_bins_scores_by_history_length():
    exp = EXPERIMENTS["extrapolation"]()
    fading = lambda rng, k: np.r_[learner(rng, 5), rng.uniform(0, 1, k - 5)]  # noqa: E731
    res = synthetic_results(exp, {"xlstm[1:0]/10x10": learner, "transformer/10x10": fading}, episodes=30)
    rows = res["history"]["xlstm[1:0]/10x10"]
    assert [r["episodes"] for r in rows] == [[1, 1], [2, 5], [6, 10], [11, 25], [26, 30]]
    assert [r["tokens"] for r in rows] == [history_tokens(k, ROOM_10) for k in (0, 1, 5, 10, 25)] == [0, 300, 1500, 3000, 7500]
    assert res["history"]["transformer/10x10"][-1]["mean"] < 0.1 < 0.8 < rows[-1]["iqm"]
    assert exp.verdict(res).startswith("agrees")
    flipped = synthetic_results(exp, {"xlstm[1:0]/10x10": fading, "transformer/10x10": learner}, episodes=30)
    assert exp.verdict(flipped).startswith("disagrees")
    # a Transformer that fails from the first episode on has not degraded with history: not extrapolation
    failing = synthetic_results(exp, {"xlstm[1:0]/10x10": learner, "transformer/10x10": flat(0.5)}, episodes=30)
    verdict = exp.verdict(failing)
    assert verdict.startswith("partly") and "already below it in the first bin" in verdict


@pytest.mark.parametrize("name", ["icl-darkroom", "slstm-ratio", "extrapolation"])
def test_smoke_scale_runs_end_to_end(tmp_path, name):
    assert main([name, "--scale", "smoke", "--out", str(tmp_path), "--quiet"]) == 0
    root = tmp_path / name
    exp = EXPERIMENTS[name]()
    scale = exp.scales["smoke"]
    res = json.loads((root / "results.json").read_text())
    groups = list(dict.fromkeys(a.group for a in exp.arms(scale)))
    assert list(res["groups"]) == groups and len(groups) >= 3
    for g in groups:
        c = res["curves"][g]
        assert len(c["return"]["mean"]) == scale.eval_episodes == len(c["score"]["ci"][0])
        assert c["n"] == 2 and res["icl"][g]["episodes"] == scale.eval_episodes
    rep = json.loads((root / "reports" / f"{exp.arms(scale)[0].name}.json").read_text())
    for task, row in rep["domains"]["darkroom"]["tasks"].items():
        assert task.startswith("darkroom6t36_") and not row["in_training_data"]  # held-out goals of the 6x6 room
        assert len(row["episodes_detail"]) == scale.eval_episodes
        assert all(e["length"] == 36 for e in row["episodes_detail"])
    table = (root / "table.md").read_text()
    assert table.count("\n| ") >= 2 * (len(groups) + 1)  # the score table and the per-episode table
    assert (root / f"{name}-curves.png").read_bytes()[:4] == b"\x89PNG"
    assert exp.verdict(res).startswith("not a result")
    if name == "slstm-ratio":
        from lram.models.persistence import load_pretrained

        policy = load_pretrained(root / "runs" / "slstm@all-6x6-seed0")
        assert policy.backbone.config.block_types == ["slstm"] * 4
        assert res["placements"]["xlstm[7:1]/6x6"] == [1]
    if name == "extrapolation":
        assert not (root / "runs" / "transformer-kv18-6x6-seed0").exists()  # evaluated from the Transformer's run
        assert [r["episodes"] for r in res["history"]["transformer-kv18/6x6"]] == [[1, 1], [2, 4]]
        assert (root / "extrapolation-history.png").exists()
