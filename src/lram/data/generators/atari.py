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
made with other settings is refused.  The generic machinery here (settings, seeds, SB3 training, parallel
recording) is shared with :mod:`lram.data.generators.dmcontrol`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lram.data.episode import DataError, Episode
from lram.utils.io import write_json_atomic

GENERATOR = "atari-expert"
SETTINGS_FILE = "generator.json"
ALGOS = ("scripted", "ppo", "random")
_EPISODE_FILE = re.compile(r"^(\d+)\.(hdf5|h5|npz|pkl)$")
SETTING_KEYS = ("generator", "task", "algo", "seed", "timesteps", "max_steps", "deterministic", "format")


# ----------------------------------------------------------------------------------------------- generic parts


def episode_seed(seed: int, task: str, index: int) -> int:
    """The env seed of episode ``index`` of ``task`` in a run with base ``seed`` (31-bit, distinct per task)."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(task.encode()), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def existing_episodes(task_dir: str | Path) -> set[int]:
    """Indices of the episode files (``<index>.hdf5|npz|...``, any zero padding) in ``task_dir``."""
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        return set()
    return {int(m.group(1)) for p in task_dir.iterdir() if (m := _EPISODE_FILE.match(p.name)) and p.is_file()}


def check_settings(task_dir: Path, settings: dict, keys: Sequence[str] = SETTING_KEYS) -> None:
    """Write ``generator.json`` for a new folder; refuse to resume a folder made with other settings."""
    path = task_dir / SETTINGS_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            msg = f"unreadable generator settings ({e}); delete the file to start the folder anew"
            raise DataError(path, None, msg) from None
        if not isinstance(old, dict):
            raise DataError(path, None, f"expected a JSON object, got {type(old).__name__}")
        for key in keys:
            if old.get(key) != settings.get(key):
                raise DataError(path, key, f"this folder was generated with {key}={old.get(key)!r}, this run asks for "
                                f"{settings.get(key)!r}; resume with the same settings or write to another output folder")
        return
    if existing_episodes(task_dir):
        raise DataError(task_dir, None, f"holds episode files but no {SETTINGS_FILE}: not a folder this generator can resume")
    task_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, settings)


def record_episode(env, act: Callable, seed: int, max_steps: int, discrete: bool, info: dict | None = None) -> Episode:
    """Run ``act(obs) -> action`` in ``env`` from ``env.reset(seed=seed)`` for at most ``max_steps`` steps.

    ``states[t]`` is the observation the action of step t was chosen from; ``dones`` is True only at a
    terminal step (not at a time-limit truncation).  ``act.reset()`` is called first if it exists.
    """
    obs, _ = env.reset(seed=int(seed))
    env.action_space.seed(int(seed))
    if hasattr(act, "reset"):
        act.reset()
    states, actions, rewards = [], [], []
    terminated = False
    for _ in range(max_steps):
        a = act(obs)
        states.append(obs)
        actions.append(a)
        obs, r, terminated, truncated, _ = env.step(a)
        rewards.append(float(r))
        if terminated or truncated:
            break
    n = len(rewards)
    dones = np.zeros(n, dtype=bool)
    dones[-1] = bool(terminated)
    acts = np.asarray(actions, dtype=np.int64) if discrete else np.asarray(actions, dtype=np.float32).reshape(n, -1)
    rew = np.asarray(rewards, dtype=np.float32)
    extra = {"clipped_return": float(np.sign(rew).sum())} if discrete else {}
    meta = {"seed": int(seed), "truncated": not terminated, **extra, **(info or {})}
    return Episode(np.stack(states), acts, rew, dones, info=meta)


def train_sb3(algo: str, env, path: Path, timesteps: int, seed: int, progress: bool = True, **kwargs):
    """Train an SB3 ``algo`` ('ppo' | 'sac') on ``env`` for ``timesteps`` steps and save it atomically at ``path``.

    A model already at ``path`` is loaded instead (resume).  Returns the model.
    """
    try:
        from stable_baselines3 import PPO, SAC
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("training an expert needs stable-baselines3 (pip install stable-baselines3==2.9.2)") from e
    cls = {"ppo": PPO, "sac": SAC}[algo]
    if path.is_file():
        return cls.load(path, device="cpu")
    policy = kwargs.pop("policy", "MlpPolicy")
    model = cls(policy, env, seed=int(seed), device="cpu", verbose=0, **kwargs)
    model.learn(total_timesteps=int(timesteps), progress_bar=False)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.zip")
    model.save(tmp)
    os.replace(tmp, path)
    return model


def sb3_actor(model, deterministic: bool):
    """``act(obs)`` from an SB3 model (one observation at a time)."""

    def act(obs):
        a, _ = model.predict(obs, deterministic=deterministic)
        return a

    return act


_worker_cache: dict = {}


def _init_worker() -> None:
    """One torch thread per recording process (the processes already use every core)."""
    import torch

    torch.set_num_threads(1)


def _record_chunk(job: tuple) -> tuple[list[tuple[int, Episode]], float]:
    """Worker: ``job = (builder, args, indices, seeds)``; ``builder(*args)`` -> (env, act, max_steps, discrete, info)."""
    builder, args, indices, seeds = job
    key = (builder.__module__, builder.__name__, args)
    if key not in _worker_cache:
        for env, *_ in _worker_cache.values():
            env.close()
        _worker_cache.clear()
        _worker_cache[key] = builder(*args)
    env, act, max_steps, discrete, info = _worker_cache[key]
    t0 = time.perf_counter()
    out = [(i, record_episode(env, act, s, max_steps, discrete, {**info, "episode_index": i})) for i, s in zip(indices, seeds)]
    return out, time.perf_counter() - t0


def record_task(task_dir: Path, task: str, builder: Callable, args: tuple, episodes: int, seed: int, *, workers: int = 2,
                fmt: str = "hdf5", compress: bool = False, stem_digits: int | None = None, chunk_size: int = 1,
                progress: bool = True, desc: str | None = None) -> dict:
    """Write the missing episodes ``0 .. episodes-1`` of ``task`` into ``task_dir`` (paper layout).

    ``builder(*args)`` (a module-level function, so worker processes can rebuild it) returns
    ``(env, act, max_steps, discrete, info)``.  Returns requested / existing / written / mean_return / steps_per_s.
    """
    from lram.data.storage import PaperWriter

    have = existing_episodes(task_dir)
    todo = [i for i in range(episodes) if i not in have]
    summary = {"requested": episodes, "existing": episodes - len(todo), "written": 0, "mean_return": float("nan"),
               "steps_per_s": float("nan")}
    if not todo:
        return summary
    jobs = [(builder, args, todo[k:k + chunk_size], [episode_seed(seed, task, i) for i in todo[k:k + chunk_size]])
            for k in range(0, len(todo), chunk_size)]
    returns, steps, busy = [], 0, 0.0
    pool = None
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: a process forked after torch ran its OpenMP thread pool (SB3 training) can deadlock
        pool = mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker)
        results = pool.imap(_record_chunk, jobs, chunksize=1)
    else:
        results = map(_record_chunk, jobs)
    try:
        with PaperWriter(task_dir, fmt=fmt, compress=compress, stem_digits=stem_digits, progress=False) as writer, \
                tqdm(total=len(todo), unit="ep", desc=desc or task, disable=not progress, dynamic_ncols=True) as bar:
            for chunk, seconds in results:
                for i, ep in chunk:
                    writer.write(ep, stem=str(i).zfill(stem_digits or 0))
                    summary["written"] += 1
                    returns.append(ep.total_return)
                    steps += len(ep)
                busy += seconds
                bar.update(len(chunk))
                bar.set_postfix(ret=f"{np.mean(returns):.1f}")
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        for env, *_ in _worker_cache.values():
            env.close()
        _worker_cache.clear()
    summary["mean_return"] = float(np.mean(returns))
    summary["steps_per_s"] = steps / max(busy, 1e-9)
    return summary


def check_common_args(episodes, seed, workers, timesteps, max_steps, fmt) -> None:
    """Clear ValueErrors for the CLI arguments shared by the RL generators."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    for name, v, lo in (("episodes", episodes, 1), ("seed", seed, 0), ("workers", workers, 0), ("timesteps", timesteps, 1),
                        ("max_steps", max_steps, 1)):
        if not is_int(v) or v < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    if fmt not in ("hdf5", "npz"):
        raise ValueError(f"fmt: expected 'hdf5' or 'npz', got {fmt!r}")


# ----------------------------------------------------------------------------------------------- Atari


class _Clip:
    """Gym reward wrapper factory (sign clipping) for PPO training; kept tiny and picklable."""

    @staticmethod
    def wrap(env):
        import gymnasium as gym

        from lram.envs.atari import clip_reward

        return gym.wrappers.TransformReward(env, lambda r: float(clip_reward(r)))


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

    from lram.envs.atari import make_atari_env, task_name

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
        task_dir.mkdir(parents=True, exist_ok=True)
        check_settings(task_dir, settings)
        model_path = None
        if algo == "ppo":
            model_path = task_dir / "expert_ppo.zip"
            if not model_path.is_file():
                t0 = time.perf_counter()
                env = _Clip.wrap(make_atari_env(game, max_episode_steps=max_steps))
                kw = {"policy": "CnnPolicy", "n_steps": 128, "n_epochs": 4, "batch_size": 256, "learning_rate": 2.5e-4,
                      "clip_range": 0.1, "ent_coef": 0.01, "vf_coef": 0.5, **(ppo_kwargs or {})}
                if progress:
                    print(f"{task}: training PPO for {timesteps} steps", flush=True)
                train_sb3("ppo", env, model_path, timesteps, seed, **kw)
                env.close()
                summary.setdefault(task, {})["train_seconds"] = time.perf_counter() - t0
        s = record_task(task_dir, task, _build_atari, (game, algo, str(model_path) if model_path else None, max_steps,
                        bool(deterministic)), episodes, seed, workers=workers, fmt=fmt, compress=compress, stem_digits=9,
                        progress=progress, desc=task)
        summary[task] = {**summary.get(task, {}), **s}
    return summary


def format_summary(summary: dict[str, dict]) -> str:
    """A plain-text table of a generator summary."""
    lines = [f"{'task':<28}{'episodes':>9}{'new':>6}{'return':>10}{'steps/s':>9}"]
    for task, s in summary.items():
        ret = f"{s['mean_return']:.1f}" if s["written"] else "-"
        sps = f"{s['steps_per_s']:.0f}" if s["written"] else "-"
        lines.append(f"{task:<28}{s['existing'] + s['written']:>9}{s['written']:>6}{ret:>10}{sps:>9}")
    return "\n".join(lines)


def add_recording_args(p: argparse.ArgumentParser) -> None:
    """The recording options shared by the RL-expert generators (Atari, DMControl)."""
    p.add_argument("--workers", type=int, default=2, help="recording processes (default: 2; 0/1 = in-process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", dest="fmt", choices=("hdf5", "npz"), default="hdf5")
    p.add_argument("--compress", action="store_true", help="gzip level 1 (hdf5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    """``lram data generate atari OUT ...``: expert Atari episodes with the paper's preprocessing."""
    p = argparse.ArgumentParser(prog="lram data generate atari",
                                description="Record Atari expert episodes (64x64 gray->3ch, frame-skip 4, sticky actions, "
                                "18 actions). Resumable: re-run the same command to complete an interrupted run.")
    p.add_argument("out", type=Path, help="output root; one folder atari-<game> per game")
    p.add_argument("--games", default="freeway", help="comma-separated games (default: freeway)")
    p.add_argument("--algo", choices=ALGOS, default="scripted", help="expert: scripted (Freeway), ppo or random")
    p.add_argument("--timesteps", type=int, default=1_000_000, help="PPO training steps (default: 1M; ~10M for good play)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per game (default: 10)")
    p.add_argument("--max-steps", type=int, default=27_000, help="agent steps per episode at most (default: 27000)")
    p.add_argument("--deterministic", action="store_true", help="PPO: argmax actions instead of sampling")
    add_recording_args(p)
    a = p.parse_args(argv)
    try:
        summary = generate_atari(a.out, a.games, a.episodes, a.algo, timesteps=a.timesteps, seed=a.seed, workers=a.workers,
                                 fmt=a.fmt, compress=a.compress, max_steps=a.max_steps, deterministic=a.deterministic,
                                 progress=not a.quiet)
    except (ValueError, ImportError) as e:
        p.exit(2, f"lram data generate atari: error: {e}\n")
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
