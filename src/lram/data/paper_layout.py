"""The paper's storage layout (spec 4.2): one folder per task, one file per episode.

::

    <task>/<stem>.hdf5 | <stem>.npz    datasets states, actions, rewards, dones, returns_to_go (+ scalar trj_id, seed)
    <task>/episode_lengths.json        {stem: length}            the authority on which episodes exist
    <task>/episode_returns.json        {stem: undiscounted return}
    <task>/episode_trjids.json         {stem: integer order}
    <task>/stats.json                  summary (episodes, transitions, length/return quantiles)
    <task>/episode_infos.json          {stem: info dict}        lram's addition, only if infos were given
    <dataset root>/all_stats.csv       one row of stats.json per task (written by convert_dataset)

Files published for the paper load unchanged: stems zero-padded to 9 digits (Atari) or plain integers or
free-form (Procgen: ``<date>_<trj>_<len>_<seed>_<return>``); lengths stored as ints or floats; discrete
actions as [T] or [T, 1] of any integer type; rewards float32 or float64; ``dones`` per step, as one scalar
flag (Atari files written through d3rlpy), or missing; ``returns_to_go`` missing (recomputed, gamma 1).

Writes: compressed HDF5 datasets are chunked along time, ~256 KiB per chunk (21 image steps), which reads
image windows 2-4x faster than h5py's default chunk shape (measured, see :mod:`lram.data.packed_layout`);
``dones`` are stored as uint8 because numpy bools become HDF5 enums that read ~20x slower.

Reads: HDF5 windows are sliced by h5py (only the touched chunks are decompressed); uncompressed ``.npz``
members (``np.savez``) are memory-mapped, so their windows are zero-copy; compressed ``.npz``
(``np.savez_compressed``) decompresses the whole member on every read: avoid it for training data.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import mmap
import os
import re
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from lram.data.episode import FIELDS, DataError, Episode, returns_to_go, validate_episode
from lram.data.taskdata import (
    HANDLES,
    TaskData,
    canonical,
    canonical_episode,
    check_fields,
    jsonable,
    read_json,
    share_mode,
    stem_sort_key,
    summary_stats,
    write_json,
)
from lram.utils.io import atomic_path

log = logging.getLogger("lram.data")

EPISODE_SUFFIXES = (".hdf5", ".npz")
LENGTHS_FILE = "episode_lengths.json"
RETURNS_FILE = "episode_returns.json"
TRJIDS_FILE = "episode_trjids.json"
INFOS_FILE = "episode_infos.json"
STATS_FILE = "stats.json"
LOCK_FILE = ".lram-writer.lock"
INFO_KEY = "info_json"  # HDF5 root attribute / npz member holding the episode's info dict as JSON
_STEM_OK = re.compile(r"^[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*$")


# ----------------------------------------------------------------------------------------------------------
# one episode file, opened


def read_array_header(fh) -> tuple[tuple[int, int], tuple | None]:
    """``(version, (shape, fortran_order, dtype))`` of the .npy header at ``fh``'s position (None: unknown version)."""
    version = np.lib.format.read_magic(fh)
    reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    return version, reader(fh) if reader else None


class EpisodeFile:
    """Uniform read access to one episode file (HDF5 or npz): dataset names, shapes, slices, info."""

    path: Path

    def names(self) -> set[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> np.dtype:
        raise NotImplementedError

    def slice(self, name: str, start: int | None = None, end: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict:
        """The stored info JSON merged over the scalar datasets (trj_id, seed, ...)."""
        out = {}
        for name in sorted(self.names() - set(FIELDS)):
            if self.shape(name) == () and self.dtype(name).kind in "biuf":
                out[name] = self.slice(name).item()
        text = self._info_json()
        if text:
            try:
                out.update(json.loads(text))
            except json.JSONDecodeError as e:
                raise DataError(self.path, INFO_KEY, f"not valid JSON ({e})") from None
        return out

    def _info_json(self) -> str | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class H5EpisodeFile(EpisodeFile):
    """An HDF5 episode; datasets are looked up lazily (h5py object creation costs ~50 us each)."""

    def __init__(self, path: Path):
        self.path = path
        self._names: set[str] | None = None
        self._ds: dict[str, h5py.Dataset] = {}
        try:
            self.f = h5py.File(path, "r", locking=False)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - h5py raises OSError/RuntimeError/KeyError for corrupt files
            if not path.exists():
                raise FileNotFoundError(str(path)) from None
            raise DataError(path, None, f"cannot open HDF5 file (corrupt or truncated?): {_short(e)}") from None

    def names(self) -> set[str]:
        if self._names is None:
            try:
                self._names = set(self.f.keys())
            except Exception as e:  # noqa: BLE001
                raise DataError(self.path, None, f"cannot list datasets (corrupt file?): {_short(e)}") from None
        return self._names

    def _get(self, name: str) -> h5py.Dataset:
        ds = self._ds.get(name)
        if ds is None:
            try:
                ds = self.f[name]
            except Exception as e:  # noqa: BLE001
                raise DataError(self.path, name, f"cannot open dataset (corrupt file?): {_short(e)}") from None
            if not isinstance(ds, h5py.Dataset):
                raise DataError(self.path, name, f"expected a dataset, got an HDF5 {type(ds).__name__}")
            self._ds[name] = ds
        return ds

    def shape(self, name):
        return self._get(name).shape

    def dtype(self, name):
        return self._get(name).dtype

    def slice(self, name, start=None, end=None):
        ds = self._get(name)
        try:
            if ds.shape == ():
                return np.asarray(ds[()])
            if ds.dtype == np.bool_ and ds.ndim == 1:
                # numpy bools are HDF5 enums, whose conversion is slow (~100 us): read the raw bytes instead
                s, e, _ = slice(start, end).indices(ds.shape[0])
                out = np.empty(max(e - s, 0), dtype=np.uint8)
                if len(out):
                    fspace = ds.id.get_space()
                    fspace.select_hyperslab((s,), (e - s,))
                    ds.id.read(h5py.h5s.create_simple((e - s,)), fspace, out, mtype=ds.id.get_type())
                return out.view(np.bool_)
            return ds[start:end]
        except Exception as e:  # noqa: BLE001
            raise DataError(self.path, name, f"cannot read (corrupt data?): {_short(e)}") from None

    def _info_json(self):
        v = self.f.attrs.get(INFO_KEY)
        return v.decode() if isinstance(v, bytes) else v

    def close(self):
        self.f.close()


class NpzEpisodeFile(EpisodeFile):
    """An .npz episode: members stored uncompressed are memory-mapped (zero-copy windows)."""

    def __init__(self, path: Path):
        self.path = path
        self._mm = None
        try:
            self.zf = zipfile.ZipFile(path)
            self._members = {}  # name -> (offset, dtype, shape, fortran) for memory-mappable, else None
            with open(path, "rb") as fh:
                for zi in self.zf.infolist():
                    if zi.filename.endswith(".npy"):
                        self._members[zi.filename[:-4]] = self._locate(fh, zi)
            if any(m is not None for m in self._members.values()):
                with open(path, "rb") as fh:
                    self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - zipfile/np.lib.format raise many kinds for corrupt files
            raise DataError(path, None, f"cannot open npz file (corrupt or truncated?): {_short(e)}") from None
        self._meta = {}

    def _locate(self, fh, zi: zipfile.ZipInfo):
        """Offset/dtype/shape of an uncompressed .npy member, read from its local zip header."""
        if zi.compress_type != zipfile.ZIP_STORED:
            return None
        fh.seek(zi.header_offset)
        local = fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise DataError(self.path, zi.filename[:-4], "corrupt zip member header")
        n, m = struct.unpack("<HH", local[26:30])
        fh.seek(zi.header_offset + 30 + n + m)
        _, header = read_array_header(fh)
        if header is None:
            return None
        shape, fortran, dtype = header
        if dtype.hasobject:
            raise DataError(self.path, zi.filename[:-4], "holds pickled Python objects (not supported: unsafe to load)")
        if shape == () or 0 in shape:
            return None
        return fh.tell(), dtype, shape, fortran

    def names(self):
        return set(self._members)

    def _header(self, name):
        if name not in self._meta:
            loc = self._members[name]
            if loc is not None:
                self._meta[name] = (loc[2], loc[1])
            else:
                a = self._load(name)
                self._meta[name] = (a.shape, a.dtype)
        return self._meta[name]

    def shape(self, name):
        return self._header(name)[0]

    def dtype(self, name):
        return self._header(name)[1]

    def _load(self, name) -> np.ndarray:
        try:
            with self.zf.open(name + ".npy") as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise DataError(self.path, name, f"cannot read (corrupt data?): {_short(e)}") from None

    def slice(self, name, start=None, end=None):
        loc = self._members[name]
        if loc is None:
            a = self._load(name)
            return a if a.shape == () else a[start:end]
        offset, dtype, shape, fortran = loc
        count = math.prod(shape)
        if offset + count * dtype.itemsize > len(self._mm):
            raise DataError(self.path, name, "truncated member (file shorter than its header says)")
        a = np.frombuffer(self._mm, dtype=dtype, count=count, offset=offset)
        a = a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
        return a[start:end]

    def _info_json(self):
        if INFO_KEY not in self._members:
            return None
        return str(self._load(INFO_KEY))

    def close(self):
        self.zf.close()
        # the mmap stays valid while windows returned by slice() still reference it; it closes when freed
        self._mm = None


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def open_episode_file(path: Path) -> EpisodeFile:
    """Open one episode file by its suffix; DataError for corrupt files, FileNotFoundError if absent."""
    suffix = path.suffix
    if suffix == ".hdf5":
        return H5EpisodeFile(path)
    if suffix == ".npz":
        return NpzEpisodeFile(path)
    raise DataError(path, None, f"unsupported episode file type {suffix!r} (expected one of {list(EPISODE_SUFFIXES)})")


def read_window(h: EpisodeFile, length: int, start: int, end: int, fields: Iterable[str], discrete: bool | None):
    """Canonical arrays of steps [start, end) from an open episode file of ``length`` steps."""
    names = h.names()
    out = {}
    for f in fields:
        if f in names:
            shape = h.shape(f)
            if f == "dones" and (shape == () or (shape == (1,) and length > 1)):
                flag = bool(np.asarray(h.slice(f)).reshape(-1)[0])  # one flag per episode: set at its last step
                a = np.zeros(end - start, dtype=bool)
                if flag and end == length and end > start:
                    a[-1] = True
                out[f] = a
                continue
            if len(shape) == 0 or shape[0] != length:
                got = "a scalar" if len(shape) == 0 else f"{shape[0]} steps"
                raise DataError(h.path, f, f"has {got} but the episode has {length} steps (episode_lengths.json / rewards)")
            a = h.slice(f, start, end)
        elif f == "returns_to_go":
            if "rewards" not in names:
                raise DataError(h.path, "rewards", "missing (required: states, actions, rewards)")
            a = returns_to_go(canonical("rewards", h.slice("rewards", start, length)))[: end - start]
        elif f == "dones":
            a = np.zeros(end - start, dtype=bool)
        else:
            raise DataError(h.path, f, "missing (required: states, actions, rewards)")
        try:
            out[f] = canonical(f, a, discrete)
        except (ValueError, TypeError) as e:
            raise DataError(h.path, f, f"cannot convert {a.dtype} {list(a.shape)} to lram's canonical form: {e}") from None
    return out


def episode_summary(path: Path) -> tuple[int, float, dict]:
    """(length, undiscounted return, info) of one episode file, reading only its rewards."""
    h = open_episode_file(path)
    try:
        if "rewards" not in h.names():
            raise DataError(path, "rewards", "missing (required: states, actions, rewards)")
        r = canonical("rewards", h.slice("rewards"))
        return len(r), float(np.sum(r, dtype=np.float64)), h.info()
    finally:
        h.close()


def list_episode_files(task_dir: Path) -> dict[str, str]:
    """{stem: suffix} of every episode file in a folder (temp and hidden files skipped)."""
    found: dict[str, str] = {}
    with os.scandir(task_dir) as it:
        for entry in it:
            name = entry.name
            if name.startswith(".") or not entry.is_file():
                continue
            stem, dot, ext = name.rpartition(".")
            if dot and "." + ext in EPISODE_SUFFIXES:
                if stem in found:
                    raise DataError(task_dir / name, None, f"two files for episode {stem!r} ({stem}{found[stem]} too)")
                found[stem] = "." + ext
    return found


def is_paper_task(path: Path) -> bool:
    if (path / LENGTHS_FILE).is_file():
        return True
    try:
        with os.scandir(path) as it:
            for entry in it:
                if not entry.name.startswith(".") and os.path.splitext(entry.name)[1] in EPISODE_SUFFIXES:
                    return True
    except OSError:
        return False
    return False


def _positive_int(value, source: Path, stem: str) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or value < 1:
        raise DataError(source, None, f"episode {stem!r}: expected a positive integer length, got {value!r}")
    return int(value)


def _finite_float(value, source: Path, stem: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(source, None, f"episode {stem!r}: expected a finite number, got {value!r}")
    return float(value)


def _scan(task_dir: Path, files: dict[str, str], desc: str, progress: bool) -> dict[str, tuple[int, float, dict]]:
    out = {}
    for stem in tqdm(sorted(files, key=stem_sort_key), desc=desc, disable=not progress or len(files) < 2, leave=False):
        out[stem] = episode_summary(task_dir / f"{stem}{files[stem]}")
    return out


def load_index(task_dir: Path, progress: bool = True) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, str]]:
    """(stems, lengths, returns, {stem: suffix} for stems whose suffix is known) of a paper-layout folder.

    Uses ``episode_lengths.json`` (and ``episode_returns.json``) when present; otherwise, or for returns
    missing from the index, reads the episode files (with a progress bar) and says so in the log.
    """
    lengths_path = task_dir / LENGTHS_FILE
    if lengths_path.is_file():
        raw = read_json(lengths_path)
        stems = sorted(raw, key=stem_sort_key)
        lengths = np.array([_positive_int(raw[s], lengths_path, s) for s in stems], dtype=np.int64)
        returns_path = task_dir / RETURNS_FILE
        rets = read_json(returns_path) if returns_path.is_file() else {}
        missing = [s for s in stems if s not in rets]
        suffixes: dict[str, str] = {}
        if missing:
            files = list_episode_files(task_dir)
            what = "has no episode_returns.json" if not rets else f"lacks returns of {len(missing)} episodes"
            log.warning("%s %s: computing them from the episode files", task_dir, what)
            absent = [s for s in missing if s not in files]
            if absent:
                raise DataError(task_dir / f"{absent[0]}.hdf5", None, "episode listed in episode_lengths.json has no file")
            scanned = _scan(task_dir, {s: files[s] for s in missing}, f"returns of {task_dir.name}", progress)
            rets = dict(rets, **{s: v[1] for s, v in scanned.items()})
            suffixes = {s: files[s] for s in missing}
        returns = np.array([_finite_float(rets[s], returns_path, s) for s in stems], dtype=np.float64)
        return stems, lengths, returns, suffixes
    files = list_episode_files(task_dir)
    log.warning("%s has no %s: building the index by reading %d episode files", task_dir, LENGTHS_FILE, len(files))
    scanned = _scan(task_dir, files, f"indexing {task_dir.name}", progress)
    stems = list(scanned)
    lengths = np.array([scanned[s][0] for s in stems], dtype=np.int64)
    returns = np.array([scanned[s][1] for s in stems], dtype=np.float64)
    return stems, lengths, returns, files


# ----------------------------------------------------------------------------------------------------------
# reader


class PaperTask(TaskData):
    """A task folder in the paper's layout; files are opened lazily and cached per process (see HANDLES)."""

    layout = "paper"

    def __init__(self, path: str | os.PathLike, progress: bool = True):
        path = Path(path)
        if not path.is_dir():
            raise DataError(path, None, "not a folder")
        stems, lengths, returns, suffixes = load_index(path, progress=progress)
        super().__init__(path, stems, lengths, returns)
        counts: dict[str, int] = {}
        for s in suffixes.values():
            counts[s] = counts.get(s, 0) + 1
        self._suffix = max(counts, key=counts.get) if counts else self._probe_suffix()
        self._suffix_of = {s: x for s, x in suffixes.items() if x != self._suffix}  # the exceptions only
        self._meta_cache: dict | None = None
        self._infos: dict | None = None

    def _probe_suffix(self) -> str:
        for stem in self.stems[:1]:
            for suffix in EPISODE_SUFFIXES:
                if (self.path / f"{stem}{suffix}").exists():
                    return suffix
        return ".hdf5"

    def file(self, i: int) -> Path:
        stem = self.stems[i]
        return self.path / f"{stem}{self._suffix_of.get(stem, self._suffix)}"

    def _open(self, i: int) -> EpisodeFile:
        stem = self.stems[i]
        return HANDLES.get((self._key, stem), lambda: self._open_file(stem))

    def _open_file(self, stem: str) -> EpisodeFile:
        suffix = self._suffix_of.get(stem, self._suffix)
        try:
            return open_episode_file(self.path / f"{stem}{suffix}")
        except FileNotFoundError:
            for other in EPISODE_SUFFIXES:
                if other != suffix and (self.path / f"{stem}{other}").exists():
                    self._suffix_of[stem] = other
                    return open_episode_file(self.path / f"{stem}{other}")
        raise DataError(self.path / f"{stem}{suffix}", None, "episode file missing (listed in the index)")

    def _meta(self) -> dict:
        if self._meta_cache is None:
            if not self.stems:
                raise DataError(self.path, None, "task has no episodes")
            h = self._open(0)
            for f in ("states", "actions"):
                if f not in h.names():
                    raise DataError(h.path, f, "missing (required: states, actions, rewards)")
            s_shape, a_shape = h.shape("states"), h.shape("actions")
            a_dtype = h.dtype("actions")
            discrete = len(a_shape) == 1 or (len(a_shape) == 2 and a_shape[1] == 1 and a_dtype.kind in "iub")
            s_dtype = h.dtype("states")
            self._meta_cache = {
                "obs_shape": tuple(int(x) for x in s_shape[1:]),
                "obs_dtype": np.dtype(np.float32) if s_dtype == np.float64 else np.dtype(s_dtype),
                "discrete": bool(discrete),
                "action_dim": 1 if discrete else int(a_shape[1]),
            }
        return self._meta_cache

    def read(self, i, start=0, end=None, fields=FIELDS):
        i, start, end = self._bounds(i, start, end)
        if fields is not FIELDS:
            fields = check_fields(fields)
        discrete = (self._meta_cache or self._meta())["discrete"]
        return read_window(self._open(i), int(self.lengths[i]), start, end, fields, discrete)

    def info(self, i: int) -> dict:
        if self._infos is None:
            p = self.path / INFOS_FILE
            self._infos = read_json(p) if p.is_file() else {}
        stem = self.stems[i]
        if stem in self._infos:
            return dict(self._infos[stem])
        return self._open(i).info()


# ----------------------------------------------------------------------------------------------------------
# writer


class _FolderLock:
    """An advisory exclusive lock on a task folder, released automatically if the process dies."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise DataError(folder, None, "another writer is writing this folder (its lock file is held)") from None

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def remove_stale_temp_files(folder: Path) -> list[str]:
    """Delete temp files a killed writer left behind (``.<name>.<random>.tmp``); returns their names."""
    removed = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                os.unlink(entry.path)
                removed.append(entry.name)
    if removed:
        log.warning("%s: removed %d temp files left by an interrupted writer", folder, len(removed))
    return removed


def _task_meta(arrays: dict[str, np.ndarray]) -> dict:
    s, a = arrays["states"], arrays["actions"]
    return {"obs_shape": tuple(s.shape[1:]), "obs_dtype": s.dtype, "discrete": a.ndim == 1,
            "action_shape": tuple(a.shape[1:]), "action_dtype": a.dtype}


def check_same_kind(meta: dict, arrays: dict[str, np.ndarray], source) -> None:
    """Raise a DataError if an episode's observation/action kind differs from the task's other episodes."""
    s, a = arrays["states"], arrays["actions"]
    if tuple(s.shape[1:]) != meta["obs_shape"] or s.dtype != meta["obs_dtype"]:
        raise DataError(source, "states", f"expected per-step shape {list(meta['obs_shape'])} {meta['obs_dtype']} like the "
                        f"task's other episodes, got {list(s.shape[1:])} {s.dtype}")
    if (a.ndim == 1) != meta["discrete"] or tuple(a.shape[1:]) != meta["action_shape"]:
        kind = "discrete [T]" if meta["discrete"] else f"continuous {list(meta['action_shape'])}"
        raise DataError(source, "actions", f"expected {kind} actions like the task's other episodes, got shape {list(a.shape)}")


class TaskWriter:
    """The skeleton shared by the layout writers: argument checks, folder, lock, resume, episode checks, close.

    Subclasses implement ``_refuse_other_layout``, ``_resume`` (which sets ``_lengths``, one entry per episode),
    ``_source``, ``_check_kind``, ``_commit``, ``next_stem`` and ``__contains__``; ``_release`` frees their own
    resources (on close or a failed open).
    """

    def __init__(self, task_dir: str | os.PathLike, commit_every: int, validate: bool, **resume):
        if not isinstance(commit_every, int) or commit_every < 1:
            raise ValueError(f"commit_every: expected a positive int, got {commit_every!r}")
        self.dir = Path(task_dir)
        self.commit_every, self.validate = commit_every, validate
        self.dir.mkdir(parents=True, exist_ok=True)
        self._refuse_other_layout()
        self._lock = _FolderLock(self.dir)
        self._closed = False
        try:
            remove_stale_temp_files(self.dir)
            self._resume(**resume)
        except BaseException:
            self._release()
            self._lock.release()
            raise
        self._pending = 0

    def _release(self) -> None:
        """Free the subclass's open resources (the lock is released by the caller)."""

    def _exists(self, stem: str, source) -> bool:
        return stem in self

    def _prepare(self, episode: Episode, stem: str | None) -> tuple[str, Path | str, dict[str, np.ndarray], dict]:
        """Check one episode before it is written; returns ``(stem, source, canonical arrays, JSON-able info)``."""
        if self._closed:
            raise RuntimeError(f"{self.dir}: writer is closed")
        stem = self.next_stem() if stem is None else str(stem)
        if not _STEM_OK.match(stem):
            raise ValueError(f"stem: expected letters, digits, '_', '-', '+', '.' (not starting with '.'), got {stem!r}")
        source = self._source(stem)
        if self._exists(stem, source):
            raise DataError(source, None, f"episode {stem!r} already exists in this task")
        if self.validate:
            validate_episode(episode, str(source))
        arrays = canonical_episode(episode)
        self._check_kind(arrays, source)
        try:
            info = jsonable(episode.info or {})
        except TypeError as e:
            raise DataError(source, "info", str(e)) from None
        return stem, source, arrays, info

    def _written(self) -> None:
        """Count one written episode; commit every ``commit_every``."""
        self._pending += 1
        if self._pending >= self.commit_every:
            self._commit()

    @property
    def num_episodes(self) -> int:
        return len(self._lengths)

    def __len__(self) -> int:
        return len(self._lengths)

    def flush(self) -> None:
        """Commit now (done automatically every ``commit_every`` episodes and at close)."""
        self._commit()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._commit()
        finally:
            self._closed = True
            self._release()
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PaperWriter(TaskWriter):
    """Writes episodes into a task folder in the paper's layout; resumes an existing folder.

    Every episode file is written to a temp file and renamed into place; the index files are rewritten
    atomically every ``commit_every`` episodes and at :meth:`close`, ``episode_lengths.json`` last, so a
    killed run leaves a folder whose index and files agree.  Reopening a folder removes leftover temp
    files, adds episode files written after the last index update, and continues the numbering
    (``stem_digits``: zero-pad new stems, e.g. 9 as for Atari; by default inferred from existing stems).
    An advisory lock refuses a second writer on the same folder.
    """

    def __init__(self, task_dir: str | os.PathLike, fmt: str = "hdf5", compress: bool = True, *,
                 compression_level: int = 1, stem_digits: int | None = None, commit_every: int = 100,
                 validate: bool = True, chunk_bytes: int | None = 1 << 18, progress: bool = True):
        if fmt not in ("hdf5", "npz"):
            raise ValueError(f"fmt: expected 'hdf5' or 'npz', got {fmt!r}")
        self.fmt, self.compress, self.level = fmt, bool(compress), int(compression_level)
        self.suffix = ".hdf5" if fmt == "hdf5" else ".npz"
        self.chunk_bytes = chunk_bytes
        super().__init__(task_dir, commit_every, validate, progress=progress)
        self.stem_digits = stem_digits if stem_digits is not None else self._infer_digits()

    def _refuse_other_layout(self) -> None:
        if (self.dir / "packed.json").exists():
            raise DataError(self.dir, None, "holds a packed-layout task (packed.json); write paper files elsewhere")

    # --- resume -------------------------------------------------------------------------------------------
    def _resume(self, progress: bool) -> None:
        d = self.dir
        self._lengths: dict[str, int] = {}
        self._returns: dict[str, float] = {}
        self._trjids: dict[str, int] = {}
        self._infos: dict[str, dict] = {}
        files = list_episode_files(d)
        self._files = files
        if (d / LENGTHS_FILE).is_file():
            raw = read_json(d / LENGTHS_FILE)
            rets = read_json(d / RETURNS_FILE) if (d / RETURNS_FILE).is_file() else {}
            trj = read_json(d / TRJIDS_FILE) if (d / TRJIDS_FILE).is_file() else {}
            infos = read_json(d / INFOS_FILE) if (d / INFOS_FILE).is_file() else {}
            for stem, v in raw.items():
                if stem not in files:
                    log.warning("%s: episode %r is in %s but has no file; dropping it from the index", d, stem, LENGTHS_FILE)
                    continue
                self._lengths[stem] = _positive_int(v, d / LENGTHS_FILE, stem)
                if stem in rets:
                    self._returns[stem] = _finite_float(rets[stem], d / RETURNS_FILE, stem)
                if stem in trj:
                    self._trjids[stem] = int(trj[stem])
                if stem in infos:
                    self._infos[stem] = infos[stem]
        todo = {s: x for s, x in files.items() if s not in self._lengths or s not in self._returns}
        if todo:
            log.warning("%s: indexing %d episode files written after the last index update", d, len(todo))
            for stem, (n, ret, info) in _scan(d, todo, f"resuming {d.name}", progress).items():
                self._lengths[stem], self._returns[stem] = n, ret
                if info:
                    self._infos.setdefault(stem, jsonable(info))
        self._meta = None
        if files:
            first = min(files, key=stem_sort_key)
            h = open_episode_file(d / f"{first}{files[first]}")
            try:
                arrays = read_window(h, self._lengths[first], 0, 1, ("states", "actions"), None)
            finally:
                h.close()
            self._meta = _task_meta(arrays)
        self._next = 1 + max((int(s) for s in self._lengths if s.isdigit()), default=-1)
        if todo or len(self._lengths) != len(files):
            self._commit()

    def _infer_digits(self) -> int | None:
        digit_stems = [s for s in self._lengths if s.isdigit()]
        widths = {len(s) for s in digit_stems}
        if len(widths) == 1 and any(s.startswith("0") and len(s) > 1 for s in digit_stems):
            return widths.pop()
        return None

    # --- public -------------------------------------------------------------------------------------------
    @property
    def stems(self) -> list[str]:
        return sorted(self._lengths, key=stem_sort_key)

    def __contains__(self, stem: str) -> bool:
        return stem in self._lengths

    def next_stem(self) -> str:
        n = self._next
        while True:
            stem = str(n).zfill(self.stem_digits) if self.stem_digits else str(n)
            if stem not in self._lengths:
                return stem
            n += 1

    def write(self, episode: Episode, stem: str | None = None) -> str:
        """Validate and write one episode atomically; returns its stem (auto-numbered if None)."""
        stem, target, arrays, info = self._prepare(episode, stem)
        self._write_file(target, arrays, info)
        n = len(arrays["rewards"])
        self._lengths[stem] = n
        self._returns[stem] = float(np.sum(arrays["rewards"], dtype=np.float64))
        if "trj_id" in info:
            self._trjids[stem] = int(info["trj_id"])
        if info:
            self._infos[stem] = info
        if stem.isdigit():
            self._next = max(self._next, int(stem) + 1)
        self._written()
        return stem

    def _source(self, stem: str) -> Path:
        return self.dir / f"{stem}{self.suffix}"

    def _exists(self, stem: str, source: Path) -> bool:
        return stem in self._lengths or source.exists()

    def _check_kind(self, arrays: dict[str, np.ndarray], source: Path) -> None:
        if self._meta is None:
            self._meta = _task_meta(arrays)
        else:
            check_same_kind(self._meta, arrays, source)

    def _write_file(self, target: Path, arrays: dict[str, np.ndarray], info: dict) -> None:
        text = json.dumps(info) if info else None
        with atomic_path(target) as tmp:
            if self.fmt == "hdf5":
                with h5py.File(tmp, "w") as f:
                    for name, a in arrays.items():
                        if a.dtype == np.bool_:
                            a = a.view(np.uint8)  # numpy bools become HDF5 enums, ~20x slower to read than uint8
                        kw = {}
                        if self.compress:  # chunks of whole steps, ~chunk_bytes each (None: h5py's own guess)
                            rows = max(1, min(len(a), (self.chunk_bytes or 0) // max(1, a[:1].nbytes)))
                            chunks = (rows, *a.shape[1:]) if self.chunk_bytes else True
                            kw = {"compression": "gzip", "compression_opts": self.level, "chunks": chunks}
                        f.create_dataset(name, data=a, **kw)
                    if "trj_id" in info and isinstance(info["trj_id"], int):
                        f.create_dataset("trj_id", data=info["trj_id"])
                    if text:
                        f.attrs[INFO_KEY] = text
            else:
                extra = {}
                if text:
                    extra[INFO_KEY] = np.array(text)
                if "trj_id" in info and isinstance(info["trj_id"], int):
                    extra["trj_id"] = np.array(info["trj_id"])
                save = np.savez_compressed if self.compress else np.savez
                with open(tmp, "wb") as fh:
                    save(fh, **arrays, **extra)
            share_mode(tmp)

    def _commit(self) -> None:
        stems = self.stems
        d = self.dir
        write_json(d / RETURNS_FILE, {s: self._returns[s] for s in stems})
        write_json(d / TRJIDS_FILE, {s: self._trjids.get(s, k) for k, s in enumerate(stems)})
        if self._infos:
            write_json(d / INFOS_FILE, {s: self._infos[s] for s in stems if s in self._infos})
        write_json(d / STATS_FILE, summary_stats([self._lengths[s] for s in stems], [self._returns[s] for s in stems]), indent=2)
        write_json(d / LENGTHS_FILE, {s: self._lengths[s] for s in stems})  # last: the commit point
        self._pending = 0

    def __repr__(self):
        return f"PaperWriter({str(self.dir)!r}, fmt={self.fmt!r}, compress={self.compress}, episodes={self.num_episodes})"
