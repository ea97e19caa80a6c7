"""What a policy knows about the domains it was trained on: one typed description, saved beside the weights.

A :class:`DomainSpec` is built once from the training data (:meth:`DomainSpec.from_data`), written to the
checkpoint's ``policy.json`` and read back by everything that acts: evaluation, the server, the ONNX
export and rollouts during training.  Per task it records the action layout (continuous dims or valid
discrete actions), the observation shape and the best return in the data (the default target return), so a
domain may mix tasks of different action sizes (DMControl: 1- to 6-d; Composuite and MimicGen likewise).

``from_dict`` also reads the untyped registry entries that checkpoints of format 1 carried (one
``action_dim`` per domain, ``tasks`` as names, ``max_returns`` by task).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TaskSpec:
    """One task of a domain: its action layout, observation shape and the best return in its data."""

    name: str
    action_dim: int = 1  # continuous action dimensions (1 for discrete tasks)
    num_actions: int | None = None  # valid discrete actions (None: continuous)
    obs_shape: tuple[int, ...] = ()
    best_return: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "action_dim": self.action_dim, "num_actions": self.num_actions,
                "obs_shape": list(self.obs_shape), "best_return": self.best_return}

    @classmethod
    def from_dict(cls, d: Mapping) -> TaskSpec:
        return cls(name=str(d["name"]), action_dim=int(d.get("action_dim", 1)),
                   num_actions=None if d.get("num_actions") is None else int(d["num_actions"]),
                   obs_shape=tuple(int(v) for v in d.get("obs_shape", ())),
                   best_return=float(d.get("best_return", 0.0)))


@dataclass
class DomainSpec:
    """A training domain as a policy acts in it (see the module docstring)."""

    name: str
    discrete: bool
    reward_scale: float = 1.0
    in_context: bool = False  # keep the recurrent state across episodes (learning histories)
    return_condition: bool = True  # False: trained with a return-to-go of 0, so it acts with 0
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    state_mean: list[float] | None = None  # the domain's state standardisation (None: raw observations)
    state_std: list[float] | None = None

    def __post_init__(self):
        if (self.state_mean is None) != (self.state_std is None):
            raise ValueError(f"domain {self.name!r}: state_mean and state_std must both be given or both be None")

    # ------------------------------------------------------------------ queries
    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def num_actions(self) -> int | None:
        """Valid discrete actions of the domain (the most over its tasks; None for continuous domains)."""
        counts = [t.num_actions for t in self.tasks.values() if t.num_actions is not None]
        return max(counts) if counts else None

    def default_target(self, task: str) -> float:
        """The return an episode of ``task`` is conditioned on by default: the task's best return in the data,
        or for a task outside the data (held out) the best return of the domain."""
        if task in self.tasks:
            return self.tasks[task].best_return
        return max((t.best_return for t in self.tasks.values()), default=0.0)

    def task_for(self, task: str, action_space=None) -> TaskSpec:
        """The spec of ``task``, checked against the environment's ``action_space`` (a gymnasium space) when
        given; a task outside the training data (held out) takes its action layout from that space."""
        if task in self.tasks:
            spec = self.tasks[task]
        elif action_space is None:
            raise ValueError(f"task: {task!r} is not a task of domain {self.name!r} "
                             f"(it has {', '.join(self.tasks)}) and no environment gives its action layout")
        else:
            n, shape = getattr(action_space, "n", None), getattr(action_space, "shape", None)
            dims = int(shape[0]) if not self.discrete and shape is not None and len(shape) == 1 else 1
            spec = TaskSpec(task, dims, int(n) if self.discrete and n is not None else None,
                            best_return=self.default_target(task))
        if action_space is not None:
            self.check_action_space(spec, action_space)
        return spec

    def check_action_space(self, task: TaskSpec, space) -> None:
        """ValueError when an environment's actions are not the task's (what the policy was trained to emit)."""
        where = f"{self.name}/{task.name}"
        if self.discrete:
            n = getattr(space, "n", None)
            if n is None:
                raise ValueError(f"{where}: the domain has discrete actions but the environment's action space is {space}")
            if task.num_actions is not None and int(n) != int(task.num_actions):
                raise ValueError(f"{where}: the task has {task.num_actions} discrete actions, the environment {int(n)}")
        elif getattr(space, "shape", None) is None or len(space.shape) != 1 or space.shape[0] != task.action_dim:
            raise ValueError(f"{where}: the task's data has {task.action_dim}-d actions but the environment takes {space}")

    # ------------------------------------------------------------------ build / persist
    @classmethod
    def from_data(cls, data) -> DomainSpec:
        """The spec of a training domain (a :class:`lram.data.sampler.DomainData`)."""
        tasks = {}
        for t in data.tasks:
            discrete = bool(t.discrete)
            tasks[t.task] = TaskSpec(
                name=t.task, action_dim=1 if discrete else int(t.action_dim),
                num_actions=(None if data.num_actions is None else int(data.num_actions)) if discrete else None,
                obs_shape=tuple(int(v) for v in t.obs_shape),
                best_return=float(np.max(t.returns)) if len(t.returns) else 0.0)
        stats = {}
        if data.state_mean is not None:
            stats = {"state_mean": [float(v) for v in data.state_mean], "state_std": [float(v) for v in data.state_std]}
        return cls(name=data.name, discrete=bool(data.discrete), reward_scale=float(data.reward_scale),
                   in_context=bool(data.in_context), return_condition=bool(data.return_condition), tasks=tasks,
                   **stats)

    def to_dict(self) -> dict:
        d = {"name": self.name, "discrete": self.discrete, "reward_scale": self.reward_scale,
             "in_context": self.in_context, "return_condition": self.return_condition,
             "tasks": [t.to_dict() for t in self.tasks.values()]}
        if self.state_mean is not None:
            d.update(state_mean=list(self.state_mean), state_std=list(self.state_std))
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> DomainSpec:
        """A spec from ``to_dict``'s output or from a format-1 registry entry."""
        try:
            name = str(d["name"])
            discrete = bool(d["discrete"])
            raw_tasks = d.get("tasks", [])
            if raw_tasks and not isinstance(raw_tasks[0], Mapping):  # format 1: names + per-domain layout
                best = d.get("max_returns", {})
                n = d.get("num_actions")
                tasks = [TaskSpec(str(t), 1 if discrete else int(d.get("action_dim", 1)),
                                  (None if n is None else int(n)) if discrete else None,
                                  tuple(int(v) for v in d.get("obs_shape", ())), float(best.get(t, 0.0)))
                         for t in raw_tasks]
            else:
                tasks = [TaskSpec.from_dict(t) for t in raw_tasks]
            return cls(name=name, discrete=discrete, reward_scale=float(d.get("reward_scale", 1.0)),
                       in_context=bool(d.get("in_context", False)), return_condition=bool(d.get("return_condition", True)),
                       tasks={t.name: t for t in tasks}, state_mean=d.get("state_mean"), state_std=d.get("state_std"))
        except (KeyError, TypeError, ValueError) as e:
            label = d.get("name", "?") if isinstance(d, Mapping) else "?"
            raise ValueError(f"domain {label!r}: malformed description ({type(e).__name__}: {e})") from None


def domain_specs(entries: Sequence[Mapping | DomainSpec]) -> dict[str, DomainSpec]:
    """Specs by name from saved entries (or specs)."""
    out = {}
    for e in entries:
        spec = e if isinstance(e, DomainSpec) else DomainSpec.from_dict(e)
        out[spec.name] = spec
    return out
