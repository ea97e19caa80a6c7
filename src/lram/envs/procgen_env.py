"""Procgen environments (spec 1.2, 5.x) through ``procgen2``'s gym3 API, channels-first like lram's other image domains.

* :class:`ProcgenBatch`: ``num`` games of one kind stepped together (the fast path: recording and PPO training);
  observations ``[num, 3, 64, 64] uint8`` (the native RGB frame, transposed to channels-first), 15 actions.
* :class:`ProcgenEnv`: a single-env ``gymnasium.Env`` adapter over a batch of one.

Settings as in the paper's data: ``distribution_mode="easy"``, levels ``0 .. 199`` (``num_levels=200,
start_level=0``).  gym3 semantics, hidden here: an env resets itself when an episode ends, and the observation
returned by the step that ended an episode is already the first frame of the next one (Procgen never shows the
terminal frame); the step's ``done`` flag is True.  Procgen games end at their own time limit (1000 steps for
most games) and do not say whether an episode ended by the limit or not, so every end is a ``done``.

Install (kept out of pip's resolver because procgen2/gym3 declare ``numpy<2``; they run on numpy 2 through gym3)::

    pip install --no-deps procgen2==0.10.7 gym3==0.3.3 gym==0.26.2 cffi==1.17.1 pycparser==2.23 imageio==2.38.1

Never name a local module ``procgen.py``: it shadows the package.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

TRAIN_GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "coinrun", "dodgeball", "fruitbot", "heist", "leaper", "maze",
               "miner", "starpilot")
HELDOUT_GAMES = ("climber", "ninja", "plunder", "jumper")
GAMES = TRAIN_GAMES + HELDOUT_GAMES
NUM_ACTIONS = 15
OBS_SHAPE = (3, 64, 64)
NUM_LEVELS = 200
START_LEVEL = 0
DISTRIBUTION_MODE = "easy"
INSTALL = "pip install --no-deps procgen2==0.10.7 gym3==0.3.3 gym==0.26.2 cffi==1.17.1 pycparser==2.23 imageio==2.38.1"


def require_procgen():
    """Import ``procgen`` (from the ``procgen2`` wheel) with a clear error saying how to install it."""
    try:
        import procgen
    except ImportError as e:
        raise ImportError(f"Procgen needs procgen2 and gym3 ({INSTALL}; or `make setup`): {e}") from e
    return procgen


def check_game(game: str) -> str:
    """The canonical (lower-case) game name; ValueError naming the 16 games otherwise."""
    name = str(game).strip().lower()
    if name.startswith("procgen-"):
        name = name[len("procgen-"):]
    if name not in GAMES:
        raise ValueError(f"game: unknown Procgen game {game!r}; expected one of {', '.join(GAMES)}")
    return name


def task_name(game: str) -> str:
    """The task folder of a game: ``procgen-<game>`` (e.g. ``procgen-bigfish``)."""
    return "procgen-" + check_game(game)


def to_chw(rgb: np.ndarray) -> np.ndarray:
    """``[..., 64, 64, 3]`` RGB (gym3's layout) -> contiguous ``[..., 3, 64, 64]`` uint8."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(rgb, dtype=np.uint8), -1, -3))


class ProcgenBatch:
    """``num`` Procgen envs of one game stepped together; every env resets itself at the end of an episode.

    ``seed`` fixes the level sequence of every env and the games' randomness (same seed and actions -> same
    frames).  :meth:`reset` returns the first observations; :meth:`step` returns ``(obs, rewards, dones, infos)``
    where ``dones[i]`` means env i's episode ended with this step and ``obs[i]`` starts its next episode.
    ``infos[i]`` holds ``level_seed`` (the level now played) and, after a done, ``level_complete`` (the ended
    episode reached its goal).
    """

    def __init__(self, game: str, num: int = 1, seed: int = 0, num_levels: int = NUM_LEVELS, start_level: int = START_LEVEL,
                 distribution_mode: str = DISTRIBUTION_MODE):
        procgen = require_procgen()
        for name, v, lo in (("num", num, 1), ("seed", seed, 0), ("num_levels", num_levels, 0), ("start_level", start_level, 0)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if distribution_mode not in ("easy", "hard", "extreme", "memory", "exploration"):
            raise ValueError(f"distribution_mode: expected easy|hard|extreme|memory|exploration, got {distribution_mode!r}")
        self.game, self.num = check_game(game), int(num)
        self.env = procgen.ProcgenGym3Env(num=self.num, env_name=self.game, num_levels=int(num_levels),
                                          start_level=int(start_level), distribution_mode=distribution_mode,
                                          rand_seed=int(seed) & 0x7FFFFFFF)
        self.observation_space = gym.spaces.Box(0, 255, OBS_SHAPE, dtype=np.uint8)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self._started = False

    def reset(self) -> np.ndarray:
        """The first observations ``[num, 3, 64, 64]`` (only before the first step: gym3 envs cannot be reset)."""
        if self._started:
            raise RuntimeError("ProcgenBatch.reset: gym3 envs reset themselves; build a new batch to start over")
        _, ob, _ = self.env.observe()
        return to_chw(ob["rgb"])

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Act ``actions`` (ints in 0..14, one per env); see the class doc for the returned values."""
        a = np.asarray(actions).reshape(-1)
        if a.shape != (self.num,) or a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() >= NUM_ACTIONS)):
            raise ValueError(f"actions: expected {self.num} ints in 0..{NUM_ACTIONS - 1}, got {np.asarray(actions)!r}")
        self._started = True
        self.env.act(a.astype(np.int32))
        rew, ob, first = self.env.observe()
        dones = np.asarray(first, dtype=bool)
        infos = []
        for i, raw in enumerate(self.env.get_info()):
            info = {"level_seed": int(raw.get("level_seed", -1))}
            if dones[i]:
                info["level_complete"] = bool(raw.get("prev_level_complete", 0))
            infos.append(info)
        return to_chw(ob["rgb"]), np.asarray(rew, dtype=np.float32), dones, infos

    def level_seeds(self) -> list[int]:
        """The level each env is playing now."""
        return [int(raw.get("level_seed", -1)) for raw in self.env.get_info()]

    def close(self) -> None:
        self.env = None


class ProcgenEnv(gym.Env):
    """A single Procgen game as a ``gymnasium.Env``: ``[3, 64, 64] uint8`` observations, ``Discrete(15)``.

    ``reset(seed=s)`` starts a fresh level sequence from seed ``s``; ``reset()`` after a finished episode
    continues with the next level (whose first frame was returned by the last step).  ``terminated`` marks
    every episode end (see the module doc); ``truncated`` is always False.
    """

    metadata = {"render_modes": []}

    def __init__(self, game: str, num_levels: int = NUM_LEVELS, start_level: int = START_LEVEL,
                 distribution_mode: str = DISTRIBUTION_MODE, seed: int = 0):
        self.game = check_game(game)
        self._kw = {"num_levels": num_levels, "start_level": start_level, "distribution_mode": distribution_mode}
        self._batch = ProcgenBatch(self.game, 1, seed, **self._kw)
        self.observation_space, self.action_space = self._batch.observation_space, self._batch.action_space
        self._next = None  # the first frame of the next episode, once the current one ended

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._batch = ProcgenBatch(self.game, 1, int(seed), **self._kw)
            self._next = None
        if self._next is None:
            obs = self._batch.reset() if not self._batch._started else None
            if obs is None:  # reset in the middle of an episode: restart with a fresh batch from a drawn seed
                self._batch = ProcgenBatch(self.game, 1, int(self.np_random.integers(2**31)), **self._kw)
                obs = self._batch.reset()
            self._next = obs[0]
        obs, self._next = self._next, None
        return obs, {"level_seed": self._batch.level_seeds()[0]}

    def step(self, action):
        obs, rew, done, infos = self._batch.step(np.asarray([int(action)]))
        if done[0]:
            self._next = obs[0]
        return obs[0], float(rew[0]), bool(done[0]), False, infos[0]

    def close(self) -> None:
        self._batch.close()
