"""What a policy sees when it acts is what it saw in training: an episode replayed through the evaluation
loop (its return-to-go bookkeeping, previous rewards, reward scale and state standardisation from the
checkpoint's domain registry) gets the actions that the training forward pass decodes from the sampler's
window of the same episode."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from lram.data.episode import returns_to_go
from lram.data.normalization import state_statistics
from lram.data.sampler import DomainData, SamplerConfig, WindowSampler
from lram.evaluation import evaluate_task
from lram.models import LRAMPolicy
from lram.models.domain import DomainSpec

L, OBS, ACT = 12, 5, 3


class RecordedTask:
    """One recorded episode with states far from zero mean and unit scale (so standardisation matters)."""

    def __init__(self, seed: int = 0):
        g = np.random.default_rng(seed)
        self.task, self.discrete, self.obs_shape, self.action_dim = "toy", False, (OBS,), ACT
        rewards = g.uniform(0, 20, L).astype(np.float32)
        self.ep = {"states": (50 + 10 * g.standard_normal((L, OBS))).astype(np.float32),
                   "actions": g.uniform(-1, 1, (L, ACT)).astype(np.float32), "rewards": rewards,
                   "dones": np.arange(L) == L - 1, "returns_to_go": returns_to_go(rewards)}
        self.lengths = np.array([L])
        self.returns = np.array([rewards.sum()])
        self.stems, self.path = ["0"], "toy"

    def read(self, i, start=0, end=None, fields=("states", "actions", "rewards", "dones", "returns_to_go")):
        return {f: self.ep[f][start:end] for f in fields}


class ReplayEnv(gym.Env):
    """Plays the recorded episode back whatever the agent does, and records the agent's actions."""

    def __init__(self, task: RecordedTask):
        self.task, self.actions = task, []
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self.task.ep["states"][0], {}

    def step(self, action):
        self.actions.append(np.asarray(action, dtype=np.float32).copy())
        r = float(self.task.ep["rewards"][self.t])
        self.t += 1
        done = self.t == L
        return self.task.ep["states"][min(self.t, L - 1)], r, done, False, {}


@pytest.mark.parametrize("return_condition", [True, False], ids=["return-conditioned", "no-return"])
def test_evaluation_loop_feeds_the_policy_what_training_fed_it(return_condition):
    task = RecordedTask()
    mean, std = state_statistics([task])
    domain = DomainData("toy", [task], reward_scale=25.0, return_condition=return_condition, state_mean=mean,
                        state_std=std)
    sampler = WindowSampler([domain], SamplerConfig(context=L, batch_size=64, valid_fraction=0.0))
    _, batch = sampler.batch(0)
    row = int(torch.nonzero(batch.timestep_mask.all(1))[0])  # a window holding the whole episode
    torch.manual_seed(0)
    policy = LRAMPolicy.from_preset("tiny", "xlstm[1:0]", use_images=False, continuous_decode="mean").eval()
    with torch.no_grad():
        for p in policy.parameters():  # weights far from the init, so that actions vary with the inputs
            p.add_(0.3 * torch.randn_like(p))
        one = batch.__class__(**{**vars(batch), **{k: getattr(batch, k)[row:row + 1] for k in
                                                 ("states", "returns_to_go", "rewards", "actions", "timestep_mask",
                                                  "action_dims", "prev_reward", "first_step")}})
        logits = policy(one).logits
        trained = policy.decode(logits[0], False, action_dims=ACT)[:, :ACT].numpy()  # [C, dims, vocab] -> [C, dims]

    env = ReplayEnv(task)
    spec = DomainSpec.from_data(domain)  # what the checkpoint records
    name = spec.task_names[0]
    evaluate_task(policy, lambda i: env, spec, name, episodes=1, target_return=float(task.returns[0]))
    acted = np.stack(env.actions)
    assert acted.shape == (L, ACT)
    np.testing.assert_allclose(acted, trained, atol=1e-4)
    # and the comparison can fail: the same loop asking for another return, or on raw states, acts differently
    if return_condition:
        env.actions = []
        evaluate_task(policy, lambda i: env, spec, name, episodes=1, target_return=float(task.returns[0]) + 50)
        assert np.abs(np.stack(env.actions) - trained).max() > 1e-2
    env.actions = []
    raw = dataclasses.replace(spec, state_mean=None, state_std=None)
    evaluate_task(policy, lambda i: env, raw, name, episodes=1, target_return=float(task.returns[0]))
    assert np.abs(np.stack(env.actions) - trained).max() > 1e-2
