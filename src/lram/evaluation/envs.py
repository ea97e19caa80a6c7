"""Environments for online evaluation, built from a (domain, task folder name) pair.

The observation of every environment here is exactly what the domain's data holds for that task (same
preprocessing as the generators), so a policy trained on the data can act in it:

=========== ===================================== =============================================================
domain      task folder (as the generators name)   environment
=========== ===================================== =============================================================
darkroom    ``darkroom_<gx>_<gy>`` (``darkroomN_``) :class:`lram.envs.darkroom.DarkRoom` with that goal
            (``darkroomNtT_``: N x N, T steps)
metaworld   ``reach-v3`` ...                       :func:`lram.envs.metaworld.make_metaworld_env` (200 steps)
dmcontrol   ``walker-run`` ...                     :class:`lram.envs.dmcontrol.DMControlEnv` (204-d, 1000 steps)
atari       ``atari-freeway`` ...                  :func:`lram.envs.atari.make_atari_env` (paper preprocessing)
procgen     ``procgen-bigfish`` ...                :class:`lram.envs.procgen_env.ProcgenEnv` (easy, levels 0-199)
=========== ===================================== =============================================================

Simulators are optional extras: a missing one raises ImportError naming what to install.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import gymnasium as gym


def _darkroom(task: str, seed: int) -> gym.Env:
    from lram.envs.darkroom import DarkRoom

    m = re.fullmatch(r"darkroom(?:(\d+)(?:t(\d+))?)?_(\d+)_(\d+)", task)
    if m is None:
        raise ValueError(f"task: expected a Dark-Room task folder 'darkroom_<gx>_<gy>', got {task!r}")
    size, max_steps = int(m.group(1) or 10), int(m.group(2) or 100)
    return DarkRoom(size=size, goal=(int(m.group(3)), int(m.group(4))), max_steps=max_steps)


def _metaworld(task: str, seed: int) -> gym.Env:
    from lram.envs.metaworld import make_metaworld_env

    return make_metaworld_env(task, seed=seed)


def _dmcontrol(task: str, seed: int) -> gym.Env:
    from lram.envs.dmcontrol import DMControlEnv

    return DMControlEnv(task)


def _atari(task: str, seed: int) -> gym.Env:
    from lram.envs.atari import make_atari_env

    if not task.startswith("atari-"):
        raise ValueError(f"task: expected an Atari task folder 'atari-<game>', got {task!r}")
    return make_atari_env(task[len("atari-"):])


def _procgen(task: str, seed: int) -> gym.Env:
    from lram.envs.procgen_env import ProcgenEnv

    if not task.startswith("procgen-"):
        raise ValueError(f"task: expected a Procgen task folder 'procgen-<game>', got {task!r}")
    return ProcgenEnv(task[len("procgen-"):])


ENV_BUILDERS: dict[str, Callable[[str, int], gym.Env]] = {
    "darkroom": _darkroom,
    "metaworld": _metaworld,
    "dmcontrol": _dmcontrol,
    "atari": _atari,
    "procgen": _procgen,
}


def make_eval_env(domain: str, task: str, seed: int = 0) -> gym.Env:
    """The environment of ``task`` (a task folder name) in ``domain``; ValueError for an unknown domain."""
    if domain not in ENV_BUILDERS:
        raise ValueError(f"domain: no evaluation environment for {domain!r}; known: {', '.join(ENV_BUILDERS)}")
    return ENV_BUILDERS[domain](task, seed)
