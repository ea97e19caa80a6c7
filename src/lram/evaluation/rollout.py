"""Online evaluation: a policy acts in ``num_envs`` environments of one task at once, one recurrent step per
environment step, until the requested number of episodes is done.

Protocol (spec 5.1, with lram's recurrent inference instead of the paper's 50-step re-processing):

* the bookkeeping is :class:`lram.evaluation.driver.EpisodeDriver`'s (shared with the server):
  every episode starts from ``target_return`` (by default the highest return of the task in the training
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

from lram.evaluation.driver import EpisodeDriver
from lram.models.domain import DomainSpec
from lram.models.policy import RecurrentAgent


@dataclass
class EpisodeResult:
    """One evaluation episode."""

    episode: int  # index within the task's evaluation (its reset seed is seed + episode)
    total_return: float
    length: int
    success: bool | None  # the env's info["success"] at any step (None when the env does not report it)

    def to_dict(self) -> dict:
        return asdict(self)


def _observation(obs) -> torch.Tensor:
    """An env observation as the tensor the agent takes (uint8 images stay uint8, vectors become float32)."""
    arr = np.asarray(obs)
    return torch.from_numpy(np.ascontiguousarray(arr if arr.dtype == np.uint8 else arr.astype(np.float32)))


def evaluate_task(policy, make_env: Callable[[int], gym.Env], domain: DomainSpec, task: str, *,
                  episodes: int, target_return: float, num_envs: int = 1, seed: int = 0, max_steps: int | None = None,
                  progress: bool = False, desc: str = "eval", window: int | None = None) -> list[EpisodeResult]:
    """Run ``episodes`` episodes of one task of ``domain`` with ``num_envs`` environments made by
    ``make_env(index)``; returns the episodes in index order.  ``max_steps`` cuts episodes (None: the env's
    own limit).  A task outside the domain's data (held out) takes its action layout from the environment.
    ``window``: act on the last ``window`` timesteps only, re-processed every step (the paper's protocol;
    :class:`lram.evaluation.window.WindowAgent`) instead of one recurrent step over the whole history."""
    if episodes < 1:
        raise ValueError(f"episodes: expected >= 1, got {episodes}")
    if num_envs < 1:
        raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
    n = min(num_envs, episodes)
    envs = [make_env(i) for i in range(n)]
    try:
        spec = domain.task_for(task, envs[0].action_space)
        if window is None:
            agent = RecurrentAgent.for_task(policy, domain, spec, n)
        else:
            from lram.evaluation.window import WindowAgent

            agent = WindowAgent.for_task(policy, domain, spec, n, window=window)
        driver = EpisodeDriver(agent, target_return, in_context=domain.in_context,
                               return_condition=domain.return_condition)
        results: dict[int, EpisodeResult] = {}
        episode_of = list(range(n))  # the episode each env is playing (-1: done, idle)
        next_episode = n
        obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
        success: list[bool | None] = [None] * n
        with tqdm(total=episodes, desc=desc, disable=not progress, leave=False) as bar, torch.inference_mode():
            while any(e >= 0 for e in episode_of):
                actions = driver.act(torch.stack([_observation(o) for o in obs])).cpu().numpy()
                rewards = np.zeros(n, dtype=np.float64)
                active = np.array([e >= 0 for e in episode_of])
                ended = np.zeros(n, dtype=bool)
                for i, env in enumerate(envs):
                    if not active[i]:
                        continue
                    a = int(actions[i]) if domain.discrete else actions[i, : spec.action_dim].astype(np.float32)
                    obs[i], r, terminated, truncated, info = env.step(a)
                    rewards[i] = r
                    if "success" in info:
                        success[i] = bool(success[i]) or bool(info["success"])
                    ended[i] = terminated or truncated or (max_steps is not None and driver.steps[i] >= max_steps)
                driver.record(rewards, active)
                for i in np.nonzero(ended)[0]:
                    e = episode_of[i]
                    results[e] = EpisodeResult(e, float(driver.episode_return[i]), int(driver.steps[i]), success[i])
                    bar.update(1)
                    success[i] = None
                    if next_episode < episodes:
                        episode_of[i] = next_episode
                        obs[i] = envs[i].reset(seed=seed + next_episode)[0]
                        next_episode += 1
                    else:
                        episode_of[i] = -1
                if ended.any():
                    driver.start(ended)
    finally:
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
