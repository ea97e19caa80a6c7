"""Atari environments with the paper's preprocessing (spec 1.2, 5.1) and a scripted Freeway expert.

:func:`make_atari_env` builds ``ALE/<Game>-v5`` with ``frameskip=1`` and wraps it in gymnasium's
``AtariPreprocessing``; choices (and where they differ from the paper's DQN-Replay data):

* ``frame_skip=4`` with a max-pool over the last two frames, ``noop_max=30`` random no-ops at reset;
* 64x64 grayscale (cv2 ``INTER_AREA``, as the paper's ``WarpFrameCustom``), **no frame stacking**, the
  channel repeated 3x ("to_rgb") -> observations ``[3, 64, 64] uint8``;
* the full 18-action space (one action head for every game, as the paper's MGDT remapping);
* sticky actions with probability 0.25 (the v5 default; DQN-Replay was also recorded with sticky actions);
* ``terminal_on_life_loss=False`` and no FIRE reset: a recorded episode is one full game; the paper's
  life-loss boundary is an *evaluation* convention (spec 5.1), not a data one;
* episodes truncated at ``max_episode_steps`` agent steps (default 27,000 = 108k frames, as in evaluation).

Rewards are the game's raw rewards; :func:`clip_reward` gives the sign-clipped reward that DQN-Replay stores.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

NUM_ACTIONS = 18
OBS_SHAPE = (3, 64, 64)
MAX_EPISODE_STEPS = 27_000
STICKY_ACTIONS = 0.25
# the full action set's ids (ale_py.Action order)
NOOP, FIRE, UP, RIGHT, LEFT, DOWN = 0, 1, 2, 3, 4, 5

_registered = False


def require_ale():
    """Import ale_py and register its envs with gymnasium (clear error when missing)."""
    global _registered
    try:
        import ale_py
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("Atari needs ale-py (pip install ale-py==0.12.1 opencv-python-headless)") from e
    if not _registered:
        gym.register_envs(ale_py)
        _registered = True
    return ale_py


def env_id(game: str) -> str:
    """``'freeway'`` / ``'Freeway'`` / ``'ms_pacman'`` -> ``'ALE/Freeway-v5'`` / ``'ALE/MsPacman-v5'``."""
    name = game.split("/")[-1].split("-v")[0]
    if "_" in name or name.islower():
        name = "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_"))
    return f"ALE/{name}-v5"


def task_name(game: str) -> str:
    """The task folder of a game: ``atari-<game in lower case>`` (e.g. ``atari-freeway``, ``atari-mspacman``)."""
    return "atari-" + env_id(game)[4:-3].lower()


class ToRGB(gym.ObservationWrapper):
    """[64, 64] grayscale -> [3, 64, 64] uint8 (the channel repeated; channels-first as the image encoder expects)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        h, w = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 255, (3, h, w), dtype=np.uint8)

    def observation(self, observation):
        return np.repeat(np.asarray(observation, dtype=np.uint8)[None], 3, axis=0)


def make_atari_env(game: str, screen_size: int = 64, sticky: float = STICKY_ACTIONS,
                   max_episode_steps: int | None = MAX_EPISODE_STEPS) -> gym.Env:
    """The paper's Atari env: observations [3, screen, screen] uint8, Discrete(18) actions (see module doc)."""
    require_ale()
    try:
        env = gym.make(env_id(game), frameskip=1, repeat_action_probability=float(sticky), full_action_space=True,
                       max_num_frames_per_episode=None)
    except gym.error.Error as e:
        raise ValueError(f"game: unknown Atari game {game!r} ({env_id(game)}): {e}") from None
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=screen_size, terminal_on_life_loss=False,
                                          grayscale_obs=True, grayscale_newaxis=False, scale_obs=False)
    env = ToRGB(env)
    if max_episode_steps:
        env = gym.wrappers.TimeLimit(env, max_episode_steps=int(max_episode_steps))
    return env


def clip_reward(r):
    """The sign-clipped reward (-1, 0, 1) used by DQN-Replay and the paper's Atari RTGs."""
    return np.sign(r).astype(np.float32)


# ----------------------------------------------------------------------------------------------- Freeway expert

# Freeway RAM (measured with ale_py 0.12.1): ram[14] = chicken y (6 at the bottom, grows upwards to ~180 where it
# scores), ram[108:118] = x positions of the cars of lanes 1..10 (bottom to top).  Lanes 1-5 drive right, 6-10 left.
_CHICKEN_Y = 14
_CARS_X = slice(108, 118)


class FreewayExpert:
    """A scripted Freeway expert: moves UP, but waits (NOOP) when a car is about to hit the chicken.

    ``mode="up"`` always moves up (the classic Freeway baseline).  ``mode="avoid"`` reads the emulator RAM
    (the env's ``unwrapped.ale``; pass the env the policy acts in): it estimates every car's speed from the
    last two RAM reads, predicts where the cars of the chicken's lane and of the lane ahead will be in the
    next ``horizon`` steps, and waits if one of them would come within ``half_width`` pixels of the chicken's
    column.  Measured (full games, seeds 0 and 1, sticky actions): avoid 31 / 30, always-up 22 / 22, uniformly
    random 0; the defaults were the best of horizon 1-4 x half_width 3-12.
    """

    def __init__(self, env: gym.Env, mode: str = "avoid", horizon: int = 2, half_width: int = 6):
        if mode not in ("up", "avoid"):
            raise ValueError(f"mode: expected 'up' or 'avoid', got {mode!r}")
        self.ale, self.mode, self.horizon, self.half_width = env.unwrapped.ale, mode, int(horizon), int(half_width)
        self._prev = None

    def reset(self) -> None:
        self._prev = None

    def __call__(self, obs=None) -> int:
        if self.mode == "up":
            return UP
        ram = self.ale.getRAM()
        cars = ram[_CARS_X].astype(np.int64)
        prev, self._prev = self._prev, cars
        if prev is None:
            return UP
        speed = (cars - prev + 80) % 160 - 80  # cars wrap around at 160
        y = int(ram[_CHICKEN_Y])
        for dy in (0, _STEP_Y, 2 * _STEP_Y):
            lane = _lane_of(y + dy)
            if lane is None:
                continue
            for k in range(1, self.horizon + 1):
                x = (cars[lane] + k * speed[lane]) % 160
                if abs(int(x) - _CHICKEN_X) <= self.half_width:
                    return NOOP
        return UP


_STEP_Y = 4  # the chicken's y gain per agent step when moving up
_CHICKEN_X = 46  # the column where cars hit the chicken (measured from collisions)


def _lane_of(y: int) -> int | None:
    """Lane index 0..9 (bottom to top) for a chicken y in RAM units, None outside the road."""
    lane = (y - 6) // 16
    return lane if 0 <= lane < 10 else None
