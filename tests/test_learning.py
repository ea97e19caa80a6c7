"""Learning regression: a tiny policy trained here must act well in the real environment, and only because
its observations and return-to-go are wired right.

The task is a small Dark-Room (5 x 5, 24 steps, the goal fixed at (3, 2)) that starts every episode from a
random cell, so the way to the goal depends on the observed position.  The data are expert episodes
(shortest path, then staying on the goal) and random-policy episodes, so the return-to-go tells them
apart.  A tiny xLSTM is trained on them with lram's trainer and evaluated with lram's evaluation loop
(recurrent agent, states standardised by the statistics in the checkpoint, return-to-go updated from the
rewards).  It must

* beat the random policy by a wide margin when asked for the experts' return;
* act much worse when asked for the random episodes' return (it follows the return-to-go), and
* fall to near the random policy when its observations are replaced by zeros (it reads the state).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lram.data.episode import Episode
from lram.envs.darkroom import DarkRoom
from lram.evaluation.rollout import evaluate_task
from lram.models import LRAMPolicy
from lram.training.config import load_config
from lram.training.trainer import train

SIZE, STEPS, GOAL = 5, 24, (3, 2)
MOVES = {(0, -1): 0, (1, 0): 1, (0, 1): 2, (-1, 0): 3}  # action ids of lram.envs.darkroom.MOVES (4 = stay)


class RandomStartRoom(DarkRoom):
    """A dark room whose start cell is drawn from the reset seed (the policy must read its position)."""

    def __init__(self, zero_obs: bool = False):
        super().__init__(size=SIZE, goal=GOAL, max_steps=STEPS)
        self.zero_obs = zero_obs

    def reset(self, *, seed=None, options=None):
        rng = np.random.default_rng(seed)
        self.start = (int(rng.integers(SIZE)), int(rng.integers(SIZE)))
        obs, info = super().reset(seed=seed, options=options)
        return self._mask(obs), info

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        return self._mask(obs), r, term, trunc, info

    def _mask(self, obs):
        return np.zeros_like(obs) if self.zero_obs else obs


def expert_action(pos) -> int:
    dx, dy = GOAL[0] - pos[0], GOAL[1] - pos[1]
    if dx:
        return MOVES[(int(np.sign(dx)), 0)]
    if dy:
        return MOVES[(0, int(np.sign(dy)))]
    return 4


def episode(env: RandomStartRoom, seed: int, expert: bool, rng) -> Episode:
    obs, _ = env.reset(seed=seed)
    states, actions, rewards = [], [], []
    for _ in range(STEPS):
        a = expert_action(obs) if expert else int(rng.integers(5))
        states.append(obs)
        actions.append(a)
        obs, r, term, trunc, _ = env.step(a)
        rewards.append(r)
        if term or trunc:
            break
    return Episode(np.array(states, np.float32), np.array(actions, np.int64), np.array(rewards, np.float32))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from lram.data.storage import PaperWriter

    root = tmp_path_factory.mktemp("learning")
    env, rng = RandomStartRoom(), np.random.default_rng(0)
    with PaperWriter(root / "data" / "darkroom" / "room5", fmt="npz", compress=False, progress=False) as w:
        for i in range(120):
            w.write(episode(env, 10_000 + i, expert=i % 2 == 0, rng=rng))
    torch.manual_seed(0)
    cfg = load_config(None, [
        f"data.domains=[{{name: darkroom, path: {root / 'data' / 'darkroom'}, in_context: false}}]",
        "model.size=tiny", "model.backbone=xlstm[1:0]", "model.use_images=false", "data.context=8",
        "data.batch_size=32", "optim.lr=2e-3", "optim.warmup_steps=20", "train.steps=250", "train.log_every=50",
        "train.checkpoint_every=0", "train.eval_batches=0", "data.valid_fraction=0", "logging.tensorboard=false",
        f"logging.run_dir={root / 'run'}"])
    train(cfg)
    policy = LRAMPolicy.from_pretrained(root / "run")
    returns = [e.total_return for e in (episode(env, 10_000 + i, i % 2 == 0, rng) for i in range(120))]
    return policy, policy.domains["darkroom"], max(returns), float(np.mean([r for i, r in enumerate(returns) if i % 2]))


def mean_return(policy, entry, target: float, zero_obs: bool = False, episodes: int = 20) -> float:
    # as lram eval acts: the checkpoint's domain spec (reward scale, state normalisation of the data)
    results = evaluate_task(policy, lambda i: RandomStartRoom(zero_obs), entry, entry.task_names[0], episodes=episodes,
                            target_return=target,
                            num_envs=10, seed=500)
    return float(np.mean([r.total_return for r in results]))


def test_trained_policy_beats_random_and_uses_state_and_return(trained):
    policy, entry, expert_return, random_data_return = trained
    rand_env, rng = RandomStartRoom(), np.random.default_rng(1)
    random_return = float(np.mean([episode(rand_env, 500 + i, expert=False, rng=rng).total_return for i in range(20)]))
    expert_eval = float(np.mean([episode(rand_env, 500 + i, expert=True, rng=rng).total_return for i in range(20)]))

    asked_expert = mean_return(policy, entry, expert_return)
    asked_random = mean_return(policy, entry, random_data_return)
    blind = mean_return(policy, entry, expert_return, zero_obs=True)
    print(f"random {random_return:.1f}, expert {expert_eval:.1f}; policy: asked the experts' return {asked_expert:.1f}, "
          f"the random episodes' {asked_random:.1f}, without observations {blind:.1f}")
    assert expert_eval >= random_return + 10  # the task separates experts from random play
    # acts like the experts when asked for their return: most of the way from random to expert
    assert asked_expert >= random_return + 0.7 * (expert_eval - random_return)
    # follows the return-to-go: asked for a random episode's return it does much worse
    assert asked_random <= asked_expert - 0.3 * (expert_eval - random_return)
    # reads its observations: blind, it loses most of what it learned
    assert blind <= random_return + 0.5 * (asked_expert - random_return)
