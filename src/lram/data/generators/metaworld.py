"""Meta-World expert trajectories from the scripted policies of metaworld 3.x (all 50 v3 tasks).

The paper's Meta-World data are SAC replay buffers (L2M, HF ``ml-jku/meta-world``) that cannot be
downloaded here; the scripted experts (``metaworld.policies``) give real expert data instead, optionally
made more diverse with Gaussian action noise.

Per task ``<out_root>/<task>/`` holds one file per episode, ``<index>.<fmt>`` written by the storage writer
(``lram.data.storage.PaperWriter`` by default), plus ``generator.json`` with the settings. Episode ``i`` of a
task is fully determined by ``(seed, task, i)``:

* its episode seed ``episode_seed(seed, task, i)`` (stored in ``info["seed"]``) seeds the env reset, so the
  goal and initial object positions are a fresh uniform draw from the task's random-reset space (see
  :mod:`lram.envs.metaworld`), and seeds the action noise;
* the recorded ``actions`` are those executed (expert action + noise, clipped to [-1, 1], float32), so
  ``make_metaworld_env(task).reset(seed=info["seed"])`` followed by the stored actions reproduces the
  stored ``states`` exactly;
* ``dones`` are all False: Meta-World never terminates, the 200-step limit is a truncation;
* ``info = {"success": any step succeeded, "seed", "task", "first_success_step" (-1 if none), "action_noise"}``.

Resuming: episodes whose file exists are skipped, so re-running the same command after a kill completes
the set (the writer writes each file atomically, so no half-written episode is ever left).  Re-running with
other settings (seed, noise, steps, format) into the same folder is refused.

Rollouts run in ``workers`` processes over (task, chunk of episodes); the parent process does all the
writing, task after task, so each task folder has exactly one writer.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lram.data.episode import Episode
from lram.data.generators._common import SETTINGS_FILE as SETTINGS_FILE  # public here (tests)
from lram.data.generators._common import (
    add_recording_args,
    check_format,
    check_int,
    check_settings,
    imap_jobs,
    make_parser,
    missing_episodes,
    recording_kwargs,
    run_main,
)
from lram.data.generators._common import existing_episodes as existing_episodes  # public here (tests)
from lram.envs.metaworld import (
    ACT_DIM,
    EPISODE_STEPS,
    OBS_DIM,
    TASK_SETS,
    MetaWorldEnv,
    expert_action,
    expert_policy,
    require_metaworld,
    resolve_tasks,
)

GENERATOR = "metaworld-scripted-expert"
SETTING_KEYS = ("generator", "seed", "action_noise", "max_steps", "format")
_NOISE_STREAM = 0x6E6F697365  # separates the noise RNG from the env's goal RNG (same episode seed)

WriterFactory = Callable[[Path], AbstractContextManager]


def episode_seed(seed: int, task: str, index: int) -> int:
    """The seed of episode ``index`` of ``task`` in a run with base ``seed`` (63-bit, distinct per task)."""
    hi, lo = np.random.SeedSequence([seed, zlib.crc32(task.encode()), index]).generate_state(2, dtype=np.uint32)
    return (int(hi) & 0x7FFFFFFF) << 32 | int(lo)


def rollout_expert(env: MetaWorldEnv, policy, seed: int, action_noise: float = 0.0) -> Episode:
    """One episode of the scripted expert in ``env`` from episode seed ``seed``, as an :class:`Episode`.

    With ``action_noise`` > 0, N(0, action_noise^2) noise (its own RNG, seeded by ``seed``) is added to each
    expert action before clipping to [-1, 1]; the stored action is the one executed.
    """
    obs, _ = env.reset(seed=seed)
    noise_rng = np.random.default_rng([seed, _NOISE_STREAM])
    T = env.max_steps
    states = np.zeros((T, OBS_DIM), dtype=np.float32)
    actions = np.zeros((T, ACT_DIM), dtype=np.float32)
    rewards = np.zeros(T, dtype=np.float32)
    dones = np.zeros(T, dtype=bool)
    first_success = -1
    n = T
    for t in range(T):
        states[t] = obs
        a = expert_action(policy, obs)
        if action_noise > 0:
            a = np.clip(a + noise_rng.normal(0.0, action_noise, ACT_DIM).astype(np.float32), -1.0, 1.0)
        actions[t] = a
        obs, reward, terminated, truncated, info = env.step(a)
        rewards[t] = reward
        if info["success"] and first_success < 0:
            first_success = t
        if terminated:  # never happens in Meta-World; kept for the env contract
            dones[t] = True
        if terminated or truncated:
            n = t + 1
            break
    info = {
        "success": first_success >= 0,
        "seed": int(seed),
        "task": env.task_name,
        "first_success_step": first_success,
        "action_noise": float(action_noise),
    }
    return Episode(states[:n], actions[:n], rewards[:n], dones[:n], info=info)


# ----------------------------------------------------------------------------------------------- workers

_worker_env: dict[tuple[str, int], tuple[MetaWorldEnv, object]] = {}


def _close_envs() -> None:
    for env, _ in _worker_env.values():
        env.close()
    _worker_env.clear()


def _env_and_policy(task: str, max_steps: int) -> tuple[MetaWorldEnv, object]:
    """The process's env + expert for ``task`` (only the latest task's env is kept open)."""
    key = (task, max_steps)
    if key not in _worker_env:
        _close_envs()
        _worker_env[key] = (MetaWorldEnv(task, max_steps=max_steps), expert_policy(task))
    return _worker_env[key]


def _rollout_chunk(job: tuple[str, list[int], int, float, int]) -> tuple[str, list[tuple[int, Episode]], float]:
    """Roll out episodes ``indices`` of ``task``; returns (task, [(index, episode)], seconds spent stepping)."""
    task, indices, seed, action_noise, max_steps = job
    env, policy = _env_and_policy(task, max_steps)
    t0 = time.perf_counter()
    out = [(i, rollout_expert(env, policy, episode_seed(seed, task, i), action_noise)) for i in indices]
    return task, out, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------- driver


def _default_writer_factory(fmt: str, compress: bool) -> WriterFactory:
    def factory(task_dir: Path):
        from lram.data.storage import PaperWriter

        return PaperWriter(task_dir, fmt=fmt, compress=compress)

    return factory


def _check_args(episodes_per_task, action_noise, seed, workers, max_steps, chunk_size, fmt) -> None:
    check_int("episodes_per_task", episodes_per_task, 1, "a positive int")
    if (
        isinstance(action_noise, bool)
        or not isinstance(action_noise, (int, float))
        or not math.isfinite(action_noise)
        or action_noise < 0
    ):
        raise ValueError(f"action_noise: expected a finite float >= 0 (the noise std), got {action_noise!r}")
    check_int("seed", seed, 0, "a non-negative int")
    check_int("workers", workers, 0, "an int >= 0 (0 or 1: no subprocesses)")
    check_int("max_steps", max_steps, 1, "a positive int")
    check_int("chunk_size", chunk_size, 1, "a positive int")
    check_format(fmt)


def generate_metaworld(
    out_root: str | Path,
    tasks: str | Sequence[str],
    episodes_per_task: int,
    action_noise: float = 0.0,
    seed: int = 0,
    workers: int = 2,
    writer_factory: WriterFactory | None = None,
    *,
    fmt: str = "hdf5",
    compress: bool = False,
    max_steps: int = EPISODE_STEPS,
    chunk_size: int = 4,
    progress: bool = True,
) -> dict[str, dict]:
    """Make sure ``out_root/<task>/`` holds episodes ``0 .. episodes_per_task-1`` of the scripted expert.

    ``tasks``: names, a comma-separated string, or a set ('mt50', 'ml45-train', 'ml45-test').
    ``writer_factory(task_dir)`` returns a context manager with ``write(episode, stem=None)``; by default
    ``PaperWriter(task_dir, fmt=fmt, compress=compress)``.  Missing episodes are generated, existing ones
    kept (files with other indices, e.g. from a larger earlier run, are left alone).  Returns per task:
    requested, existing, written, successes, success_rate and mean_return (of the written episodes),
    steps_per_s (per process).
    """
    task_list = resolve_tasks(tasks)
    _check_args(episodes_per_task, action_noise, seed, workers, max_steps, chunk_size, fmt)
    require_metaworld()
    from importlib.metadata import version

    out_root = Path(out_root)
    factory = writer_factory or _default_writer_factory(fmt, compress)
    jobs: list[tuple[str, list[int], int, float, int]] = []
    summary: dict[str, dict] = {}
    for task in task_list:
        task_dir = out_root / task
        settings = {
            "generator": GENERATOR, "task": task, "seed": int(seed), "action_noise": float(action_noise),
            "max_steps": int(max_steps), "format": fmt, "compress": bool(compress),
            "metaworld_version": version("metaworld"),
            "goals": "fresh uniform draw from the task's random-reset space per episode, seeded by the episode seed",
        }  # fmt: skip
        check_settings(task_dir, settings, SETTING_KEYS)
        todo, s = missing_episodes(task_dir, episodes_per_task)
        summary[task] = {**s, "successes": 0, "success_rate": float("nan")}
        for k in range(0, len(todo), chunk_size):
            jobs.append((task, todo[k : k + chunk_size], int(seed), float(action_noise), int(max_steps)))

    jobs_per_task = {t: sum(1 for j in jobs if j[0] == t) for t in task_list}
    returns: dict[str, list[float]] = {t: [] for t in task_list}
    busy: dict[str, list[float]] = {t: [0.0, 0.0] for t in task_list}  # steps, seconds
    total = sum(len(j[1]) for j in jobs)
    with tqdm(total=total, unit="ep", desc="metaworld", disable=not progress, dynamic_ncols=True) as bar:
        # fork: workers inherit the imported modules (a spawned worker would spend ~2 s importing torch/lram)
        with imap_jobs(_rollout_chunk, jobs, workers, method="fork", cleanup=_close_envs) as results:
            for task in task_list:
                if not jobs_per_task[task]:
                    continue
                s = summary[task]
                with factory(out_root / task) as writer:
                    for _ in range(jobs_per_task[task]):
                        got_task, episodes, seconds = next(results)
                        assert got_task == task, (got_task, task)  # imap keeps the job order
                        for index, ep in episodes:
                            writer.write(ep, stem=str(index))
                            s["written"] += 1
                            s["successes"] += int(ep.info["success"])
                            returns[task].append(ep.total_return)
                            busy[task][0] += len(ep)
                        busy[task][1] += seconds
                        bar.update(len(episodes))
                        bar.set_postfix(task=task, success=f"{s['successes']}/{s['written']}")
                s["success_rate"] = s["successes"] / s["written"]
                s["mean_return"] = float(np.mean(returns[task]))
                s["steps_per_s"] = busy[task][0] / max(busy[task][1], 1e-9)
    return summary


def format_summary(summary: dict[str, dict]) -> str:
    """A plain-text table of :func:`generate_metaworld`'s summary."""
    lines = [f"{'task':<30}{'episodes':>9}{'new':>6}{'success':>9}{'return':>9}{'steps/s':>9}"]
    for task, s in summary.items():
        total = s["existing"] + s["written"]
        rate = f"{s['success_rate']:.2f}" if s["written"] else "-"
        ret = f"{s['mean_return']:.0f}" if s["written"] else "-"
        sps = f"{s['steps_per_s']:.0f}" if s["written"] else "-"
        lines.append(f"{task:<30}{total:>9}{s['written']:>6}{rate:>9}{ret:>9}{sps:>9}")
    written = sum(s["written"] for s in summary.values())
    if written:
        rate = sum(s["successes"] for s in summary.values()) / written
        lines.append(f"{'all (new episodes)':<30}{'':>9}{written:>6}{rate:>9.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``lram data generate metaworld OUT ...``: scripted-expert episodes for Meta-World v3 tasks."""
    p = make_parser("metaworld", "Generate Meta-World expert episodes (scripted policies, goal-visible MT1 envs, 200 steps, "
                    "a random goal per episode).", "output root; one folder per task is created in it")
    p.add_argument(
        "--tasks", default="ml45-train",
        help=f"a task set ({', '.join(TASK_SETS)}) or comma-separated v3 task names (default: ml45-train)",
    )  # fmt: skip
    p.add_argument("--episodes", type=int, default=100, help="episodes per task (default: 100)")
    p.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise added to the expert's actions (default: 0)")
    p.add_argument("--max-steps", type=int, default=EPISODE_STEPS, help=f"episode length (default: {EPISODE_STEPS})")
    add_recording_args(p, workers="rollout processes")
    return run_main(p, argv, lambda a: generate_metaworld(
        a.out, a.tasks, a.episodes, action_noise=a.noise, max_steps=a.max_steps, **recording_kwargs(a)))

if __name__ == "__main__":
    raise SystemExit(main())
