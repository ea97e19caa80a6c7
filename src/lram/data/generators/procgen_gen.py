"""Procgen expert episodes: an SB3 PPO agent (or a random policy) recorded from batched gym3 envs.

``lram data generate procgen OUT --games bigfish,coinrun --algo ppo --timesteps 25000000 --episodes 1000``

Envs are :class:`lram.envs.procgen_env.ProcgenBatch` (easy mode, levels 0..199, RGB ``[3, 64, 64] uint8``,
15 actions).  Experts:

* ``ppo``: SB3 PPO ``CnnPolicy`` trained on the same observations with raw rewards, ``--train-envs`` games
  stepped as one SB3 ``VecEnv`` (defaults follow the Procgen paper's PPO: 64 envs x 256 steps, 8 minibatches,
  3 epochs, lr 5e-4, gamma 0.999, lambda 0.95, entropy 0.01, clip 0.2); saved as ``<task>/expert_ppo.zip`` and
  reused on resume; actions are sampled (``--deterministic`` for argmax).  The paper's data came from 25M-step
  PPO runs per game (RA-DT); ``--timesteps`` sets the budget;
* ``random``: uniform over the 15 actions (a baseline).

Layout (paper layout via ``PaperWriter``, plain integer stems)::

    <out>/procgen-<game>/<i>.hdf5   states uint8 [T,3,64,64], actions int64 [T] in 0..14, rewards float32 [T] (raw),
                                    dones (True at the last step: every Procgen episode ends, by goal, death or
                                    the game's time limit); info: level_seed, level_complete, chunk seed
    <out>/procgen-<game>/generator.json

Recording: episodes are made in chunks of ``--chunk`` consecutive indices; a chunk runs ``--batch`` envs from
seed ``episode_seed(seed, task, first index)`` and numbers the episodes in the order they finish (ties by env
index).  A chunk is deterministic, so resuming re-runs a partly written chunk and writes only its missing
episodes: a re-run of the same command completes an interrupted run; a folder made with other settings is
refused.  Episodes still running when a chunk has all it needs are dropped, which biases each chunk slightly
towards short episodes (less with a larger ``--chunk`` / ``--batch`` ratio).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lram.data.episode import Episode
from lram.data.generators._common import (
    add_recording_args,
    check_common_args,
    check_int,
    check_settings,
    ensure_expert,
    episode_seed,
    imap_jobs,
    init_worker,
    make_parser,
    missing_episodes,
    recording_kwargs,
    run_main,
    train_sb3,
    write_results,
)

GENERATOR = "procgen-expert"
ALGOS = ("ppo", "random")
SETTING_KEYS = ("generator", "task", "algo", "seed", "timesteps", "deterministic", "format", "num_levels", "start_level",
                "distribution_mode", "batch", "chunk")
PPO_DEFAULTS = {"n_steps": 256, "batch_size": 2048, "n_epochs": 3, "learning_rate": 5e-4, "gamma": 0.999, "gae_lambda": 0.95,
                "ent_coef": 0.01, "clip_range": 0.2, "vf_coef": 0.5, "max_grad_norm": 0.5}


def make_vec_env(game: str, num: int, seed: int, **env_kwargs):
    """An SB3 ``VecEnv`` over one :class:`ProcgenBatch` (no per-env processes: gym3 steps the batch in C)."""
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv

    from lram.envs.procgen_env import ProcgenBatch

    class ProcgenVecEnv(VecEnv):
        """``num`` Procgen games as one SB3 VecEnv (episodes restart inside the batch)."""

        def __init__(self):
            self.batch = ProcgenBatch(game, num, seed, **env_kwargs)
            super().__init__(num, self.batch.observation_space, self.batch.action_space)
            self._actions = None
            self._obs = None

        def reset(self):
            if self._obs is None:
                self._obs = self.batch.reset()
            return self._obs

        def step_async(self, actions):
            self._actions = np.asarray(actions, dtype=np.int64).reshape(-1)

        def step_wait(self):
            obs, rew, dones, infos = self.batch.step(self._actions)
            self._obs = obs
            return obs, rew, dones, [dict(i) for i in infos]

        def close(self):
            self.batch.close()

        def get_attr(self, attr_name, indices=None):
            value = None if attr_name == "render_mode" else getattr(self.batch, attr_name)
            return [value] * len(self._get_indices(indices))

        def set_attr(self, attr_name, value, indices=None):
            raise AttributeError(f"ProcgenVecEnv.set_attr({attr_name!r}): the gym3 batch has no per-env attributes")

        def env_method(self, method_name, *args, indices=None, **kwargs):
            raise AttributeError(f"ProcgenVecEnv.env_method({method_name!r}): the gym3 batch has no per-env methods")

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * len(self._get_indices(indices))

    return ProcgenVecEnv()


def train_ppo(game: str, path: Path, timesteps: int, seed: int, *, train_envs: int = 64, env_kwargs: dict | None = None,
              ppo_kwargs: dict | None = None):
    """Train (or load, when ``path`` exists) the PPO ``CnnPolicy`` expert of ``game``; saved atomically at ``path``."""
    env = make_vec_env(game, train_envs, seed, **(env_kwargs or {}))
    kw = {"policy": "CnnPolicy", **PPO_DEFAULTS, **(ppo_kwargs or {})}
    kw["batch_size"] = min(kw["batch_size"], kw["n_steps"] * train_envs)
    try:
        return train_sb3("ppo", env, path, timesteps, seed, **kw)
    finally:
        env.close()


_cache: dict = {}


def _policy(algo: str, model_path: str | None, deterministic: bool, chunk_seed: int):
    """``act(obs [n, 3, 64, 64]) -> int64 [n]``; seeded per chunk so a chunk re-runs identically."""
    if algo == "random":
        rng = np.random.default_rng(chunk_seed)
        return lambda obs: rng.integers(0, 15, size=len(obs), dtype=np.int64)
    import torch
    from stable_baselines3 import PPO

    if _cache.get("path") != model_path:
        _cache.clear()
        _cache.update(path=model_path, model=PPO.load(model_path, device="cpu"))
    model = _cache["model"]
    torch.manual_seed(chunk_seed)

    def act(obs):
        a, _ = model.predict(obs, deterministic=deterministic)
        return np.asarray(a, dtype=np.int64).reshape(-1)

    return act


def record_chunk(job: tuple) -> tuple[list[tuple[int, Episode]], int, float]:
    """Record the episodes ``wanted`` of one chunk (see the module doc); returns them, env steps and seconds.

    ``job = (game, algo, model_path, deterministic, batch, first, wanted, chunk_seed, env_kwargs)``.
    """
    from lram.envs.procgen_env import ProcgenBatch

    game, algo, model_path, deterministic, batch, first, wanted, chunk_seed, env_kwargs = job
    t0 = time.perf_counter()
    wanted = set(wanted)
    act = _policy(algo, model_path, deterministic, chunk_seed)
    env = ProcgenBatch(game, batch, chunk_seed, **env_kwargs)
    obs = env.reset()
    bufs = [([], [], []) for _ in range(batch)]
    level = env.level_seeds()
    out, finished, steps = [], 0, 0
    while len(out) < len(wanted):
        actions = act(obs)
        for i in range(batch):
            bufs[i][0].append(obs[i])
            bufs[i][1].append(actions[i])
        obs, rew, dones, infos = env.step(actions)
        steps += batch
        for i in range(batch):
            bufs[i][2].append(rew[i])
            if not dones[i]:
                continue
            index = first + finished
            finished += 1
            if index in wanted:
                s, a, r = bufs[i]
                d = np.zeros(len(r), dtype=bool)
                d[-1] = True
                info = {"algo": algo, "episode_index": index, "seed": int(chunk_seed), "level_seed": level[i],
                        "level_complete": infos[i]["level_complete"]}
                out.append((index, Episode(np.stack(s), np.asarray(a, dtype=np.int64), np.asarray(r, dtype=np.float32), d,
                                           info=info)))
            bufs[i] = ([], [], [])
            level[i] = infos[i]["level_seed"]
    env.close()
    return sorted(out, key=lambda x: x[0]), steps, time.perf_counter() - t0


def generate_procgen(out_root: str | Path, games: str | Sequence[str], episodes: int, algo: str = "ppo", *,
                     timesteps: int = 1_000_000, seed: int = 0, workers: int = 2, fmt: str = "hdf5", compress: bool = False,
                     deterministic: bool = False, batch: int = 8, chunk: int = 32, train_envs: int = 64,
                     num_levels: int = 200, start_level: int = 0, distribution_mode: str = "easy",
                     ppo_kwargs: dict | None = None, progress: bool = True) -> dict[str, dict]:
    """Make sure ``out_root/procgen-<game>/`` holds episodes ``0 .. episodes-1`` of every game; returns a summary."""
    from importlib.metadata import version

    from lram.envs.procgen_env import require_procgen, task_name

    require_procgen()
    game_list = [g.strip() for g in games.split(",") if g.strip()] if isinstance(games, str) else list(games)
    if not game_list:
        raise ValueError("games: expected at least one Procgen game")
    tasks = [task_name(g) for g in game_list]  # validates the names first
    if algo not in ALGOS:
        raise ValueError(f"algo: expected one of {list(ALGOS)}, got {algo!r}")
    check_common_args(episodes, seed, workers, timesteps, 1, fmt)
    batch, chunk, train_envs = (check_int(name, v, 1) for name, v in (("batch", batch), ("chunk", chunk),
                                                                      ("train_envs", train_envs)))
    env_kwargs = {"num_levels": int(num_levels), "start_level": int(start_level), "distribution_mode": distribution_mode}
    out_root = Path(out_root)
    summary = {}
    for task in tasks:
        game = task[len("procgen-"):]
        task_dir = out_root / task
        settings = {"generator": GENERATOR, "task": task, "game": game, "algo": algo, "seed": int(seed),
                    "timesteps": int(timesteps) if algo == "ppo" else None,
                    "deterministic": bool(deterministic) if algo == "ppo" else None, "format": fmt, "compress": bool(compress),
                    **env_kwargs, "batch": batch, "chunk": chunk, "train_envs": train_envs if algo == "ppo" else None,
                    "observations": "native RGB 64x64 -> [3,64,64] uint8 (channels-first); 15 actions",
                    "rewards": "raw game rewards",
                    "ppo_kwargs": {**PPO_DEFAULTS, **(ppo_kwargs or {})} if algo == "ppo" else None,
                    "procgen_version": version("procgen2")}
        check_settings(task_dir, settings, SETTING_KEYS)
        s: dict = {}
        model_path = None
        if algo == "ppo":
            model_path = task_dir / "expert_ppo.zip"
            seconds = ensure_expert(model_path, f"{task}: training PPO for {timesteps} steps on {train_envs} envs", progress,
                                    lambda path, game=game: train_ppo(game, path, timesteps, seed, train_envs=train_envs,
                                                                      env_kwargs=env_kwargs, ppo_kwargs=ppo_kwargs))
            if seconds is not None:
                s["train_seconds"] = seconds
        s.update(_record_task(task_dir, task, game, algo, model_path, deterministic, episodes, seed, batch, chunk, env_kwargs,
                              workers=workers, fmt=fmt, compress=compress, progress=progress))
        summary[task] = s
    return summary


def _record_task(task_dir: Path, task: str, game: str, algo: str, model_path: Path | None, deterministic: bool, episodes: int,
                 seed: int, batch: int, chunk: int, env_kwargs: dict, *, workers: int, fmt: str, compress: bool,
                 progress: bool) -> dict:
    """Write the missing episodes of ``task`` chunk by chunk (in worker processes when ``workers > 1``)."""
    todo, summary = missing_episodes(task_dir, episodes)
    if not todo:
        return summary
    by_chunk: dict[int, list[int]] = {}
    for i in todo:
        by_chunk.setdefault(i // chunk * chunk, []).append(i)
    jobs = [(game, algo, str(model_path) if model_path else None, bool(deterministic), batch, first, wanted,
             episode_seed(seed, task, first), env_kwargs) for first, wanted in sorted(by_chunk.items())]
    # spawn, not fork: a process forked after torch ran its OpenMP pool (PPO training) can deadlock
    with imap_jobs(record_chunk, jobs, workers, initializer=init_worker, cleanup=_cache.clear) as results:
        return write_results(task_dir, results, summary, len(todo), fmt=fmt, compress=compress, progress=progress,
                             desc=task, return_format=".2f")


def main(argv: Sequence[str] | None = None) -> int:
    """``lram data generate procgen OUT ...``: PPO-expert (or random) Procgen episodes, easy mode, levels 0..199."""
    p = make_parser("procgen", "Train PPO experts on Procgen games and record episodes ([3,64,64] uint8 RGB, 15 actions, "
                    "easy mode).", "output root; one folder procgen-<game> per game")
    p.add_argument("--games", default="bigfish", help="comma-separated games, 'train' (12) or 'heldout' (4) (default: bigfish)")
    p.add_argument("--algo", choices=ALGOS, default="ppo", help="expert: ppo or random")
    p.add_argument("--timesteps", type=int, default=1_000_000, help="PPO training steps per game (default: 1M; paper data: 25M)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per game (default: 10)")
    p.add_argument("--deterministic", action="store_true", help="PPO: argmax actions instead of sampling")
    p.add_argument("--batch", type=int, default=8, help="envs stepped together while recording (default: 8)")
    p.add_argument("--chunk", type=int, default=32, help="episodes per recording chunk / worker job (default: 32)")
    p.add_argument("--train-envs", type=int, default=64, help="envs stepped together while training PPO (default: 64)")
    p.add_argument("--num-levels", type=int, default=200, help="levels start-level .. start-level+N-1 (default: 200)")
    p.add_argument("--start-level", type=int, default=0)
    p.add_argument("--distribution-mode", default="easy", choices=("easy", "hard", "extreme", "memory", "exploration"))
    p.add_argument("--n-steps", type=int, help="PPO rollout steps per env (default: 256)")
    p.add_argument("--ppo-batch-size", type=int, help="PPO minibatch size (default: 2048)")
    add_recording_args(p)

    def generate(a):
        from lram.envs.procgen_env import HELDOUT_GAMES, TRAIN_GAMES

        games = {"train": ",".join(TRAIN_GAMES), "heldout": ",".join(HELDOUT_GAMES)}.get(a.games, a.games)
        ppo_kwargs = {k: v for k, v in (("n_steps", a.n_steps), ("batch_size", a.ppo_batch_size)) if v is not None}
        return generate_procgen(a.out, games, a.episodes, a.algo, timesteps=a.timesteps, deterministic=a.deterministic,
                                batch=a.batch, chunk=a.chunk, train_envs=a.train_envs, num_levels=a.num_levels,
                                start_level=a.start_level, distribution_mode=a.distribution_mode,
                                ppo_kwargs=ppo_kwargs or None, **recording_kwargs(a))

    return run_main(p, argv, generate)


if __name__ == "__main__":
    raise SystemExit(main())
