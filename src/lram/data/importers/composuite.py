"""Import CompoSuite offline datasets (Dryad "expert" HDF5 files, D4RL style) into lram task folders.

Source: one HDF5 file per task with flat arrays over all episodes::

    observations [N, d]   actions [N, 8]   rewards [N]   terminals [N]   timeouts [N]

An episode ends at a step where ``terminals | timeouts`` is set; steps after the last such step (an
unfinished episode) are dropped.  ``dones`` keeps ``terminals`` (a timeout is not a terminal state).  Actions
are clipped to [-1, 1].  Episode stems are 0, 1, ... in file order and ``info["trj_id"]`` keeps that order.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from lram.data.episode import DataError, Episode
from lram.data.importers._common import hdf5_files, split_points, write_episodes

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def read_flat(src: str | os.PathLike) -> dict[str, np.ndarray]:
    """The five D4RL arrays of a CompoSuite file, checked for presence, shape and equal length."""
    src = Path(src)
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise DataError(src, None, f"not a readable HDF5 file ({e})") from None
    out = {}
    with f:
        for k in KEYS:
            if k not in f or not isinstance(f[k], h5py.Dataset):
                raise DataError(src, k, f"missing: expected the D4RL-style datasets {', '.join(KEYS)}")
            try:
                out[k] = f[k][()]
            except (OSError, ValueError, TypeError) as e:
                raise DataError(src, k, f"unreadable ({e})") from None
    n = len(out["rewards"])
    for k, want in (("observations", 2), ("actions", 2), ("rewards", 1), ("terminals", 1), ("timeouts", 1)):
        a = out[k]
        if k in ("rewards", "terminals", "timeouts") and a.ndim == 2 and a.shape[1] == 1:
            a = out[k] = a[:, 0]
        if a.ndim != want or a.shape[0] != n:
            shape = f"[{n}, d]" if want == 2 else f"[{n}]"
            raise DataError(src, k, f"expected shape {shape} (N = len(rewards)), got {list(a.shape)}")
    return out


def episodes_of(flat: dict[str, np.ndarray], source: str):
    """(stem, make_episode) for each finished episode of the flat arrays."""
    ends = flat["terminals"].astype(bool) | flat["timeouts"].astype(bool)
    spans = split_points(ends)
    if not spans:
        raise DataError(source, "terminals", "no step has terminals or timeouts set: no finished episode")

    def make(k: int, s: int, e: int) -> Episode:
        return Episode(flat["observations"][s:e].astype(np.float32),
                       np.clip(flat["actions"][s:e].astype(np.float32), -1.0, 1.0),
                       flat["rewards"][s:e].astype(np.float32), flat["terminals"][s:e].astype(bool),
                       info={"trj_id": k, "start": s})

    return [(str(k), (lambda k=k, s=s, e=e: make(k, s, e))) for k, (s, e) in enumerate(spans)]


def import_file(src: str | os.PathLike, dst: str | os.PathLike, *, layout: str = "paper", progress: bool = True,
                **writer_options) -> dict:
    """Import one CompoSuite HDF5 file into the task folder ``dst`` (resumable)."""
    items = episodes_of(read_flat(src), str(src))
    return write_episodes(dst, items, total=len(items), layout=layout, desc=Path(src).stem, progress=progress,
                          **writer_options)


def import_composuite(src: str | os.PathLike, dst_root: str | os.PathLike, *, task: str | None = None,
                      layout: str = "paper", progress: bool = True, **writer_options) -> dict[str, dict]:
    """Import one CompoSuite file (or every ``.hdf5`` under a folder) into ``dst_root/<task>`` folders."""
    files = hdf5_files(src)
    if task is not None:
        if len(files) != 1:
            raise ValueError(f"task: only for a single source file; {src} holds {len(files)}")
        files = {task: next(iter(files.values()))}
    return {name: import_file(p, Path(dst_root) / name, layout=layout, progress=progress, **writer_options)
            for name, p in files.items()}
