"""DMControl expert episodes: an SB3 SAC agent (or a random policy) recorded in the unified 204-d layout.

``lram data generate dmcontrol OUT --tasks dmc11 --algo sac --timesteps 1000000 --episodes 100``

Envs are :class:`lram.envs.dmcontrol.DMControlEnv` (unified 204-d float32 observations, [-1, 1] actions,
1000-step episodes).  Experts:

* ``sac``: SB3 SAC ``MlpPolicy`` trained on the 204-d observations for ``--timesteps`` steps (SB3 defaults,
  ``learning_starts`` = min(10000, timesteps / 10)), saved as ``<task>/expert_sac.zip`` and reused on resume;
  recorded with the mean action (``--stochastic`` to sample).  The paper's data came from SAC runs of 10M
  steps per task; ~0.5-1M steps give good play on most tasks (SAC runs at ~70 steps/s on one core here);
* ``random``: uniform actions in [-1, 1] (a baseline).

Layout (paper layout via ``PaperWriter``, plain integer stems)::

    <out>/<domain>-<task>/<i>.hdf5   states float32 [1000, 204], actions float32 [1000, a], rewards float32 [1000],
                                     dones all False (time-limit truncation)
    <out>/<domain>-<task>/generator.json

Resuming works as for :mod:`lram.data.generators.atari` (the shared machinery is in ``_common``).
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

GENERATOR = "dmcontrol-expert"
ALGOS = ("sac", "random")


def _build_dmc(task: str, algo: str, model_path: str | None, max_steps: int, deterministic: bool):
    from lram.envs.dmcontrol import DMControlEnv

    env = DMControlEnv(task, max_steps=max_steps)
    if algo == "random":
        rng = np.random.default_rng(zlib.crc32(task.encode()))
        shape = env.action_space.shape
        act = lambda obs: rng.uniform(-1.0, 1.0, shape).astype(np.float32)  # noqa: E731
    else:
        from stable_baselines3 import SAC

        act = sb3_actor(SAC.load(model_path, device="cpu"), deterministic)
    return env, act, max_steps, False, {"algo": algo, "task": task}


def generate_dmcontrol(out_root: str | Path, tasks: str | Sequence[str], episodes: int, algo: str = "sac", *,
                       timesteps: int = 1_000_000, seed: int = 0, workers: int = 2, fmt: str = "hdf5", compress: bool = False,
                       max_steps: int = 1000, deterministic: bool = True, sac_kwargs: dict | None = None,
                       progress: bool = True) -> dict[str, dict]:
    """Make sure ``out_root/<task>/`` holds expert episodes ``0 .. episodes-1`` of every task; returns a summary."""
    from importlib.metadata import version

    from lram.envs.dmcontrol import DMControlEnv, require_dm_control, resolve_tasks

    task_list = resolve_tasks(tasks)
    if algo not in ALGOS:
        raise ValueError(f"algo: expected one of {list(ALGOS)}, got {algo!r}")
    check_common_args(episodes, seed, workers, timesteps, max_steps, fmt)
    require_dm_control()
    out_root = Path(out_root)
    summary = {}
    for task in task_list:
        task_dir = out_root / task
        settings = {"generator": GENERATOR, "task": task, "algo": algo, "seed": int(seed),
                    "timesteps": int(timesteps) if algo == "sac" else None, "max_steps": int(max_steps),
                    "deterministic": bool(deterministic) if algo == "sac" else None, "format": fmt, "compress": bool(compress),
                    "observation": "unified 204-d DMC layout (lram.envs.dmcontrol.OBS_KEY_DIMS)",
                    "sac_kwargs": sac_kwargs or {}, "dm_control_version": version("dm-control")}
        kw = {"learning_starts": min(10_000, max(1, timesteps // 10)), **(sac_kwargs or {})}
        summary[task] = expert_task(task_dir, task, settings, EXPERT_SETTING_KEYS, _build_dmc, task, algo,
                                    "sac" if algo == "sac" else None, functools.partial(DMControlEnv, task, max_steps=max_steps),
                                    kw, timesteps=timesteps, episodes=episodes, seed=seed, max_steps=max_steps,
                                    deterministic=deterministic, workers=workers, fmt=fmt, compress=compress,
                                    progress=progress)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``lram data generate dmcontrol OUT ...``: SAC-expert DMControl episodes in the unified 204-d layout."""
    p = make_parser("dmcontrol", "Train SAC experts on DMControl tasks and record 1000-step episodes with the unified "
                    "204-d observation.", "output root; one folder <domain>-<task> per task")
    p.add_argument("--tasks", default="dmc11", help="a set (dmc11, dmc5, dmc16) or comma-separated tasks (default: dmc11)")
    p.add_argument("--algo", choices=ALGOS, default="sac")
    p.add_argument("--timesteps", type=int, default=1_000_000, help="SAC training steps per task (default: 1M)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task (default: 10)")
    p.add_argument("--max-steps", type=int, default=1000, help="steps per episode (default: 1000)")
    p.add_argument("--stochastic", action="store_true", help="SAC: sample actions instead of the mean")
    add_recording_args(p)
    return run_main(p, argv, lambda a: generate_dmcontrol(
        a.out, a.tasks, a.episodes, a.algo, timesteps=a.timesteps, max_steps=a.max_steps, deterministic=not a.stochastic,
        **recording_kwargs(a)))


if __name__ == "__main__":
    raise SystemExit(main())
