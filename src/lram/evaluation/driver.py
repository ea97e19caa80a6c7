"""The episode driver: the bookkeeping around an agent that turns environment steps into policy inputs.

Used by evaluation (many environments of one task) and by the server (one row per session), so that both
act exactly as training saw the data:

* an episode starts from its target return; after each step the return-to-go drops by the reward received
  (a domain trained without return-to-go acts with 0);
* the reward of a step enters the next step as r_{t-1}; it is 0 at an episode start;
* a new episode restarts its row's recurrent state, except in in-context domains (Dark-Room learning
  histories), where the state carries over and only r_{t-1} / a_{t-1} are dropped.
"""

from __future__ import annotations

import numpy as np
import torch


class EpisodeDriver:
    """Plays episodes in the rows of a :class:`lram.models.policy.RecurrentAgent`.

    Per step: ``actions = driver.act(obs)``, then ``driver.record(rewards)`` with what the environments
    returned; rows whose episode ended call ``driver.start(mask)`` before their next ``act``."""

    def __init__(self, agent, target_return, *, in_context: bool = False, return_condition: bool = True):
        self.agent = agent
        n = agent.num_envs
        self.in_context = in_context
        self.return_condition = return_condition
        self.target = np.broadcast_to(np.asarray(target_return, dtype=np.float64), (n,)).copy()
        self.return_to_go = self.target.copy()
        self.prev_reward = np.zeros(n, dtype=np.float64)
        self.episode_return = np.zeros(n, dtype=np.float64)
        self.steps = np.zeros(n, dtype=np.int64)  # actions taken in each row's current episode

    @property
    def num_rows(self) -> int:
        return len(self.target)

    def start(self, mask=None, target_return=None) -> None:
        """Begin new episodes in the rows where ``mask`` [n] is True (all if None), optionally with new targets."""
        mask = np.ones(self.num_rows, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if target_return is not None:
            self.target[mask] = np.broadcast_to(np.asarray(target_return, dtype=np.float64), (self.num_rows,))[mask]
        stepped = mask & (self.steps > 0)  # a row that has not acted since its last start needs no reset
        if stepped.any():
            self.agent.reset(torch.from_numpy(stepped), keep_context=self.in_context)
        self.return_to_go[mask] = self.target[mask]
        self.prev_reward[mask] = 0.0
        self.episode_return[mask] = 0.0
        self.steps[mask] = 0

    def act(self, obs) -> torch.Tensor:
        """Actions of every row for observations ``obs`` [n, ...] (rows, as the agent returns them)."""
        rtg = self.return_to_go if self.return_condition else np.zeros_like(self.return_to_go)
        actions = self.agent.act(obs, torch.from_numpy(self.prev_reward).float(), torch.from_numpy(rtg).float())
        self.steps += 1
        return actions

    def record(self, rewards, rows=None) -> None:
        """The rewards the environments returned for the last actions (``rows``: a mask of the rows that
        stepped; default all)."""
        rows = np.ones(self.num_rows, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
        r = np.broadcast_to(np.asarray(rewards, dtype=np.float64), (self.num_rows,))
        self.return_to_go[rows] -= r[rows]
        self.prev_reward[rows] = r[rows]
        self.episode_return[rows] += r[rows]

    def set_return_to_go(self, row: int, value: float) -> None:
        """Override a row's return-to-go (a client that keeps its own target)."""
        self.return_to_go[row] = float(value)
