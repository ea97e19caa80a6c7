"""Dark-Room: the in-context RL grid world of Algorithm Distillation, in the 10x10 form LRAM / RA-DT use.

The agent lives in a ``size x size`` room that it cannot see: it observes only its own position and must
find a hidden goal from the reward.  Conventions (those of LRAM's MiniHack ``Room-Dark`` environments):

* positions are ``(x, y)`` with ``x`` the column (left to right) and ``y`` the row (top to bottom); the
  agent starts in the top-left corner ``(0, 0)``;
* 5 actions, in MiniHack's order: ``0`` up (y-1), ``1`` right (x+1), ``2`` down (y+1), ``3`` left (x-1),
  ``4`` no-op; a move into a wall leaves the agent where it is;
* the reward is judged on the position *after* the action (as MiniHack's location events are);
* ``variant="dense"`` (RA-DT's data, the default): +1 on every step that ends on the goal, the episode never
  terminates early and is truncated after ``max_steps`` (100) steps;
* ``variant="sparse"``: +1 the first time the agent reaches the goal, and the episode terminates there
  (like MiniHack's ``Room-Dark-10x10`` with its goal staircase).

Note: LRAM's MiniHack wrapper observes ``tty_cursor``, i.e. ``(row, col) = (y, x)`` - the reverse of the
``(x, y)`` order used here and in the goal names; swap the two columns when comparing with RA-DT files.

:class:`DarkRoom` is the ``gymnasium.Env`` (importing this module registers it as ``lram/DarkRoom-v0``,
so ``gym.make("lram/DarkRoom-v0", goal=(gx, gy))`` works); :class:`DarkRoomBatch`
steps many rooms (one goal each) at once with numpy and has the same dynamics; :func:`train_test_goals`
is the fixed 80 / 20 goal split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "lram/DarkRoom-v0"
VARIANTS = ("dense", "sparse")
ACTION_NAMES = ("up", "right", "down", "left", "noop")
# (dx, dy) of each action; y grows downwards, so "up" is y - 1
MOVES = np.array([[0, -1], [1, 0], [0, 1], [-1, 0], [0, 0]], dtype=np.int64)
NUM_ACTIONS = len(MOVES)


def check_config(size, max_steps, variant) -> None:
    """Raise ValueError naming the argument for a bad room size, episode length or reward variant."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps: expected a positive int, got {max_steps!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")


def check_cell(name: str, cell, size: int) -> tuple[int, int]:
    """``cell`` as an ``(x, y)`` tuple of ints inside the room, else ValueError naming ``name``."""
    try:
        x, y = (int(v) for v in cell)
        ok = all(float(v) == int(v) for v in cell)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (0 <= x < size and 0 <= y < size):
        raise ValueError(f"{name}: expected an (x, y) cell with integer coordinates in [0, {size - 1}], got {cell!r}")
    return x, y


def manhattan(a: Sequence[int], b: Sequence[int]) -> int:
    return abs(int(a[0]) - int(b[0])) + abs(int(a[1]) - int(b[1]))


def optimal_return(goal, start=(0, 0), max_steps: int = 100, variant: str = "dense") -> float:
    """Best achievable episode return for a goal.

    dense: a shortest path reaches the goal at step ``d`` (its Manhattan distance) and earns +1 there and on
    each of the remaining ``max_steps - d`` steps by staying (no-op): ``max_steps - d + 1``.  When the goal is
    the start cell (d = 0) every step can end on it: ``max_steps``.  sparse: 1 if the goal is reachable.
    """
    check_config(1, max_steps, variant)
    d = manhattan(goal, start)
    if variant == "sparse":
        return 1.0 if max(d, 1) <= max_steps else 0.0
    if d == 0:
        return float(max_steps)
    return float(max(max_steps - d + 1, 0))


def random_policy_return(goal, size: int = 10, start=(0, 0), max_steps: int = 100, variant: str = "dense") -> float:
    """Exact expected return of the uniformly random policy (propagates the position distribution)."""
    check_config(size, max_steps, variant)
    gx, gy = check_cell("goal", goal, size)
    sx, sy = check_cell("start", start, size)
    ys, xs = np.divmod(np.arange(size * size), size)  # every cell, row-major (p[y, x])
    targets = [np.clip(np.stack([xs, ys], 1) + m, 0, size - 1) for m in MOVES]  # where each action leads
    p = np.zeros((size, size))
    p[sy, sx] = 1.0
    total = 0.0
    for _ in range(max_steps):
        q = np.zeros_like(p)
        mass = p[ys, xs] / NUM_ACTIONS
        for nxt in targets:
            np.add.at(q, (nxt[:, 1], nxt[:, 0]), mass)
        p = q
        total += p[gy, gx]
        if variant == "sparse":
            p[gy, gx] = 0.0  # the episode ended there
    return float(total)


def train_test_goals(size: int = 10, n_train: int = 80, n_test: int = 20, seed: int = 43):
    """The fixed goal split: ``(train, test)`` lists of ``(gx, gy)``.

    All cells ``(x, y)`` are listed x-major (``[(x, y) for x in range(size) for y in range(size)]``),
    permuted with ``np.random.RandomState(seed)`` and cut into the first ``n_train`` (train) and the next
    ``n_test`` (held out).  With the defaults this reproduces the goal lists of LRAM's Dark-Room configs
    exactly (``make_train_test_pos`` in LRAM's ``src/envs/minihack_utils.py`` draws goals with seed 43; its
    seed 42 draws start cells, unused here because every episode starts at (0, 0)).  Note that the train
    split contains the start cell (0, 0) itself.
    """
    check_config(size, 1, "dense")
    if n_train < 0 or n_test < 0 or n_train + n_test > size * size:
        raise ValueError(f"n_train + n_test: expected at most {size * size} goals (all cells), got {n_train} + {n_test}")
    cells = np.array([(x, y) for x in range(size) for y in range(size)], dtype=np.int64)
    perm = np.random.RandomState(seed).permutation(cells)
    as_list = [(int(x), int(y)) for x, y in perm]
    return as_list[:n_train], as_list[n_train:n_train + n_test]


def goal_split(name: str, size: int = 10) -> list[tuple[int, int]]:
    """Goals by split name: 'train' (80), 'test' (20 held out) or 'all' (train then test).

    As in LRAM, 100 goal cells (all of them in the 10x10 room) are split 80 / 20 for any room size.
    """
    n = min(100, size * size)
    train, test = train_test_goals(size=size, n_train=int(0.8 * n), n_test=n - int(0.8 * n))
    if name == "train":
        return train
    if name == "test":
        return test
    if name == "all":
        return train + test
    raise ValueError(f"goals: expected one of ['train', 'test', 'all'], got {name!r}")


class DarkRoom(gym.Env):
    """One dark room with a hidden goal; observation ``(x, y)`` float32, 5 discrete actions.

    ``goal=None`` draws a new goal uniformly over all cells at every reset (from the env's seeded RNG);
    ``reset(options={"goal": (gx, gy)})`` sets the goal for that episode and the following ones.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, size: int = 10, goal: Sequence[int] | None = None, max_steps: int = 100, variant: str = "dense",
                 start: Sequence[int] = (0, 0), render_mode: str | None = None):
        check_config(size, max_steps, variant)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode: expected None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.size, self.max_steps, self.variant, self.render_mode = int(size), int(max_steps), variant, render_mode
        self.start = check_cell("start", start, self.size)
        self._fixed_goal = None if goal is None else check_cell("goal", goal, self.size)
        self.goal = self._fixed_goal
        self.observation_space = spaces.Box(low=0.0, high=float(self.size - 1), shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(NUM_ACTIONS)
        self._pos = self.start
        self._t = 0
        self._finished = True

    def _obs(self) -> np.ndarray:
        return np.array(self._pos, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and options.get("goal") is not None:
            self._fixed_goal = check_cell("options['goal']", options["goal"], self.size)
        if self._fixed_goal is None:
            self.goal = (int(self.np_random.integers(self.size)), int(self.np_random.integers(self.size)))
        else:
            self.goal = self._fixed_goal
        self._pos, self._t, self._finished = self.start, 0, False
        return self._obs(), {"goal": self.goal}

    def step(self, action):
        if self._finished:
            raise RuntimeError("DarkRoom.step: the episode has ended (terminated or truncated); call reset() first")
        if not self.action_space.contains(action):
            try:
                ok = int(action) == action and 0 <= int(action) < NUM_ACTIONS
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"action: expected an int in [0, {NUM_ACTIONS - 1}], got {action!r}")
        dx, dy = MOVES[int(action)]
        x = min(max(self._pos[0] + int(dx), 0), self.size - 1)
        y = min(max(self._pos[1] + int(dy), 0), self.size - 1)
        self._pos = (x, y)
        self._t += 1
        on_goal = self._pos == self.goal
        reward = 1.0 if on_goal else 0.0
        terminated = bool(on_goal and self.variant == "sparse")
        truncated = bool(not terminated and self._t >= self.max_steps)
        self._finished = terminated or truncated
        return self._obs(), reward, terminated, truncated, {"goal": self.goal}

    def render(self):
        if self.render_mode != "ansi":
            return None
        rows = []
        for y in range(self.size):
            row = ""
            for x in range(self.size):
                row += "A" if (x, y) == self._pos else ("G" if (x, y) == self.goal else ".")
            rows.append(row)
        return "\n".join(rows)


class DarkRoomBatch:
    """``N`` dark rooms stepped together with numpy, one goal each; same dynamics as :class:`DarkRoom`.

    ``step(actions)`` returns ``(obs [N, 2] float32, rewards [N] float32, terminated [N], truncated [N])``.
    A room that has finished (terminated or truncated) is frozen until :meth:`reset`: its action is ignored,
    its reward is 0 and its flags are False (they were reported on its finishing step); ``done`` says
    which rooms have finished.
    """

    def __init__(self, goals: Iterable[Sequence[int]], size: int = 10, max_steps: int = 100, variant: str = "dense",
                 start: Sequence[int] = (0, 0)):
        check_config(size, max_steps, variant)
        self.size, self.max_steps, self.variant = int(size), int(max_steps), variant
        self.start = np.array(check_cell("start", start, self.size), dtype=np.int64)
        goals = [check_cell(f"goals[{i}]", g, self.size) for i, g in enumerate(goals)]
        if not goals:
            raise ValueError("goals: expected at least one (x, y) goal, got none")
        self.goals = np.array(goals, dtype=np.int64)
        self.num_envs = len(goals)
        self.pos = np.repeat(self.start[None], self.num_envs, axis=0)
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        self.done = np.ones(self.num_envs, dtype=bool)

    def reset(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Reset all rooms, or those where ``mask`` is True; returns the observations of all rooms."""
        m = np.ones(self.num_envs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if m.shape != (self.num_envs,):
            raise ValueError(f"mask: expected shape [{self.num_envs}], got {list(m.shape)}")
        self.pos[m] = self.start
        self.t[m] = 0
        self.done[m] = False
        return self.pos.astype(np.float32)

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu":
            raise ValueError(f"actions: expected an int array of shape [{self.num_envs}], got {a.dtype} {list(a.shape)}")
        if a.size and (a.min() < 0 or a.max() >= NUM_ACTIONS):
            raise ValueError(f"actions: expected ints in [0, {NUM_ACTIONS - 1}], got values in [{a.min()}, {a.max()}]")
        live = ~self.done
        moved = np.clip(self.pos + MOVES[a], 0, self.size - 1)
        self.pos = np.where(live[:, None], moved, self.pos)
        self.t += live
        on_goal = live & (self.pos == self.goals).all(axis=1)
        rewards = on_goal.astype(np.float32)
        terminated = on_goal if self.variant == "sparse" else np.zeros(self.num_envs, dtype=bool)
        truncated = live & ~terminated & (self.t >= self.max_steps)
        self.done |= terminated | truncated
        return self.pos.astype(np.float32), rewards, terminated, truncated


def register_envs() -> None:
    """Register ``lram/DarkRoom-v0`` with gymnasium (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="lram.envs.darkroom:DarkRoom")


register_envs()
