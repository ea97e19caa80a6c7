"""Sessions of a served policy: each session is one environment with its own recurrent state.

A session is a batch-1 :class:`RecurrentAgent` (its state stepped in place by lram's CPU kernels) driven by
the same :class:`lram.evaluation.driver.EpisodeDriver` as evaluation: an episode starts from the target
return, every reward is subtracted, and enters the next step as r_{t-1}.  Why not batch sessions
together: on a CPU an xLSTM 16M session's state (8.4 MB) is a sizeable fraction of the weights (67 MB),
so gathering and scattering state rows for a batch costs about what batching saves; steps are therefore
run one at a time under one lock (each uses all cores) -- the right shape for a CPU server, where a GPU
server would batch.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch

from lram.evaluation.driver import EpisodeDriver
from lram.models.domain import DomainSpec, TaskSpec, domain_specs
from lram.models.policy import RecurrentAgent


class SessionError(ValueError):
    """A bad request: unknown session or domain, an observation of the wrong size, too many sessions."""

    def __init__(self, message: str, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


@dataclass
class Session:
    driver: EpisodeDriver
    domain: DomainSpec
    task: TaskSpec
    last_used: float = 0.0

    @property
    def target_return(self) -> float:
        return float(self.driver.target[0])


class SessionManager:
    """Open, step and close sessions of one policy (thread-safe; idle sessions expire after ``ttl_s``)."""

    def __init__(self, policy, domains=None, *, max_sessions: int = 256, ttl_s: float = 3600.0,
                 checkpoint: str = ""):
        self.policy = policy.eval()
        self.domains = domain_specs(getattr(policy, "domains", {}).values() if domains is None else domains)
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.checkpoint = checkpoint
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()  # one step at a time: each step uses every core

    # ------------------------------------------------------------------ lifecycle
    def session_task(self, domain: DomainSpec, task: str = "", num_actions: int = 0, action_dim: int = 0) -> TaskSpec:
        """The task a session acts in: a named task of the domain, or the domain's one action layout, with the
        request's action layout overrides (checked against the model's limits)."""
        cfg = self.policy.config
        if task:
            if task not in domain.tasks:
                raise SessionError(f"task: {task!r} is not a task of domain {domain.name!r} "
                                   f"(it has {', '.join(domain.tasks)})")
            spec = domain.tasks[task]
        else:
            layouts = {(t.action_dim, t.num_actions) for t in domain.tasks.values()}
            if len(layouts) > 1 and not (num_actions if domain.discrete else action_dim):
                kind = "num_actions" if domain.discrete else "action_dim"
                raise SessionError(f"task: domain {domain.name!r} mixes action layouts over its tasks; name the task "
                                   f"or give {kind}")
            spec = next(iter(domain.tasks.values()), TaskSpec(domain.name, 1, domain.num_actions))
            spec = dataclasses.replace(spec, best_return=domain.default_target(""))
        if domain.discrete and num_actions:
            if not 1 <= num_actions <= cfg.num_discrete:
                raise SessionError(f"num_actions: expected 1..{cfg.num_discrete}, got {num_actions}")
            spec = dataclasses.replace(spec, num_actions=num_actions)
        if not domain.discrete and action_dim:
            if not 1 <= action_dim <= cfg.max_act_dim:
                raise SessionError(f"action_dim: expected 1..{cfg.max_act_dim}, got {action_dim}")
            spec = dataclasses.replace(spec, action_dim=action_dim)
        return spec

    def open(self, domain: str, *, task: str = "", num_actions: int = 0, action_dim: int = 0,
             target_return: float = 0.0, in_context: bool | None = None) -> tuple[str, Session]:
        if domain not in self.domains:
            raise SessionError(f"domain: {domain!r} is not served (the checkpoint has {', '.join(sorted(self.domains))})")
        spec = self.domains[domain]
        task_spec = self.session_task(spec, task, num_actions, action_dim)
        target = float(target_return) if target_return else task_spec.best_return
        with self._lock:
            self._expire()
            if len(self.sessions) >= self.max_sessions:
                raise SessionError(f"too many sessions: {len(self.sessions)} open (max_sessions={self.max_sessions})")
            agent = RecurrentAgent.for_task(self.policy, spec, task_spec, 1)
            driver = EpisodeDriver(agent, target, in_context=spec.in_context if in_context is None else in_context,
                                   return_condition=spec.return_condition)
            sid = uuid.uuid4().hex
            self.sessions[sid] = Session(driver, spec, task_spec, last_used=time.monotonic())
        return sid, self.sessions[sid]

    def close(self, session_id: str) -> None:
        with self._lock:
            if self.sessions.pop(session_id, None) is None:
                raise SessionError(f"session_id: no open session {session_id!r}", not_found=True)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self.sessions.items() if now - v.last_used > self.ttl_s]:
            del self.sessions[sid]

    # ------------------------------------------------------------------ acting
    def observation(self, values, image: bytes) -> torch.Tensor:
        """A request's observation as the agent's [1, ...] tensor (ValueError naming the field)."""
        cfg = self.policy.config
        if image:
            want = int(np.prod(cfg.image_shape))
            if len(image) != want:
                raise SessionError(f"image: expected {want} bytes (uint8 {list(cfg.image_shape)}), got {len(image)}")
            return torch.frombuffer(bytearray(image), dtype=torch.uint8).reshape(1, *cfg.image_shape)
        obs = np.asarray(values, dtype=np.float32)
        if obs.size == 0 or obs.size > cfg.state_dim or not np.all(np.isfinite(obs)):
            raise SessionError(f"observation: expected 1..{cfg.state_dim} finite values, got {obs.size}"
                               + ("" if np.all(np.isfinite(obs)) else " with NaN/inf"))
        return torch.from_numpy(obs).reshape(1, -1)

    def act(self, session_id: str, obs: torch.Tensor, reward: float, episode_start: bool,
            return_to_go: float | None = None) -> tuple[np.ndarray, float, int]:
        """One environment step of a session: (action, the return-to-go used, steps in this episode)."""
        with self._lock:
            s = self.sessions.get(session_id)
            if s is None:
                raise SessionError(f"session_id: no open session {session_id!r} (closed or expired)", not_found=True)
            driver = s.driver
            if episode_start:
                driver.start()
            else:
                driver.record([reward])
            if return_to_go is not None:
                driver.set_return_to_go(0, return_to_go)
            with torch.inference_mode():
                action = driver.act(obs)
            s.last_used = time.monotonic()
            a = action[0].numpy()
            if not s.domain.discrete:
                a = a[: s.task.action_dim]
            return a, float(driver.return_to_go[0]), int(driver.steps[0])
