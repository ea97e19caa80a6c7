"""The skeleton every data generator shares: settings file, resumable per-task folders, argument checks,
worker processes, the episode-writing loop, and the command line.

A generator writes one folder per task holding episode files ``<index>.<fmt>`` and ``generator.json`` (its
settings).  Re-running the same command resumes: :func:`check_settings` refuses a folder made with other
settings, :func:`existing_episodes` lists what is there, and only the missing episodes are made.  The
RL-expert parts (:func:`record_episode`, :func:`train_sb3`, :func:`record_task`) serve Atari and DMControl.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lram.data.episode import DataError, Episode
from lram.utils.io import write_json_atomic

SETTINGS_FILE = "generator.json"
EPISODE_FILE = re.compile(r"^(\d+)\.(hdf5|h5|npz|pkl)$")
FORMATS = ("hdf5", "npz")
# the settings an RL-expert folder (Atari, DMControl) must share with a run that resumes it
EXPERT_SETTING_KEYS = ("generator", "task", "algo", "seed", "timesteps", "max_steps", "deterministic", "format")

# ----------------------------------------------------------------------------------------------- folders


def episode_seed(seed: int, task: str, index: int) -> int:
    """The env seed of episode ``index`` of ``task`` in a run with base ``seed`` (31-bit, distinct per task)."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(task.encode()), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def existing_episodes(task_dir: str | Path, pattern: re.Pattern = EPISODE_FILE) -> set[int]:
    """Indices of the episode files (``<index>.hdf5|npz|...``, any zero padding) in ``task_dir``."""
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        return set()
    return {int(m.group(1)) for p in task_dir.iterdir() if (m := pattern.match(p.name)) and p.is_file()}


def check_settings(task_dir: Path, settings: dict, keys: Sequence[str], *, initial: dict | None = None,
                   remedy: str = "delete the file to start the folder anew",
                   pattern: re.Pattern = EPISODE_FILE) -> dict | None:
    """Resume or start a task folder: returns the stored settings, or writes ``initial`` (default ``settings``).

    A folder whose ``generator.json`` differs from ``settings`` in one of ``keys``, or that holds episode
    files but no settings, is refused with a :class:`DataError`; ``remedy`` ends the unreadable-file message.
    """
    path = task_dir / SETTINGS_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(path, None, f"unreadable generator settings ({e}); {remedy}") from None
        if not isinstance(old, dict):
            raise DataError(path, None, f"expected a JSON object, got {type(old).__name__}")
        for key in keys:
            if old.get(key) != settings.get(key):
                raise DataError(path, key, f"this folder was generated with {key}={old.get(key)!r}, this run asks for "
                                f"{settings.get(key)!r}; resume with the same settings or write to another output folder")
        return old
    if existing_episodes(task_dir, pattern):
        raise DataError(task_dir, None, f"holds episode files but no {SETTINGS_FILE}: not a folder this generator can resume")
    task_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, settings if initial is None else initial)
    return None


def missing_episodes(task_dir: Path, episodes: int) -> tuple[list[int], dict]:
    """The indices ``0 .. episodes-1`` not yet in ``task_dir``, and a fresh task summary."""
    have = existing_episodes(task_dir)
    todo = [i for i in range(episodes) if i not in have]
    summary = {"requested": episodes, "existing": episodes - len(todo), "written": 0, "mean_return": float("nan"),
               "steps_per_s": float("nan")}
    return todo, summary


# ----------------------------------------------------------------------------------------------- arguments


def is_int(v) -> bool:
    """A Python or NumPy integer (not a bool)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_int(name: str, v, minimum: int, expected: str | None = None) -> int:
    """``int(v)``, or a ValueError ``name: expected <expected>, got v`` (default: ``an int >= minimum``)."""
    if not is_int(v) or v < minimum:
        raise ValueError(f"{name}: expected {expected or f'an int >= {minimum}'}, got {v!r}")
    return int(v)


def check_format(fmt, formats: Sequence[str] = FORMATS) -> None:
    if fmt not in formats:
        raise ValueError(f"fmt: expected {' or '.join(repr(f) for f in formats)}, got {fmt!r}")


def check_common_args(episodes, seed, workers, timesteps, max_steps, fmt) -> None:
    """Clear ValueErrors for the arguments shared by the RL-expert generators."""
    for name, v, lo in (("episodes", episodes, 1), ("seed", seed, 0), ("workers", workers, 0), ("timesteps", timesteps, 1),
                        ("max_steps", max_steps, 1)):
        check_int(name, v, lo)
    check_format(fmt)


# ----------------------------------------------------------------------------------------------- processes


def mp_context(method: str):
    """The multiprocessing context ``method``; 'fork' falls back to 'spawn' where fork does not exist."""
    if method == "fork" and "fork" not in mp.get_all_start_methods():
        method = "spawn"
    return mp.get_context(method)


def init_worker() -> None:
    """One torch thread per worker process (the processes already use every core)."""
    import torch

    torch.set_num_threads(1)


@contextmanager
def imap_jobs(fn: Callable, jobs: Sequence, workers: int, *, method: str = "spawn", initializer: Callable | None = None,
              cleanup: Callable[[], None] | None = None) -> Iterator[Iterable]:
    """``fn(job)`` for every job, in order: in this process if ``workers`` <= 1 or there is one job, else in
    a pool of ``min(workers, len(jobs))`` processes (terminated on exit); ``cleanup()`` runs on exit."""
    pool = None
    try:
        if workers > 1 and len(jobs) > 1:
            pool = mp_context(method).Pool(min(workers, len(jobs)), initializer=initializer)
            yield pool.imap(fn, jobs, chunksize=1)
        else:
            yield map(fn, jobs)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if cleanup is not None:
            cleanup()


def write_results(task_dir: Path, results: Iterable[tuple[list[tuple[int, Episode]], int, float]], summary: dict,
                  total: int, *, fmt: str, compress: bool, stem_digits: int | None = None, progress: bool = True,
                  desc: str = "", return_format: str = ".1f") -> dict:
    """Write ``(episodes [(index, episode)], env steps, seconds)`` chunks into ``task_dir`` (paper layout).

    Fills ``summary``'s written / mean_return / steps_per_s (per busy process second) and returns it.
    """
    from lram.data.storage import PaperWriter

    returns, steps, busy = [], 0, 0.0
    with PaperWriter(task_dir, fmt=fmt, compress=compress, stem_digits=stem_digits, progress=False) as writer, \
            tqdm(total=total, unit="ep", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for chunk, n, seconds in results:
            for i, ep in chunk:
                writer.write(ep, stem=str(i).zfill(stem_digits or 0))
                summary["written"] += 1
                returns.append(ep.total_return)
            steps += n
            busy += seconds
            bar.update(len(chunk))
            bar.set_postfix(ret=f"{np.mean(returns):{return_format}}")
    summary["mean_return"] = float(np.mean(returns))
    summary["steps_per_s"] = steps / max(busy, 1e-9)
    return summary


# ----------------------------------------------------------------------------------------------- RL experts


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


def ensure_expert(path: Path, message: str, progress: bool, train: Callable, *args, **kwargs) -> float | None:
    """Run ``train(path, *args, **kwargs)`` unless an expert is saved at ``path`` (resume); returns its seconds or None."""
    if path.is_file():
        return None
    t0 = time.perf_counter()
    if progress:
        print(message, flush=True)
    train(path, *args, **kwargs)
    return time.perf_counter() - t0


def train_sb3_on(path: Path, algo: str, make_env: Callable, timesteps: int, seed: int, **kwargs) -> None:
    """:func:`train_sb3` on a fresh ``make_env()``, closed afterwards."""
    env = make_env()
    train_sb3(algo, env, path, timesteps, seed, **kwargs)
    env.close()


def sb3_actor(model, deterministic: bool):
    """``act(obs)`` from an SB3 model (one observation at a time)."""

    def act(obs):
        a, _ = model.predict(obs, deterministic=deterministic)
        return a

    return act


_worker_cache: dict = {}


def _close_cached_envs() -> None:
    for env, *_ in _worker_cache.values():
        env.close()
    _worker_cache.clear()


def _record_chunk(job: tuple) -> tuple[list[tuple[int, Episode]], int, float]:
    """Worker: ``job = (builder, args, indices, seeds)``; ``builder(*args)`` -> (env, act, max_steps, discrete, info)."""
    builder, args, indices, seeds = job
    key = (builder.__module__, builder.__name__, args)
    if key not in _worker_cache:
        _close_cached_envs()
        _worker_cache[key] = builder(*args)
    env, act, max_steps, discrete, info = _worker_cache[key]
    t0 = time.perf_counter()
    out = [(i, record_episode(env, act, s, max_steps, discrete, {**info, "episode_index": i})) for i, s in zip(indices, seeds)]
    return out, sum(len(ep) for _, ep in out), time.perf_counter() - t0


def record_task(task_dir: Path, task: str, builder: Callable, args: tuple, episodes: int, seed: int, *, workers: int = 2,
                fmt: str = "hdf5", compress: bool = False, stem_digits: int | None = None, chunk_size: int = 1,
                progress: bool = True, desc: str | None = None) -> dict:
    """Write the missing episodes ``0 .. episodes-1`` of ``task`` into ``task_dir`` (paper layout).

    ``builder(*args)`` (a module-level function, so worker processes can rebuild it) returns
    ``(env, act, max_steps, discrete, info)``.  Returns requested / existing / written / mean_return / steps_per_s.
    """
    todo, summary = missing_episodes(task_dir, episodes)
    if not todo:
        return summary
    jobs = [(builder, args, todo[k:k + chunk_size], [episode_seed(seed, task, i) for i in todo[k:k + chunk_size]])
            for k in range(0, len(todo), chunk_size)]
    # spawn, not fork: a process forked after torch ran its OpenMP thread pool (SB3 training) can deadlock
    with imap_jobs(_record_chunk, jobs, workers, initializer=init_worker, cleanup=_close_cached_envs) as results:
        return write_results(task_dir, results, summary, len(todo), fmt=fmt, compress=compress, stem_digits=stem_digits,
                             progress=progress, desc=desc or task)


def expert_task(task_dir: Path, task: str, settings: dict, keys: Sequence[str], builder: Callable, name: str, algo: str,
                sb3_algo: str | None, make_env: Callable, sb3_kwargs: dict, *, timesteps: int, episodes: int, seed: int,
                max_steps: int, deterministic: bool, workers: int, fmt: str, compress: bool, progress: bool,
                stem_digits: int | None = None) -> dict:
    """One task of an RL-expert generator: check the folder's settings, train the SB3 expert ``sb3_algo`` (unless
    None or already saved as ``expert_<sb3_algo>.zip``) on ``make_env()``, then record the missing episodes with
    ``builder(name, algo, model_path, max_steps, deterministic)``.  Returns the :func:`record_task` summary
    (plus ``train_seconds`` when it trained)."""
    check_settings(task_dir, settings, keys)
    out: dict = {}
    model_path = None
    if sb3_algo is not None:
        model_path = task_dir / f"expert_{sb3_algo}.zip"
        seconds = ensure_expert(model_path, f"{task}: training {sb3_algo.upper()} for {timesteps} steps", progress,
                                train_sb3_on, sb3_algo, make_env, timesteps, seed, **sb3_kwargs)
        if seconds is not None:
            out["train_seconds"] = seconds
    args = (name, algo, str(model_path) if model_path else None, max_steps, bool(deterministic))
    out.update(record_task(task_dir, task, builder, args, episodes, seed, workers=workers, fmt=fmt, compress=compress,
                           stem_digits=stem_digits, progress=progress, desc=task))
    return out


# ----------------------------------------------------------------------------------------------- command line


def format_summary(summary: dict[str, dict]) -> str:
    """A plain-text table of a generator summary."""
    lines = [f"{'task':<28}{'episodes':>9}{'new':>6}{'return':>10}{'steps/s':>9}"]
    for task, s in summary.items():
        ret = f"{s['mean_return']:.1f}" if s["written"] else "-"
        sps = f"{s['steps_per_s']:.0f}" if s["written"] else "-"
        lines.append(f"{task:<28}{s['existing'] + s['written']:>9}{s['written']:>6}{ret:>10}{sps:>9}")
    return "\n".join(lines)


def make_parser(domain: str, description: str, out_help: str) -> argparse.ArgumentParser:
    """The parser of ``lram data generate <domain> OUT ...``, with its positional output root."""
    p = argparse.ArgumentParser(prog=f"lram data generate {domain}",
                                description=f"{description} Resumable: re-run the same command to complete an interrupted run.")
    p.add_argument("out", type=Path, help=out_help)
    return p


def add_recording_args(p: argparse.ArgumentParser, *, fmt: str = "hdf5", workers: str = "recording processes") -> None:
    """The options every generator has: --workers, --seed, --format, --compress, --quiet."""
    p.add_argument("--workers", type=int, default=2, help=f"{workers} (default: 2; 0/1 = in-process)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default=fmt, help=f"episode file format (default: {fmt})")
    p.add_argument("--compress", action="store_true", help="compress the episode files (gzip level 1 for hdf5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def recording_kwargs(args: argparse.Namespace) -> dict:
    """The generator keywords of the :func:`add_recording_args` options (``progress`` = not ``--quiet``)."""
    return {"seed": args.seed, "workers": args.workers, "fmt": args.fmt, "compress": args.compress, "progress": not args.quiet}


def run_main(p: argparse.ArgumentParser, argv: Sequence[str] | None, generate: Callable[[argparse.Namespace], dict],
             report: Callable[[dict, argparse.Namespace], str] = lambda summary, args: format_summary(summary)) -> int:
    """Parse ``argv``, run ``generate(args)`` and print ``report(summary, args)``; a bad argument or a missing
    package exits with status 2 and a one-line error (DataError is a ValueError)."""
    args = p.parse_args(argv)
    try:
        summary = generate(args)
    except (ValueError, ImportError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(report(summary, args))
    return 0
