"""Atari expert episodes: a scripted Freeway expert or an SB3 PPO agent, recorded with the paper's preprocessing.

``lram data generate atari OUT --games freeway --algo scripted --episodes 10``
``lram data generate atari OUT --games pong --algo ppo --timesteps 10000000 --episodes 100``

Envs are :func:`lram.envs.atari.make_atari_env` (64x64 gray -> [3, 64, 64] uint8, frame-skip 4, sticky
actions 0.25, full 18 actions, no life-loss boundary).  Experts:

* ``scripted`` (Freeway only): :class:`lram.envs.atari.FreewayExpert` (RAM-based car avoidance; ~30 per game
  against 22 for always-up and 0 for random);
* ``ppo``: SB3 PPO ``CnnPolicy`` trained on the same single-frame [3, 64, 64] observations with clipped
  rewards (``--timesteps``; SB3's Atari defaults otherwise), saved as ``<task>/expert_ppo.zip`` and reused on
  resume; actions are sampled from the policy (``--deterministic`` for argmax);
* ``random``: uniform over the 18 actions (a baseline).

Layout (paper layout via ``PaperWriter``, Atari stems zero-padded to 9 digits)::

    <out>/atari-<game>/000000007.hdf5   states uint8 [T,3,64,64], actions int64 [T] in 0..17, rewards float32 [T]
                                        (RAW game rewards; ``info.clipped_return`` holds the sign-clipped sum that
                                        DQN-Replay data and the paper's Atari RTGs use), dones (True at game over)
    <out>/atari-<game>/generator.json  the settings

Resuming: episode ``i`` is recorded from env seed ``episode_seed(seed, task, i)`` with the saved expert, so an
interrupted run is completed by re-running the same command; episodes already written are kept, a folder
made with other settings is refused.  The generic machinery (settings, seeds, SB3 training, parallel recording)
lives in :mod:`lram.data.generators._common`, shared with the other generators.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lram.data.generators._common import (
    EXPERT_SETTING_KEYS,
    add_recording_args,
    check_common_args,
    expert_task,
    make_parser,
    recording_kwargs,
    run_main,
    sb3_actor,
)
from lram.data.generators._common import record_episode as record_episode  # public here (tests, benchmarks)

GENERATOR = "atari-expert"
ALGOS = ("scripted", "ppo", "random")


# ----------------------------------------------------------------------------------------------- Atari


class _Clip:
    """Gym reward wrapper factory (sign clipping) for PPO training; kept tiny and picklable."""

    @staticmethod
    def wrap(env):
        import gymnasium as gym

        from lram.envs.atari import clip_reward

        return gym.wrappers.TransformReward(env, lambda r: float(clip_reward(r)))


def _clipped_env(game: str, max_steps: int):
    from lram.envs.atari import make_atari_env

    return _Clip.wrap(make_atari_env(game, max_episode_steps=max_steps))


def _build_atari(game: str, algo: str, model_path: str | None, max_steps: int, deterministic: bool):
    from lram.envs.atari import NUM_ACTIONS, FreewayExpert, make_atari_env

    env = make_atari_env(game, max_episode_steps=max_steps)
    if algo == "scripted":
        act = FreewayExpert(env)
    elif algo == "random":
        rng = np.random.default_rng(zlib.crc32(game.encode()))
        act = lambda obs: int(rng.integers(NUM_ACTIONS))  # noqa: E731
    else:
        from stable_baselines3 import PPO

        model = PPO.load(model_path, device="cpu")
        pred = sb3_actor(model, deterministic)
        act = lambda obs: int(pred(obs))  # noqa: E731
    return env, act, max_steps, True, {"algo": algo}


def generate_atari(out_root: str | Path, games: str | Sequence[str], episodes: int, algo: str = "scripted", *,
                   timesteps: int = 1_000_000, seed: int = 0, workers: int = 2, fmt: str = "hdf5", compress: bool = False,
                   max_steps: int = 27_000, deterministic: bool = False, ppo_kwargs: dict | None = None,
                   progress: bool = True) -> dict[str, dict]:
    """Make sure ``out_root/atari-<game>/`` holds expert episodes ``0 .. episodes-1`` of every game; returns a summary."""
    from importlib.metadata import version

    from lram.envs.atari import task_name

    game_list = [g.strip() for g in games.split(",")] if isinstance(games, str) else list(games)
    if algo not in ALGOS:
        raise ValueError(f"algo: expected one of {list(ALGOS)}, got {algo!r}")
    check_common_args(episodes, seed, workers, timesteps, max_steps, fmt)
    if algo == "scripted" and any(task_name(g) != "atari-freeway" for g in game_list):
        raise ValueError(f"algo 'scripted': only Freeway has a scripted expert, got games {game_list}; use --algo ppo")
    out_root = Path(out_root)
    summary = {}
    for game in game_list:
        task = task_name(game)
        task_dir = out_root / task
        settings = {"generator": GENERATOR, "task": task, "game": game, "algo": algo, "seed": int(seed),
                    "timesteps": int(timesteps) if algo == "ppo" else None, "max_steps": int(max_steps),
                    "deterministic": bool(deterministic) if algo == "ppo" else None, "format": fmt, "compress": bool(compress),
                    "preprocessing": "ALE v5 frameskip=1 + AtariPreprocessing(frame_skip=4, noop_max=30, 64x64 gray, "
                                     "INTER_AREA) -> [3,64,64] uint8; sticky 0.25; 18 actions; no life-loss boundary",
                    "rewards": "raw game rewards (info.clipped_return: sign-clipped sum)",
                    "ppo_kwargs": ppo_kwargs or {}, "ale_py_version": version("ale-py")}
        kw = {"policy": "CnnPolicy", "n_steps": 128, "n_epochs": 4, "batch_size": 256, "learning_rate": 2.5e-4,
              "clip_range": 0.1, "ent_coef": 0.01, "vf_coef": 0.5, **(ppo_kwargs or {})}
        summary[task] = expert_task(task_dir, task, settings, EXPERT_SETTING_KEYS, _build_atari, game, algo,
                                    "ppo" if algo == "ppo" else None, functools.partial(_clipped_env, game, max_steps), kw,
                                    timesteps=timesteps, episodes=episodes, seed=seed, max_steps=max_steps,
                                    deterministic=deterministic, workers=workers, fmt=fmt, compress=compress,
                                    progress=progress, stem_digits=9)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``lram data generate atari OUT ...``: expert Atari episodes with the paper's preprocessing."""
    p = make_parser("atari", "Record Atari expert episodes (64x64 gray->3ch, frame-skip 4, sticky actions, 18 actions).",
                    "output root; one folder atari-<game> per game")
    p.add_argument("--games", default="freeway", help="comma-separated games (default: freeway)")
    p.add_argument("--algo", choices=ALGOS, default="scripted", help="expert: scripted (Freeway), ppo or random")
    p.add_argument("--timesteps", type=int, default=1_000_000, help="PPO training steps (default: 1M; ~10M for good play)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per game (default: 10)")
    p.add_argument("--max-steps", type=int, default=27_000, help="agent steps per episode at most (default: 27000)")
    p.add_argument("--deterministic", action="store_true", help="PPO: argmax actions instead of sampling")
    add_recording_args(p)
    return run_main(p, argv, lambda a: generate_atari(
        a.out, a.games, a.episodes, a.algo, timesteps=a.timesteps, max_steps=a.max_steps, deterministic=a.deterministic,
        **recording_kwargs(a)))


if __name__ == "__main__":
    raise SystemExit(main())
