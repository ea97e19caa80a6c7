"""Online evaluation: the batched rollout loop equals a plain one-environment loop, checkpoints evaluate from
the command line, and every domain's evaluation environment gives observations shaped like its data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lram.envs.darkroom import DarkRoom
from lram.evaluation import evaluate_task, make_eval_env, random_policy_returns
from lram.evaluation.evaluate import main as eval_main
from lram.evaluation.evaluate import normalised_score
from lram.models import LRAMPolicy
from lram.models.domain import DomainSpec, TaskSpec
from lram.training.checkpoint import save_checkpoint

GOAL = (6, 3)


def domain_spec(name="darkroom", task="room", *, discrete=True, num_actions=5, action_dim=1, reward_scale=1.0,
                in_context=False) -> DomainSpec:
    """A one-task domain as a checkpoint describes it."""
    return DomainSpec(name, discrete, reward_scale, in_context,
                      tasks={task: TaskSpec(task, action_dim, num_actions if discrete else None)})


def tiny_policy(seed=0, backbone="xlstm[1:0]"):
    torch.manual_seed(seed)
    policy = LRAMPolicy.from_preset("tiny", backbone, use_images=False).eval()
    with torch.no_grad():  # weights far from the init, so that actions vary with the inputs
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


def reference_returns(policy, spec, episodes, num_envs, target, seed):
    """The protocol written out plainly: one environment and a batch-1 agent per slot, episodes of a slot in
    sequence (Dark-Room episodes all last 100 steps, so slot k plays episodes k, k + n, k + 2n, ...)."""
    out = {}
    for slot in range(num_envs):
        agent = policy.make_agent(1, discrete=True, num_actions=spec.num_actions, reward_scale=spec.reward_scale)
        env = DarkRoom(goal=GOAL)
        for ep in range(slot, episodes, num_envs):
            obs, _ = env.reset(seed=seed + ep)
            rtg, prev, total, actions = target, 0.0, 0.0, []
            done = False
            while not done:
                with torch.inference_mode():
                    a = agent.act(torch.tensor(obs)[None], torch.tensor([prev]), torch.tensor([rtg]))
                actions.append(int(a))
                obs, r, term, trunc, _ = env.step(int(a))
                total, rtg, prev, done = total + r, rtg - r, r, term or trunc
            out[ep] = total
            agent.reset(keep_context=spec.in_context)
    return out


@pytest.mark.parametrize("in_context", [False, True], ids=["fresh-state", "in-context"])
def test_batched_rollout_equals_plain_loop(in_context):
    policy = tiny_policy()
    spec = domain_spec(in_context=in_context)
    results = evaluate_task(policy, lambda i: DarkRoom(goal=GOAL), spec, "room", episodes=5, target_return=40.0, num_envs=2,
                            seed=3)
    ref = reference_returns(policy, spec, episodes=5, num_envs=2, target=40.0, seed=3)
    assert [r.episode for r in results] == list(range(5))
    assert all(r.length == 100 and r.success is None for r in results)
    assert [r.total_return for r in results] == [ref[i] for i in range(5)]


def test_rollout_handles_episodes_of_different_lengths():
    """Sparse Dark-Room ends at the goal: environments free up at different steps and pick up new episodes;
    every episode is reported once, in index order; an episode without the goal runs to the step limit."""
    policy = tiny_policy(1)
    spec = domain_spec()
    results = evaluate_task(policy, lambda i: DarkRoom(goal=(1, 0), variant="sparse"), spec, "room", episodes=6,
                            target_return=1.0, num_envs=4, seed=0, max_steps=60)
    assert [r.episode for r in results] == list(range(6))
    for r in results:
        assert 1 <= r.length <= 60 and r.total_return in (0.0, 1.0)
        assert r.total_return == 1.0 or r.length == 60


def test_checkpoint_evaluates_from_the_command_line(tmp_path, capsys):
    policy = tiny_policy(2)
    task = f"darkroom_{GOAL[0]}_{GOAL[1]}"
    domains = [{"name": "darkroom", "reward_scale": 1.0, "discrete": True, "num_actions": 5, "in_context": True,
                "obs_shape": [2], "action_dim": 1, "tasks": [task], "max_returns": {task: 90.0}}]
    save_checkpoint(tmp_path / "run", 7, policy, {}, domains)
    assert eval_main([str(tmp_path / "run"), "--episodes", "3", "--envs", "2", "--random-baseline", "--quiet"]) == 0
    report = json.loads((tmp_path / "run" / "eval" / "step-00000007.json").read_text())
    row = report["domains"]["darkroom"]["tasks"][task]
    assert report["step"] == 7 and row["episodes"] == 3 and row["target_return"] == 90.0
    assert report["domains"]["darkroom"]["in_context"] is True
    rand = random_policy_returns("darkroom", task, 3, seed=0)
    assert row["random_return_mean"] == pytest.approx(np.mean([r.total_return for r in rand]))
    assert row["normalised_score"] == pytest.approx((row["return_mean"] - row["random_return_mean"])
                                                    / (90.0 - row["random_return_mean"]))
    assert report["normalised_score"] == pytest.approx(row["normalised_score"])
    assert "darkroom/" + task in capsys.readouterr().out
    # a held-out task of the domain (domain/task), with a plot
    out = tmp_path / "heldout.json"
    assert eval_main([str(tmp_path / "run"), "--tasks", "darkroom/darkroom_1_8", "--episodes", "2", "--quiet", "--plot",
                      "--out", str(out)]) == 0
    held = json.loads(out.read_text())["domains"]["darkroom"]["tasks"]["darkroom_1_8"]
    assert held["in_training_data"] is False and held["target_return"] == 90.0 and held["episodes"] == 2
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "heldout-tasks-1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the per-task page
    # bad requests name what is wrong
    for args, message in (([str(tmp_path / "run"), "--domains", "atari"], "'atari' is not in the checkpoint"),
                          ([str(tmp_path / "nothing")], "no checkpoint found"),
                          ([str(tmp_path / "run"), "--tasks", "darkroom_1_8"], "write domain/task")):
        with pytest.raises(SystemExit) as e:
            eval_main([*args, "--quiet"])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert normalised_score(1.0, 2.0, 2.0) is None
    assert normalised_score(78.8, 1e-9, 0.0) is None  # an expert no better than random: no scale


DOMAIN_OBS = {
    "darkroom": ("darkroom_2_9", (2,), np.float32),
    "metaworld": ("reach-v3", (39,), np.float32),
    "dmcontrol": ("walker-walk", (204,), np.float32),
    "atari": ("atari-freeway", (3, 64, 64), np.uint8),
    "procgen": ("procgen-coinrun", (3, 64, 64), np.uint8),
}


@pytest.mark.parametrize("domain", list(DOMAIN_OBS))
def test_every_domain_has_an_environment_shaped_like_its_data(domain):
    task, shape, dtype = DOMAIN_OBS[domain]
    env = make_eval_env(domain, task, seed=0)
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == shape and obs.dtype == dtype
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert obs.shape == shape and np.isfinite(r)
    finally:
        env.close()
    with pytest.raises(ValueError, match="domain"):
        make_eval_env("go", task)


def test_training_logs_online_rollouts(tmp_path):
    """train.rollout_episodes > 0: every eval runs the policy in its tasks' environments and logs the returns."""
    from lram.data.episode import Episode
    from lram.data.storage import PaperWriter
    from lram.training.config import load_config
    from lram.training.trainer import train

    rng = np.random.default_rng(0)
    task = f"darkroom_{GOAL[0]}_{GOAL[1]}"
    with PaperWriter(tmp_path / "darkroom" / task, fmt="npz", compress=False, progress=False) as w:
        for _ in range(6):
            s = rng.integers(0, 10, size=(100, 2)).astype(np.float32)
            w.write(Episode(states=s, actions=rng.integers(0, 5, 100), rewards=(rng.random(100) < 0.2).astype(np.float32)))
    cfg = load_config(None, [
        f"data.domains=[{{name: darkroom, path: {tmp_path / 'darkroom'}}}]", "data.context=10", "data.batch_size=4",
        "model.size=tiny", "train.steps=3", "train.checkpoint_every=3", "train.eval_batches=1", "data.valid_fraction=0",
        "train.rollout_episodes=3", "train.rollout_envs=2", "train.rollout_max_steps=15", "logging.tensorboard=false",
        f"logging.run_dir={tmp_path / 'run'}",
    ])
    result = train(cfg)
    ret = result[f"rollout/darkroom/{task}/return"]
    assert 0.0 <= ret <= 15.0 and result["rollout/darkroom/return_mean"] == ret
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(f"rollout/darkroom/{task}/return" in r for r in rows)


def test_environment_that_does_not_fit_the_domain_is_refused():
    policy = tiny_policy()
    for spec, message in ((domain_spec(num_actions=4), "4 discrete actions"),
                          (domain_spec(discrete=False, action_dim=3), "3-d actions but the environment")):
        with pytest.raises(ValueError, match=message):
            evaluate_task(policy, lambda i: DarkRoom(goal=GOAL), spec, "room", episodes=1, target_return=1.0)
    with pytest.raises(ValueError, match="discrete actions but the environment"):  # a held-out task of another kind
        evaluate_task(policy, lambda i: make_eval_env("metaworld", "reach-v3", 0), domain_spec(), "reach-v3",
                      episodes=1, target_return=1.0)


def test_tasks_spread_over_worker_processes_give_the_same_report(tmp_path):
    from lram.evaluation import evaluate_checkpoint

    tasks = ["darkroom_6_3", "darkroom_2_2", "darkroom_0_7"]
    domains = [{"name": "darkroom", "reward_scale": 1.0, "discrete": True, "num_actions": 5, "in_context": True,
                "obs_shape": [2], "action_dim": 1, "tasks": tasks, "max_returns": {t: 80.0 for t in tasks}}]
    save_checkpoint(tmp_path / "run", 1, tiny_policy(4), {}, domains)
    reports = [evaluate_checkpoint(tmp_path / "run", episodes=3, num_envs=2, max_steps=30, workers=w, progress=False)
               for w in (1, 2)]
    strip = lambda rep: {t: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
                         for t, r in rep["domains"]["darkroom"]["tasks"].items()}
    assert strip(reports[0]) == strip(reports[1]) and list(strip(reports[1])) == tasks


@pytest.mark.parametrize("domain,task,dims,scale", [("metaworld", "reach-v3", 4, 200.0), ("dmcontrol", "walker-walk", 6, 100.0)])
def test_simulator_results_do_not_depend_on_how_many_envs_run(domain, task, dims, scale):
    """Episode i is seeded seed + i whatever the environment it runs in (real MuJoCo simulators)."""
    policy = tiny_policy(5)
    spec = domain_spec(domain, task, discrete=False, action_dim=dims, reward_scale=scale)
    runs = [[r.total_return for r in evaluate_task(policy, lambda i: make_eval_env(domain, task, 100 + i), spec, task,
                                                   episodes=3, target_return=500.0, num_envs=n, seed=5, max_steps=15)]
            for n in (1, 3)]
    assert runs[0] == runs[1] and len(set(runs[0])) == 3  # equal, and the three episodes do differ


def test_a_domain_mixing_action_sizes_acts_in_every_task(tmp_path):
    """DMControl's tasks have 1- to 6-d actions: one domain, per-task action layouts in the checkpoint, and
    `lram eval` acts in each task with its own size (it refused the 6-d task when one size was kept per domain)."""
    from lram.evaluation import evaluate_checkpoint

    spec = DomainSpec("dmcontrol", False, 100.0, tasks={
        "cartpole-swingup": TaskSpec("cartpole-swingup", 1, None, (204,), 800.0),
        "walker-stand": TaskSpec("walker-stand", 6, None, (204,), 900.0)})
    save_checkpoint(tmp_path / "run", 3, tiny_policy(6), {}, [spec])
    report = evaluate_checkpoint(tmp_path / "run", episodes=1, num_envs=1, max_steps=4, progress=False)
    rows = report["domains"]["dmcontrol"]["tasks"]
    assert list(rows) == ["cartpole-swingup", "walker-stand"]
    assert [rows[t]["target_return"] for t in rows] == [800.0, 900.0] and all(r["length_mean"] == 4 for r in rows.values())
