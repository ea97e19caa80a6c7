"""Data-making steps the experiments share (each generator is resumable, so a re-run keeps what exists)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _dmcontrol_task(argv: list[str]) -> None:
    """One DMControl task's SAC expert and episodes, on one thread (SAC's small networks run far slower on
    two threads than on one when the cores are busy)."""
    import torch

    from lram.data.generators import dmcontrol

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dmcontrol.main(argv)
    finally:
        torch.set_num_threads(threads)


def dmcontrol_sac(out: Path, tasks: Sequence[str], *, timesteps: int, episodes: int, max_steps: int,
                  quiet: bool) -> None:
    """SAC experts and their episodes for DMControl ``tasks`` under ``out``; SAC is one core's work per task,
    so two tasks train side by side."""
    jobs = [[str(out), "--tasks", task, "--algo", "sac", "--timesteps", str(timesteps), "--episodes", str(episodes),
             "--max-steps", str(max_steps), "--workers", "1", *(["--quiet"] if quiet else [])] for task in tasks]
    if len(jobs) == 1:
        _dmcontrol_task(jobs[0])
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(2, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_dmcontrol_task, jobs))
