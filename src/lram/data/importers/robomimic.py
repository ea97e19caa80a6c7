"""Import robomimic-style HDF5 files (MimicGen "core" datasets) into lram task folders.

Source layout (robomimic v0.3 / MimicGen)::

    data/demo_<i>/obs/<key>      [T, ...]   observations (low-dim [T, d] or images [T, H, W, C])
    data/demo_<i>/actions        [T, 7]     OSC pose + gripper, nominally in [-1, 1]
    data/demo_<i>/rewards        [T]        sparse task reward (1 where the task is solved)
    data/demo_<i>/dones          [T]
    data/demo_<i>.attrs["num_samples"] = T

lram states are the selected low-dim observation keys concatenated in sorted key order (spec 1.2: Mimicgen
uses robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos, object); by default every ``[T, d]`` key (images are
``[T, H, W, C]`` and left out).  Actions are clipped to [-1, 1].  With ``sparse_reward`` the reward is 1 at the
last step of a successful demo (one whose source rewards reach a positive value) and 0 elsewhere, as the
paper's ``prepare_data.py --sparse_reward``.  One file = one task; episode stems are the demo numbers and
``info`` keeps ``trj_id`` (the demo number) and ``success``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from lram.data.episode import DataError, Episode
from lram.data.importers._common import hdf5_files, write_episodes

_DEMO = re.compile(r"^demo_(\d+)$")


def _read(group: h5py.Group, name: str, source: str) -> np.ndarray:
    if name not in group:
        raise DataError(source, f"{group.name}/{name}".lstrip("/"), "missing")
    obj = group[name]
    if not isinstance(obj, h5py.Dataset):
        raise DataError(source, obj.name.lstrip("/"), "expected a dataset, found a group")
    try:
        return obj[()]
    except (OSError, ValueError, TypeError) as e:
        raise DataError(source, obj.name.lstrip("/"), f"unreadable ({e})") from None


def list_demos(f: h5py.File, source: str) -> list[tuple[int, str]]:
    """(demo number, group name) of every ``data/demo_<i>`` group, sorted by number."""
    if "data" not in f or not isinstance(f["data"], h5py.Group):
        raise DataError(source, "data", "missing: expected a robomimic file with a 'data' group of 'demo_<i>' groups")
    demos = sorted((int(m.group(1)), k) for k in f["data"] if (m := _DEMO.match(k)))
    if not demos:
        raise DataError(source, "data", "holds no 'demo_<i>' groups")
    return demos


def low_dim_keys(obs: h5py.Group) -> list[str]:
    """Sorted names of the ``[T, d]`` datasets of an ``obs`` group (the non-image keys)."""
    return sorted(k for k, v in obs.items() if isinstance(v, h5py.Dataset) and v.ndim == 2)


def read_demo(f: h5py.File, name: str, source: str, keys: Sequence[str] | None = None,
              sparse_reward: bool = False) -> Episode:
    """One ``data/<name>`` demo as an :class:`Episode` (states = ``keys`` concatenated in sorted order)."""
    g = f["data"][name]
    where = f"data/{name}"
    if "obs" not in g or not isinstance(g["obs"], h5py.Group):
        raise DataError(source, f"{where}/obs", "missing: expected a group of observation datasets")
    obs = g["obs"]
    keys = sorted(keys) if keys is not None else low_dim_keys(obs)
    if not keys:
        raise DataError(source, f"{where}/obs", "holds no low-dim ([T, d]) observation keys")
    actions = _read(g, "actions", source)
    n = len(actions)
    if "num_samples" in g.attrs and int(g.attrs["num_samples"]) != n:
        raise DataError(source, f"{where}/actions", f"has {n} steps but the demo's num_samples attribute says "
                        f"{int(g.attrs['num_samples'])}")
    parts = []
    for k in keys:
        a = np.asarray(_read(obs, k, source))
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[0] != n:
            raise DataError(source, f"{where}/obs/{k}", f"expected [{n}, d] low-dim values, got shape {list(a.shape)}")
        parts.append(a.astype(np.float32))
    states = np.concatenate(parts, axis=1)
    if actions.ndim != 2:
        raise DataError(source, f"{where}/actions", f"expected [T, a] continuous actions, got shape {list(actions.shape)}")
    rewards = np.asarray(_read(g, "rewards", source), dtype=np.float32).reshape(-1)
    dones = np.asarray(_read(g, "dones", source)).reshape(-1).astype(bool) if "dones" in g else None
    for field, a in (("rewards", rewards), ("dones", dones)):
        if a is not None and len(a) != n:
            raise DataError(source, f"{where}/{field}", f"expected {n} steps (the length of actions), got {len(a)}")
    success = bool(n and rewards.max() > 0)
    if sparse_reward:
        rewards = np.zeros(n, dtype=np.float32)
        rewards[-1] = float(success)
    num = int(_DEMO.match(name).group(1))
    return Episode(states, np.clip(actions.astype(np.float32), -1.0, 1.0), rewards, dones,
                   info={"trj_id": num, "success": success, "source": name})


def import_file(src: str | os.PathLike, dst: str | os.PathLike, *, low_dim_keys: Sequence[str] | None = None,
                sparse_reward: bool = False, layout: str = "paper", progress: bool = True, **writer_options) -> dict:
    """Import every demo of one robomimic HDF5 file into the task folder ``dst`` (resumable)."""
    src = Path(src)
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise DataError(src, None, f"not a readable HDF5 file ({e})") from None
    with f:
        demos = list_demos(f, str(src))
        items = ((str(i), lambda name=name: read_demo(f, name, str(src), low_dim_keys, sparse_reward)) for i, name in demos)
        return write_episodes(dst, items, total=len(demos), layout=layout, desc=src.stem, progress=progress, **writer_options)


def import_robomimic(src: str | os.PathLike, dst_root: str | os.PathLike, *, task: str | None = None,
                     low_dim_keys: Sequence[str] | None = None, sparse_reward: bool = False, layout: str = "paper",
                     progress: bool = True, **writer_options) -> dict[str, dict]:
    """Import one robomimic file (or every ``.hdf5`` under a folder) into ``dst_root/<task>`` folders.

    Task names are file stems (or paths relative to ``src``); ``task`` renames a single file's task.
    """
    files = hdf5_files(src)
    if task is not None:
        if len(files) != 1:
            raise ValueError(f"task: only for a single source file; {src} holds {len(files)}")
        files = {task: next(iter(files.values()))}
    return {name: import_file(p, Path(dst_root) / name, low_dim_keys=low_dim_keys, sparse_reward=sparse_reward,
                              layout=layout, progress=progress, **writer_options) for name, p in files.items()}
