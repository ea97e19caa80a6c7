"""Meta-World (Farama ``metaworld`` 3.x, v3 tasks) as a gymnasium env with the paper's settings.

One env is one MT1 task with the **goal visible** (39-d float32 observation whose last 3 entries are the
goal position; the scripted experts need it: with goal-hidden ML envs they score 0 %), 4-d actions in
[-1, 1], episodes truncated after ``max_steps`` = 200 steps (spec 4.1; Meta-World itself never terminates),
``info["success"]`` (bool) at every step.

Goals and initial object positions ("random_init_all", as in Continual World / L2M, whose data the paper
uses): every reset draws a fresh random vector uniformly from the task's ``_random_reset_space`` (the
same distribution ``metaworld.MT1`` draws its 50 train goals from), so goals are not limited to MT1's 50.
The draw comes from the env's RNG seeded with the **episode seed**: ``reset(seed=s)`` always gives the same
goal and initial state for the same ``s`` (replayable); ``reset()`` without a seed draws the next episode
seed from a generator seeded at construction (or by the last explicit seed) and reports it in
``info["seed"]``.

Task lists (v3 names): :data:`MT50_TASKS`, the ML45 split :data:`ML45_TRAIN_TASKS` (45) and
:data:`ML45_TEST_TASKS` (the paper's 5 held-out tasks).
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any

import numpy as np

try:  # comes with the metaworld extra; without it only the task lists and name checks work
    import gymnasium as gym
except ImportError:  # pragma: no cover - exercised only without the extra
    gym = None

INSTALL_HINT = "pip install 'lram[metaworld]'  (metaworld==3.1.1 and packaging)"

# The 50 Meta-World v3 tasks, in metaworld's MT50 order.
MT50_TASKS: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3",
    "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3",
    "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3",
    "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3", "handle-press-v3",
    "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3", "pick-place-wall-v3", "pick-out-of-hole-v3",
    "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3", "plate-slide-back-v3", "plate-slide-back-side-v3",
    "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3", "stick-push-v3", "stick-pull-v3",
    "push-v3", "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3",
    "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3",
)  # fmt: skip
# The paper's (and ML45's) 5 held-out tasks.
ML45_TEST_TASKS: tuple[str, ...] = ("bin-picking-v3", "box-close-v3", "door-lock-v3", "door-unlock-v3", "hand-insert-v3")
# The 45 training tasks: MT50 minus the held-out 5.
ML45_TRAIN_TASKS: tuple[str, ...] = tuple(t for t in MT50_TASKS if t not in ML45_TEST_TASKS)
# Meta-World's MT10 benchmark (the ten tasks of its multi-task suite; v3 names).
MT10_TASKS: tuple[str, ...] = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
                               "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")
TASK_SETS: dict[str, tuple[str, ...]] = {"mt50": MT50_TASKS, "mt10": MT10_TASKS, "ml45-train": ML45_TRAIN_TASKS,
                                         "ml45-test": ML45_TEST_TASKS}

OBS_DIM = 39
ACT_DIM = 4
EPISODE_STEPS = 200


def require_metaworld():
    """Import and return the ``metaworld`` module, or raise an ImportError that names the extra to install."""
    try:
        import metaworld  # noqa: F401  (also fails when its undeclared dependency `packaging` is missing)
        import metaworld.policies
    except ImportError as e:
        raise ImportError(f"Meta-World support needs the optional 'metaworld' extra: {INSTALL_HINT} ({e})") from e
    return metaworld


def check_task_name(name: str) -> str:
    """Return ``name`` if it is a Meta-World v3 task, else raise ValueError listing the valid names."""
    if name in MT50_TASKS:
        return name
    close = difflib.get_close_matches(str(name), MT50_TASKS, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown Meta-World task {name!r} (metaworld 3.x has v3 tasks only).{hint} "
        f"Valid task names: {', '.join(MT50_TASKS)}; task sets: {', '.join(TASK_SETS)}"
    )


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Task names from a set name ('mt50', 'mt10', 'ml45-train', 'ml45-test'), a comma-separated list, or a list.

    Names are checked (ValueError listing the valid ones), duplicates are dropped, order is kept.
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        for name in TASK_SETS.get(item.lower(), (item,)):
            if check_task_name(name) not in out:
                out.append(name)
    if not out:
        raise ValueError(f"no Meta-World tasks given (expected a task set {list(TASK_SETS)} or task names)")
    return out


def expert_policy(task_name: str):
    """The scripted expert of a task (``metaworld.policies.ENV_POLICY_MAP``); call ``.get_action(obs)``."""
    check_task_name(task_name)
    require_metaworld()
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task_name]()


def expert_action(policy, obs: np.ndarray) -> np.ndarray:
    """The expert's action for ``obs`` clipped to [-1, 1] as float32 (the experts may exceed the bounds)."""
    with warnings.catch_warnings():
        # the experts' proportional controllers warn "Constant(s) may be too high" and rely on clipping
        warnings.simplefilter("ignore", UserWarning)
        a = policy.get_action(obs)
    return np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)


class MetaWorldEnv(gym.Env if gym is not None else object):
    """One goal-visible Meta-World v3 task with per-episode random goals and a ``max_steps`` time limit."""

    metadata = {"render_modes": []}

    def __init__(self, task_name: str, seed: int | None = None, max_steps: int = EPISODE_STEPS):
        check_task_name(task_name)
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps: expected a positive int, got {max_steps!r}")
        require_metaworld()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.task_name = task_name
        self.max_steps = max_steps
        env = ALL_V3_ENVIRONMENTS[task_name]()
        # What metaworld's MT1 / goal-observable constructors do, minus the fixed goal:
        env._partially_observable = False  # goal position in obs[-3:]
        del env.sawyer_observation_space  # cached property: recompute it with the goal bounds
        env._set_task_called = True
        env._freeze_rand_vec = False  # a new goal / initial positions at every reset ...
        env.seeded_rand_vec = True  # ... drawn from env.np_random (seeded per episode), not global np.random
        env.max_path_length = max_steps  # its own step() raises past this length
        self._env = env
        space = env.sawyer_observation_space
        self.observation_space = gym.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), shape=(OBS_DIM,), dtype=np.float32
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACT_DIM,), dtype=np.float32)
        self._seeds = np.random.default_rng(seed)
        self._t = 0
        self._needs_reset = True
        self.episode_seed: int | None = None

    @property
    def unwrapped_metaworld(self):
        """The underlying metaworld ``SawyerXYZEnv``."""
        return self._env

    @property
    def goal(self) -> np.ndarray:
        return np.asarray(self._env._target_pos, dtype=np.float32).copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
            episode_seed = int(seed)
            self._seeds = np.random.default_rng(episode_seed)  # later seedless resets continue from here
        else:
            episode_seed = int(self._seeds.integers(0, 2**63 - 1))
        super().reset(seed=episode_seed)  # gymnasium's own np_random, for conventions' sake
        self._env.seed(episode_seed)  # env.np_random -> this episode's goal and initial positions
        obs, _ = self._env.reset()
        self._t = 0
        self._needs_reset = False
        self.episode_seed = episode_seed
        return obs.astype(np.float32), {"seed": episode_seed, "task": self.task_name, "goal": self.goal}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError(f"{self.task_name}: call reset() before step() (the episode is over or never started)")
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (ACT_DIM,):
            raise ValueError(f"{self.task_name}: action: expected shape [{ACT_DIM}], got {list(a.shape)}")
        if not np.isfinite(a).all():
            raise ValueError(f"{self.task_name}: action contains NaN/inf: {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)
        obs, reward, terminated, _, info = self._env.step(a)
        self._t += 1
        truncated = self._t >= self.max_steps
        self._needs_reset = bool(terminated or truncated)
        info = dict(info)
        info["success"] = bool(info.get("success", 0.0))
        return obs.astype(np.float32), float(reward), bool(terminated), truncated, info

    def close(self):
        self._env.close()


def make_metaworld_env(task_name: str, seed: int | None = None, max_steps: int = EPISODE_STEPS) -> MetaWorldEnv:
    """A goal-visible MT1 env for one v3 task (39-d float32 obs, 4-d actions in [-1, 1], 200-step episodes)."""
    return MetaWorldEnv(task_name, seed=seed, max_steps=max_steps)
