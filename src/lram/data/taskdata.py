"""The reader interface shared by both storage layouts: :class:`TaskData`, one task folder of episodes.

A reader holds only the index in memory (stems, lengths, returns; offsets for the packed layout).
Episode files and memory maps are opened lazily through one per-process cache of handles
(:data:`HANDLES`, bounded, least recently used first out), so that

* thousands of tasks x millions of episode files never exhaust file descriptors,
* a ``TaskData`` pickles as a few arrays (DataLoader workers, spawn or fork), and
* a forked worker never uses a handle opened by its parent: the cache notices the new PID and starts empty.

Arrays come back in canonical dtypes whatever the file holds (the paper's files vary):
states as stored except float64 -> float32; discrete actions int64 [T]; continuous actions float32 [T, a];
rewards and returns-to-go float32 [T]; dones bool [T].
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from lram.data.episode import FIELDS, DataError, Episode
from lram.utils.io import atomic_path

LAYOUTS = ("paper", "packed")


# ----------------------------------------------------------------------------------------------------------
# per-process handle cache


class HandleCache:
    """A bounded LRU map of open handles (HDF5 files, memory maps) that resets itself in a new process.

    Handles inherited through ``fork`` are dropped, never used or closed by the child (h5py handles
    are not fork-safe; the parent still owns them).  ``capacity`` bounds the open file descriptors.
    """

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def get(self, key, opener: Callable):
        if self._pid != os.getpid():
            self._items = OrderedDict()
            self._pid = os.getpid()
        items = self._items
        handle = items.get(key)
        if handle is not None:
            items.move_to_end(key)
            return handle
        handle = opener()
        items[key] = handle
        while len(items) > self.capacity:
            _, old = items.popitem(last=False)
            _close(old)
        return handle

    def discard(self, owner: str) -> None:
        """Close and forget every handle whose key starts with ``owner`` (a task folder)."""
        if self._pid != os.getpid():
            self._items = OrderedDict()
            self._pid = os.getpid()
            return
        for key in [k for k in self._items if k[0] == owner]:
            _close(self._items.pop(key))

    def clear(self) -> None:
        if self._pid == os.getpid():
            for h in self._items.values():
                _close(h)
        self._items = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._items) if self._pid == os.getpid() else 0


def _close(handle) -> None:
    close = getattr(handle, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - closing a broken handle must not mask the real work
            pass


HANDLES = HandleCache(256)


def set_max_open_files(n: int) -> None:
    """Bound the number of episode files / memory maps kept open per process (default 256)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"max open files: expected a positive int, got {n!r}")
    HANDLES.capacity = n
    while len(HANDLES._items) > n:
        _close(HANDLES._items.popitem(last=False)[1])


# ----------------------------------------------------------------------------------------------------------
# canonical dtypes


def is_discrete_actions(actions: np.ndarray) -> bool:
    """[T] actions, or [T, 1] integer actions, are discrete ids; [T, a] floats are continuous."""
    return actions.ndim == 1 or (actions.ndim == 2 and actions.shape[1] == 1 and actions.dtype.kind in "iub")


def canonical(field: str, a: np.ndarray, discrete: bool | None = None) -> np.ndarray:
    """Convert one stored field to lram's canonical dtype/shape (no copy when it already is)."""
    if field == "states":
        return a.astype(np.float32) if a.dtype == np.float64 else a
    if field == "actions":
        if discrete is None:
            discrete = is_discrete_actions(a)
        if discrete:
            if a.ndim == 2:
                a = a.reshape(a.shape[0])
            return a.astype(np.int64, copy=False)
        return a.astype(np.float32, copy=False)
    if a.ndim == 2 and a.shape[1] == 1:  # rewards / dones / returns_to_go stored as [T, 1]
        a = a.reshape(a.shape[0])
    if field == "dones":
        return a.astype(bool, copy=False)
    return a.astype(np.float32, copy=False)


def canonical_episode(ep: Episode) -> dict[str, np.ndarray]:
    """The five canonical arrays of an episode (what every writer stores)."""
    arrays = {f: np.asarray(getattr(ep, f)) for f in FIELDS}
    discrete = is_discrete_actions(arrays["actions"])
    return {f: np.ascontiguousarray(canonical(f, a, discrete)) for f, a in arrays.items()}


# ----------------------------------------------------------------------------------------------------------
# small helpers shared by the layouts


def jsonable(obj):
    """Turn numpy scalars/arrays and tuples inside ``obj`` into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in JSON ({obj!r:.60})")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def share_mode(tmp: Path) -> None:
    """Give a temp file (created 0600 by mkstemp) the usual mode for new files (0666 minus the umask)."""
    os.chmod(tmp, _FILE_MODE)


def write_json(path: Path, obj, indent: int | None = None) -> None:
    """Write JSON atomically (temp file + rename) with the usual file mode; compact unless ``indent``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")
        share_mode(tmp)


def read_json(path: Path, expect: type = dict):
    """Load a JSON file; a DataError names the file if it is unreadable or not a ``expect``."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, None, f"not valid JSON ({e})") from None
    except OSError as e:
        raise DataError(path, None, f"cannot read ({e.strerror or e})") from None
    if not isinstance(obj, expect):
        raise DataError(path, None, f"expected a JSON {expect.__name__}, got {type(obj).__name__}")
    return obj


def stem_sort_key(stem: str):
    """Integer stems (plain or zero-padded) in numeric order first, then other stems alphabetically."""
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def summary_stats(lengths: Sequence[float], returns: Sequence[float]) -> dict:
    """The per-task summary the paper's scripts write to ``stats.json`` (episodes, transitions, quantiles)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    returns = np.asarray(returns, dtype=np.float64)
    stats: dict = {"episodes": int(len(lengths)), "transitions": int(lengths.sum())}
    for name, vals in (("episode_len", lengths), ("episode_return", returns)):
        if len(vals) == 0:
            continue
        stats.update({
            f"{name}_min": float(np.min(vals)), f"{name}_max": float(np.max(vals)),
            f"{name}_mean": round(float(np.mean(vals)), 4), f"{name}_std": round(float(np.std(vals)), 4),
        })
        for q in (25, 50, 75, 90, 99):
            stats[f"{name}_q{q}"] = round(float(np.quantile(vals, q / 100)), 4)
    return stats


# ----------------------------------------------------------------------------------------------------------
# the reader interface


class TaskData:
    """One task folder of episodes, read lazily; subclasses implement one storage layout each.

    Attributes: ``task`` (folder name), ``path``, ``layout`` ("paper" | "packed"), ``stems`` (episode
    names), ``lengths`` int64 [E], ``returns`` float64 [E] (undiscounted).  Observation/action metadata
    (``obs_shape``, ``obs_dtype``, ``discrete``, ``action_dim``) come from the layout's metadata.

    ``read(i, start, end, fields)`` returns canonical arrays of steps [start, end) of episode ``i``;
    it is the sampler's hot path.  Arrays may be read-only views (packed layout): copy before writing.
    """

    layout: str = ""

    def __init__(self, path: Path, stems: list[str], lengths: np.ndarray, returns: np.ndarray, task: str | None = None):
        self.path = Path(path)
        self.task = task or self.path.name
        self.stems = stems
        self.lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        self.returns = np.ascontiguousarray(returns, dtype=np.float64)
        self._key = str(self.path)
        self._num_transitions = int(self.lengths.sum())

    # --- metadata -----------------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.stems)

    @property
    def num_transitions(self) -> int:
        return self._num_transitions

    def __len__(self) -> int:
        return len(self.stems)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return self._meta()["obs_shape"]

    @property
    def obs_dtype(self) -> np.dtype:
        return self._meta()["obs_dtype"]

    @property
    def discrete(self) -> bool:
        return self._meta()["discrete"]

    @property
    def action_dim(self) -> int:
        """Continuous action dims; 1 for discrete actions."""
        return self._meta()["action_dim"]

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3

    def _meta(self) -> dict:
        raise NotImplementedError

    # --- reads --------------------------------------------------------------------------------------------
    def _bounds(self, i, start: int, end: int | None) -> tuple[int, int, int]:
        n = len(self.stems)
        if not 0 <= i < n:
            raise IndexError(f"{self.path}: episode index {i} out of range [0, {n})")
        length = int(self.lengths[i])
        if end is None:
            end = length
        if not 0 <= start <= end <= length:
            raise IndexError(
                f"{self.path}: episode {self.stems[i]!r}: window [{start}, {end}) outside [0, {length}]"
            )
        return int(i), int(start), int(end)

    def read(self, i: int, start: int = 0, end: int | None = None, fields: Iterable[str] = FIELDS) -> dict[str, np.ndarray]:
        """Steps [start, end) of episode ``i`` (``end`` exclusive, None = the episode's end)."""
        raise NotImplementedError

    def info(self, i: int) -> dict:
        """The episode's info dict (e.g. seed, success, trj_id); empty if none was stored."""
        raise NotImplementedError

    def episode(self, i: int) -> Episode:
        """Episode ``i`` as an :class:`Episode` (canonical dtypes)."""
        arrays = self.read(i)
        return Episode(**arrays, info=self.info(i))

    def __iter__(self):
        for i in range(len(self.stems)):
            yield self.episode(i)

    # --- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close this task's open files / memory maps in this process (reads reopen them lazily)."""
        HANDLES.discard(self._key)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        # handles live in the per-process cache, never in the object: pickling copies only the index
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task!r}, layout={self.layout!r}, episodes={self.num_episodes}, "
            f"transitions={self.num_transitions}, path={str(self.path)!r})"
        )


def check_fields(fields: Iterable[str]) -> tuple[str, ...]:
    fields = tuple(fields)
    for f in fields:
        if f not in FIELDS:
            raise ValueError(f"fields: expected names from {list(FIELDS)}, got {f!r}")
    return fields
