"""DeepMind Control tasks with the paper's unified 204-d observation layout (spec 1.2, 4.1).

Every dm_control observation key has a fixed slot in a 204-d vector, so all DMC tasks share one layout: a
task writes each of its keys (flattened) at the start of the key's slot, the rest stays 0.  The table is
derived from the suite's ``BENCHMARKING`` tasks: each key's slot size is the largest flattened size of that
key over those tasks, slots in the order keys are first met (:func:`derive_layout` recomputes it; the test
checks it against the installed dm_control).  Actions are the suite's, all in [-1, 1] (<= 6 dims for the 16
paper tasks); episodes are 1000 steps (a time-limit truncation, never a terminal state).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

OBS_DIM = 204
EPISODE_STEPS = 1000
# key -> slot size, in slot order (sum 204)
OBS_KEY_DIMS = {
    "orientations": 14, "velocity": 27, "position": 8, "touch": 5, "target_position": 2, "dist_to_target": 1,
    "joint_angles": 21, "upright": 1, "target": 3, "head_height": 1, "extremities": 12, "torso_vertical": 3,
    "com_velocity": 3, "arm_pos": 16, "arm_vel": 8, "hand_pos": 4, "object_pos": 4, "object_vel": 3, "target_pos": 4,
    "orientation": 2, "to_target": 2, "joints": 14, "body_velocities": 45, "height": 1,
}  # fmt: skip
OBS_KEY_START = {}
_s = 0
for _k, _d in OBS_KEY_DIMS.items():
    OBS_KEY_START[_k] = _s
    _s += _d
assert _s == OBS_DIM
del _s, _k, _d

TRAIN_TASKS = ("finger-turn_easy", "fish-upright", "hopper-stand", "point_mass-easy", "walker-stand", "walker-run",
               "ball_in_cup-catch", "cartpole-swingup", "cheetah-run", "finger-spin", "reacher-easy")
HELDOUT_TASKS = ("cartpole-balance", "finger-turn_hard", "pendulum-swingup", "reacher-hard", "walker-walk")
TASK_SETS = {"dmc11": TRAIN_TASKS, "dmc5": HELDOUT_TASKS, "dmc16": TRAIN_TASKS + HELDOUT_TASKS}


def require_dm_control():
    """Import dm_control's suite (clear error when missing)."""
    try:
        from dm_control import suite
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("DMControl needs dm-control (pip install dm-control==1.0.28)") from e
    return suite


def split_task(task: str) -> tuple[str, str]:
    """``'walker-run'`` -> ``('walker', 'run')`` (domain and task names of the suite)."""
    domain, sep, name = task.partition("-")
    if not sep or not name:
        raise ValueError(f"task: expected '<domain>-<task>' such as 'walker-run', got {task!r}")
    return domain, name


def resolve_tasks(tasks) -> list[str]:
    """A task set name ('dmc11', 'dmc5', 'dmc16'), a comma-separated string or a list -> task names."""
    if isinstance(tasks, str):
        if tasks in TASK_SETS:
            return list(TASK_SETS[tasks])
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    out = list(tasks)
    if not out:
        raise ValueError("tasks: expected at least one task")
    for t in out:
        split_task(t)
    return out


def derive_layout(tasks=None) -> dict[str, int]:
    """Recompute the key -> slot size table from dm_control: max flattened size per key, first-met order."""
    suite = require_dm_control()
    pairs = [split_task(t) for t in tasks] if tasks is not None else list(suite.BENCHMARKING)
    dims: dict[str, int] = {}
    for domain, name in pairs:
        for k, spec in suite.load(domain, name).observation_spec().items():
            dims[k] = max(dims.get(k, 0), int(np.prod(spec.shape, dtype=np.int64)))
    return dims


def unified_obs(observation: dict, source: str = "observation") -> np.ndarray:
    """A dm_control observation dict -> float32 [204] in the unified layout (unknown / too large keys: ValueError)."""
    out = np.zeros(OBS_DIM, dtype=np.float32)
    for k, v in observation.items():
        if k not in OBS_KEY_DIMS:
            raise ValueError(f"{source}: key {k!r} has no slot in the unified DMC layout (known: {list(OBS_KEY_DIMS)})")
        flat = np.asarray(v, dtype=np.float32).ravel()
        if flat.size > OBS_KEY_DIMS[k]:
            raise ValueError(f"{source}: key {k!r} has {flat.size} values, its slot holds {OBS_KEY_DIMS[k]}")
        s = OBS_KEY_START[k]
        out[s:s + flat.size] = flat
    return out


class DMControlEnv(gym.Env):
    """A dm_control suite task as a gymnasium env with the unified 204-d observation and [-1, 1] actions."""

    metadata = {"render_modes": []}

    def __init__(self, task: str, max_steps: int = EPISODE_STEPS):
        self.task_name = task
        self.domain, self.name = split_task(task)
        self.max_steps = int(max_steps)
        suite = require_dm_control()
        try:
            self._env = suite.load(self.domain, self.name, task_kwargs={"random": 0})
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"task: unknown dm_control task {task!r} ({e})") from None
        spec = self._env.action_spec()
        if not (np.allclose(spec.minimum, -1) and np.allclose(spec.maximum, 1)):
            raise ValueError(f"{task}: actions are not in [-1, 1] ({spec.minimum}, {spec.maximum})")
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, dtype=np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), dtype=np.float32)
        self._t = 0

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # the task's own RandomState draws the initial state
            self._env.task._random = np.random.RandomState(int(seed))
        self._t = 0
        ts = self._env.reset()
        return unified_obs(ts.observation, self.task_name), {}

    def step(self, action):
        ts = self._env.step(np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0))
        self._t += 1
        terminated = bool(ts.last() and ts.discount == 0.0)
        truncated = bool(not terminated and (ts.last() or self._t >= self.max_steps))
        return unified_obs(ts.observation, self.task_name), float(ts.reward or 0.0), terminated, truncated, {}

    def close(self):
        self._env.close()
