"""Sessions of a served policy: each session is one environment with its own recurrent state.

A session is a batch-1 :class:`RecurrentAgent` (its state stepped in place by lram's CPU kernels), plus the
return-to-go bookkeeping of :func:`lram.evaluation.rollout.evaluate_task`: an episode starts from the
target return, every reward is subtracted, and enters the next step as r_{t-1}.  Why not batch sessions
together: on a CPU an xLSTM 16M session's state (8.4 MB) is a sizeable fraction of the weights (67 MB),
so gathering and scattering state rows for a batch costs about what batching saves; steps are therefore
run one at a time under one lock (each uses all cores) -- the right shape for a CPU server, where a GPU
server would batch.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch

from lram.evaluation.rollout import ActingSpec


class SessionError(ValueError):
    """A bad request: unknown session or domain, an observation of the wrong size, too many sessions."""

    def __init__(self, message: str, not_found: bool = False):
        super().__init__(message)
        self.not_found = not_found


@dataclass
class Session:
    agent: object
    spec: ActingSpec
    target_return: float
    return_to_go: float
    step: int = 0
    last_used: float = 0.0


class SessionManager:
    """Open, step and close sessions of one policy (thread-safe; idle sessions expire after ``ttl_s``)."""

    def __init__(self, policy, domains: list[dict], *, max_sessions: int = 256, ttl_s: float = 3600.0,
                 checkpoint: str = ""):
        self.policy = policy.eval()
        self.domains = {d["name"]: d for d in domains}
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.checkpoint = checkpoint
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()  # one step at a time: each step uses every core

    # ------------------------------------------------------------------ lifecycle
    def open(self, domain: str, *, num_actions: int = 0, action_dim: int = 0, target_return: float = 0.0,
             in_context: bool | None = None) -> tuple[str, Session]:
        if domain not in self.domains:
            raise SessionError(f"domain: {domain!r} is not served (the checkpoint has {', '.join(sorted(self.domains))})")
        entry = self.domains[domain]
        spec = ActingSpec.from_registry(entry)
        if num_actions:
            spec.num_actions = num_actions
        if action_dim:
            spec.action_dim = action_dim
        if in_context is not None:
            spec.in_context = in_context
        target = float(target_return) if target_return else max(entry.get("max_returns", {}).values(), default=0.0)
        with self._lock:
            self._expire()
            if len(self.sessions) >= self.max_sessions:
                raise SessionError(f"too many sessions: {len(self.sessions)} open (max_sessions={self.max_sessions})")
            agent = spec.agent(self.policy, 1)
            sid = uuid.uuid4().hex
            self.sessions[sid] = Session(agent, spec, target, target, last_used=time.monotonic())
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
            if episode_start:
                if s.step > 0:
                    s.agent.reset(keep_context=s.spec.in_context)
                s.return_to_go, s.step, reward = s.target_return, 0, 0.0
            else:
                s.return_to_go -= float(reward)
            if return_to_go is not None:
                s.return_to_go = float(return_to_go)
            with torch.inference_mode():
                action = s.agent.act(obs, torch.tensor([reward], dtype=torch.float32),
                                     torch.tensor([s.return_to_go if s.spec.return_condition else 0.0], dtype=torch.float32))
            s.step += 1
            s.last_used = time.monotonic()
            a = action[0].numpy()
            if not s.spec.discrete:
                a = a[: s.spec.action_dim]
            return a, s.return_to_go, s.step
