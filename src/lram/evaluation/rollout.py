"""Online evaluation: a policy acts in ``num_envs`` environments of one task at once, one recurrent step per
environment step, until the requested number of episodes is done.

Protocol (spec 5.1, with lram's recurrent inference instead of the paper's 50-step re-processing):

* every episode starts from ``target_return`` (by default the highest return of the task in the training
  data, as the checkpoint's domain registry records it); after each step the return-to-go drops by the
  reward received, and the reward enters the next step as r_{t-1} (0 at an episode start);
* greedy actions restricted to the task's valid actions / action dimensions;
* an environment whose episode ended starts the next episode with a fresh recurrent state (in-context
  domains such as Dark-Room keep the state across episodes: the policy can improve from trial to trial);
* episode ``i`` of a task resets its environment with seed ``seed + i``, so results do not depend on how
  many environments run at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class EpisodeResult:
    """One evaluation episode."""

    episode: int  # index within the task's evaluation (its reset seed is seed + episode)
    total_return: float
    length: int
    success: bool | None  # the env's info["success"] at any step (None when the env does not report it)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ActingSpec:
    """What the agent must know about the task's domain (from the checkpoint's domain registry)."""

    discrete: bool
    reward_scale: float
    num_actions: int | None = None  # discrete domains
    action_dim: int | None = None  # continuous domains
    in_context: bool = False  # keep the recurrent state across episodes
    return_condition: bool = True  # False: the domain was trained with a return-to-go of 0; act with 0 too
    state_mean: list[float] | None = None  # the domain's state normalisation (None: raw observations)
    state_std: list[float] | None = None

    @classmethod
    def from_registry(cls, entry: dict) -> ActingSpec:
        return cls(discrete=bool(entry["discrete"]), reward_scale=float(entry["reward_scale"]),
                   num_actions=entry.get("num_actions"), action_dim=int(entry.get("action_dim", 1)),
                   in_context=bool(entry.get("in_context", False)),
                   return_condition=bool(entry.get("return_condition", True)),
                   state_mean=entry.get("state_mean"), state_std=entry.get("state_std"))

    def agent(self, policy, num_envs: int):
        """A recurrent agent for ``num_envs`` environments of this domain."""
        return policy.make_agent(num_envs, discrete=self.discrete, num_actions=self.num_actions if self.discrete else None,
                                 action_dims=None if self.discrete else self.action_dim, reward_scale=self.reward_scale,
                                 state_mean=self.state_mean, state_std=self.state_std)


def check_env_fits(env: gym.Env, spec: ActingSpec) -> None:
    """ValueError when the environment's actions are not the domain's (what the policy was trained to emit)."""
    name = getattr(env, "task_name", None) or type(env).__name__
    space = env.action_space
    if spec.discrete:
        n = getattr(space, "n", None)
        if n is None:
            raise ValueError(f"{name}: the domain has discrete actions but the environment's action space is {space}")
        if spec.num_actions is not None and int(n) != int(spec.num_actions):
            raise ValueError(f"{name}: the domain has {spec.num_actions} discrete actions, the environment {int(n)}")
    elif getattr(space, "shape", None) is None or len(space.shape) != 1 or space.shape[0] != spec.action_dim:
        raise ValueError(f"{name}: the domain's data has {spec.action_dim}-d actions but the environment takes {space}")


def _observation(obs) -> torch.Tensor:
    """An env observation as the tensor the agent takes (uint8 images stay uint8, vectors become float32)."""
    arr = np.asarray(obs)
    return torch.from_numpy(np.ascontiguousarray(arr if arr.dtype == np.uint8 else arr.astype(np.float32)))


def evaluate_task(policy, make_env: Callable[[int], gym.Env], spec: ActingSpec, *, episodes: int,
                  target_return: float, num_envs: int = 1, seed: int = 0, max_steps: int | None = None,
                  progress: bool = False, desc: str = "eval") -> list[EpisodeResult]:
    """Run ``episodes`` episodes of one task with ``num_envs`` environments made by ``make_env(index)``;
    returns the episodes in index order.  ``max_steps`` cuts episodes (None: the env's own limit)."""
    if episodes < 1:
        raise ValueError(f"episodes: expected >= 1, got {episodes}")
    if num_envs < 1:
        raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
    n = min(num_envs, episodes)
    envs = [make_env(i) for i in range(n)]
    check_env_fits(envs[0], spec)
    agent = spec.agent(policy, n)
    rtg_scale = 1.0 if spec.return_condition else 0.0  # a domain trained without return-to-go acts with 0
    results: dict[int, EpisodeResult] = {}
    episode_of = list(range(n))  # the episode each env is playing (-1: done, idle)
    next_episode = n
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    rtg = np.full(n, float(target_return), dtype=np.float64)
    prev_reward = np.zeros(n, dtype=np.float64)
    ret = np.zeros(n, dtype=np.float64)
    length = np.zeros(n, dtype=np.int64)
    success: list[bool | None] = [None] * n
    bar = tqdm(total=episodes, desc=desc, disable=not progress, leave=False)
    try:
        with torch.inference_mode():
            while any(e >= 0 for e in episode_of):
                actions = agent.act(torch.stack([_observation(o) for o in obs]),
                                    torch.from_numpy(prev_reward).float(), torch.from_numpy(rtg * rtg_scale).float())
                actions = actions.cpu().numpy()
                ended = np.zeros(n, dtype=bool)
                for i, env in enumerate(envs):
                    if episode_of[i] < 0:
                        continue
                    a = int(actions[i]) if spec.discrete else actions[i, : spec.action_dim].astype(np.float32)
                    obs[i], r, terminated, truncated, info = env.step(a)
                    ret[i] += r
                    length[i] += 1
                    rtg[i] -= r
                    prev_reward[i] = r
                    if "success" in info:
                        success[i] = bool(success[i]) or bool(info["success"])
                    if terminated or truncated or (max_steps is not None and length[i] >= max_steps):
                        results[episode_of[i]] = EpisodeResult(episode_of[i], float(ret[i]), int(length[i]), success[i])
                        bar.update(1)
                        ended[i] = True
                        if next_episode < episodes:
                            episode_of[i] = next_episode
                            obs[i] = env.reset(seed=seed + next_episode)[0]
                            next_episode += 1
                        else:
                            episode_of[i] = -1
                        rtg[i], prev_reward[i], ret[i], length[i], success[i] = target_return, 0.0, 0.0, 0, None
                if ended.any():
                    agent.reset(torch.from_numpy(ended), keep_context=spec.in_context)
    finally:
        bar.close()
        for env in envs:
            env.close()
    return [results[i] for i in range(episodes)]


def summarize(results: Sequence[EpisodeResult]) -> dict:
    """Mean / std / min / max return, mean length and success rate (None if the env has no success)."""
    returns = np.array([r.total_return for r in results], dtype=np.float64)
    succ = [r.success for r in results if r.success is not None]
    return {"episodes": len(results), "return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "return_min": float(returns.min()), "return_max": float(returns.max()),
            "length_mean": float(np.mean([r.length for r in results])),
            "success_rate": float(np.mean(succ)) if succ else None}
