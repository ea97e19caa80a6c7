"""lram's packed layout: one folder per task, one memory-mappable ``.npy`` per field, all episodes concatenated.

::

    <task>/packed.json         the commit record: format "lram-packed", version, field dtypes and per-step
                               shapes, and per episode: stem, length, return, info
    <task>/offsets.npy         int64 [E+1]; episode i holds rows offsets[i]:offsets[i+1] of every field
    <task>/states.npy          [N, *obs]  float32 vectors or uint8 images
    <task>/actions.npy         [N] int64 (discrete) or [N, a] float32
    <task>/rewards.npy, dones.npy, returns_to_go.npy     [N] float32 / bool / float32

Every ``.npy`` is a standard NumPy file (``np.load(p, mmap_mode="r")`` opens it), so a window of an episode
is a zero-copy slice of a memory map: no file is ever read whole, and 3.4M episodes need 5 files per task
instead of 3.4M (the paper's layout strains file systems and copy tools at that count).

Crash safety.  Appends go to the end of the field files.  A commit (every ``commit_every`` episodes and at
close) fsyncs them, rewrites their fixed-size headers with the new row count, writes ``offsets.npy`` and
finally ``packed.json`` atomically: ``packed.json`` is the single commit point.  A reader trusts only the
first ``num_transitions`` rows / ``num_episodes + 1`` offsets that ``packed.json`` names; a writer reopening
the folder truncates everything beyond them, so a killed run loses at most the uncommitted episodes.

Images and compression.  Packed files are uncompressed: 12,288 B per 3x64x64 uint8 step, so the paper's
206M Atari steps take 2.5 TB (vectors: 156 B per 39-d step, nothing to gain).  Measured with
``benchmarks/data_read.py`` (one process on this 2-core VM, random 50-step windows, all five fields copied
out; runs vary by up to ~1.5x), windows/s with the page cache warm / after evicting it:

    ========================================  ==========  ===============  ==============
    layout (image task)                       B/step      warm             cold
    ========================================  ==========  ===============  ==============
    packed (.npy memory maps)                 12,306      21,900           6,500
    paper HDF5 gzip-1, step-major chunks      320         6,700 (*)        480
    paper HDF5 gzip-1, h5py's default chunks  417         1,840 (*)        250
    paper npz uncompressed (memory-mapped)    12,312      21,400 (*)       1,900
    ========================================  ==========  ===============  ==============

    (*) file already open; with 3.4M files a random episode is almost never open: every read then
        reopens its file, ~500 windows/s for gzip HDF5 (~2 ms per window: open + decompress).

The synthetic frames compress ~38x; real Atari frames (noisier, more sprites) compress less, by a factor
not measured here (no dataset access).  The trade-off: gzip HDF5 saves one to two orders of magnitude of
disk and costs ~2 ms of CPU per window, i.e. ~16 loader cores for 8k windows/s; the packed layout serves
that from one core but needs the raw size on disk (and in page cache for the hot set).  Keep image
domains in gzip HDF5 where disk is the constraint and packed where loader CPU is; vector domains belong
in the packed layout.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from lram.data.episode import FIELDS, DataError, Episode
from lram.data.paper_layout import TaskWriter, is_paper_task, read_array_header
from lram.data.taskdata import HANDLES, TaskData, check_fields, read_json, share_mode, write_json
from lram.utils.io import atomic_path

log = logging.getLogger("lram.data")

FORMAT_NAME = "lram-packed"
FORMAT_VERSION = 1
PACKED_FILE = "packed.json"
OFFSETS_FILE = "offsets.npy"
HEADER_BYTES = 128  # fixed .npy header size (magic + version + length + padded dict), so appends rewrite it in place


# ----------------------------------------------------------------------------------------------------------
# .npy files with a fixed-size header


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version-1.0 .npy header of exactly HEADER_BYTES bytes."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(int(x) for x in shape)}
    text = repr(d)
    room = HEADER_BYTES - 10 - 1
    if len(text) > room:
        raise ValueError(f"npy header too long for {dtype} {shape}")
    body = (text + " " * (room - len(text)) + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def read_npy_header(path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of an .npy file; DataError if it is not one."""
    try:
        with open(path, "rb") as f:
            version, header = read_array_header(f)
            if header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = header
            offset = f.tell()
    except FileNotFoundError:
        raise DataError(path, None, "missing") from None
    except (ValueError, OSError, SyntaxError) as e:
        raise DataError(path, None, f"not a valid .npy file ({e})") from None
    if fortran:
        raise DataError(path, None, "Fortran-ordered arrays are not supported in the packed layout")
    return dtype, shape, offset


# ----------------------------------------------------------------------------------------------------------
# reader


def is_packed_task(path: Path) -> bool:
    return (path / PACKED_FILE).is_file()


def load_manifest(path: Path) -> dict:
    """Read and check ``packed.json``; DataError names the file and the problem."""
    p = path / PACKED_FILE
    m = read_json(p)
    if m.get("format") != FORMAT_NAME:
        raise DataError(p, "format", f"expected {FORMAT_NAME!r}, got {m.get('format')!r}")
    if not isinstance(m.get("version"), int) or m["version"] > FORMAT_VERSION:
        raise DataError(p, "version", f"expected <= {FORMAT_VERSION} (this lram reads up to it), got {m.get('version')!r}")
    fields = m.get("fields")
    if not isinstance(fields, dict) or any(f not in fields for f in FIELDS):
        got = sorted(fields) if isinstance(fields, dict) else fields
        raise DataError(p, "fields", f"expected entries for {list(FIELDS)}, got {got!r}")
    eps = m.get("episodes")
    if not isinstance(eps, dict) or not all(isinstance(eps.get(k), list) for k in ("stems", "lengths", "returns")):
        raise DataError(p, "episodes", "expected lists 'stems', 'lengths', 'returns'")
    n = m.get("num_episodes")
    if not isinstance(n, int) or any(len(eps[k]) != n for k in ("stems", "lengths", "returns")):
        raise DataError(p, "episodes", f"expected {n!r} stems, lengths and returns (num_episodes), "
                        f"got {[len(eps[k]) for k in ('stems', 'lengths', 'returns')]}")
    if eps.get("infos") is not None and len(eps["infos"]) != n:
        raise DataError(p, "episodes", f"expected {n} infos, got {len(eps['infos'])}")
    if not isinstance(m.get("num_transitions"), int) or m["num_transitions"] != sum(eps["lengths"]):
        raise DataError(p, "num_transitions",
                        f"expected the sum of the lengths ({sum(eps['lengths'])}), got {m.get('num_transitions')!r}")
    for f in FIELDS:
        spec = fields[f]
        try:
            spec["dtype_"] = np.dtype(spec["dtype"])
            spec["shape"] = tuple(int(x) for x in spec["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(p, f"fields.{f}", f"expected a dtype and a per-step shape ({e})") from None
    return m


class PackedTask(TaskData):
    """A task folder in the packed layout: windows are zero-copy slices of read-only memory maps."""

    layout = "packed"

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        m = load_manifest(path)
        eps = m["episodes"]
        super().__init__(path, [str(s) for s in eps["stems"]], np.array(eps["lengths"], dtype=np.int64),
                         np.array(eps["returns"], dtype=np.float64), task=m.get("task") or None)
        self.task = path.name
        self._fields = {f: m["fields"][f] for f in FIELDS}
        self._infos = eps.get("infos")
        n = len(self.stems)
        off_path = path / OFFSETS_FILE
        try:
            offsets = np.load(off_path, mmap_mode=None, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(off_path, None, "missing") from None
        except (ValueError, OSError) as e:
            raise DataError(off_path, None, f"not a valid .npy file ({e})") from None
        if offsets.ndim != 1 or len(offsets) < n + 1 or offsets.dtype.kind not in "iu":
            raise DataError(off_path, None,
                            f"expected >= {n + 1} integer offsets (num_episodes + 1), got {offsets.dtype} {list(offsets.shape)}")
        offsets = offsets[: n + 1].astype(np.int64)
        if offsets[0] != 0 or np.any(np.diff(offsets) != self.lengths):
            raise DataError(off_path, None, "offsets do not match the episode lengths in packed.json")
        self.offsets = offsets
        s = self._fields["states"]
        a = self._fields["actions"]
        self._meta_cache = {
            "obs_shape": s["shape"], "obs_dtype": s["dtype_"], "discrete": len(a["shape"]) == 0,
            "action_dim": 1 if len(a["shape"]) == 0 else int(a["shape"][0]),
        }

    def _meta(self) -> dict:
        return self._meta_cache

    def field_path(self, field: str) -> Path:
        return self.path / self._fields[field].get("file", f"{field}.npy")

    def _map(self, field: str) -> np.ndarray:
        # the committed size is part of the key: a reader opened after more commits maps more rows
        return HANDLES.get((self._key, field, self.num_transitions), lambda: self._open_map(field))

    def _open_map(self, field: str) -> np.ndarray:
        p = self.field_path(field)
        spec = self._fields[field]
        dtype, shape, offset = read_npy_header(p)
        want = spec["dtype_"]
        if dtype != want or tuple(shape[1:]) != spec["shape"]:
            raise DataError(p, field, f"expected {want} with per-step shape {list(spec['shape'])} (packed.json), "
                            f"got {dtype} {list(shape)}")
        n = self.num_transitions
        if not shape or shape[0] < n:
            raise DataError(p, field, f"truncated: holds {shape[0] if shape else 0} steps, packed.json commits {n}")
        row = int(np.prod(spec["shape"], dtype=np.int64)) * dtype.itemsize
        if os.path.getsize(p) < offset + n * row:
            raise DataError(p, field, f"truncated: file shorter than the {n} committed steps")
        if n == 0:
            return np.zeros((0, *spec["shape"]), dtype=dtype)
        mm = np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=(n, *spec["shape"]))
        return mm.view(np.ndarray)

    def read(self, i, start=0, end=None, fields=FIELDS):
        i, start, end = self._bounds(i, start, end)
        if fields is not FIELDS:
            fields = check_fields(fields)
        o = int(self.offsets[i])
        return {f: self._map(f)[o + start: o + end] for f in fields}

    def info(self, i: int) -> dict:
        if self._infos is None:
            return {}
        self._bounds(i, 0, None)
        return dict(self._infos[i] or {})


# ----------------------------------------------------------------------------------------------------------
# writer


class PackedWriter(TaskWriter):
    """Appends episodes to a packed-layout task folder; resumes (and repairs) an existing one.

    The first episode fixes every field's dtype and per-step shape; later episodes must match.
    Nothing is visible to readers until a commit (every ``commit_every`` episodes, :meth:`flush`, close).
    """

    def __init__(self, task_dir: str | os.PathLike, *, commit_every: int = 100, validate: bool = True):
        self._files: dict[str, object] = {}
        super().__init__(task_dir, commit_every, validate)

    def _refuse_other_layout(self) -> None:
        if not (self.dir / PACKED_FILE).exists() and is_paper_task(self.dir):
            raise DataError(self.dir, None, "holds a paper-layout task (episode files); write packed data elsewhere")

    def _resume(self) -> None:
        self._stems: list[str] = []
        self._lengths: list[int] = []
        self._returns: list[float] = []
        self._infos: list[dict] = []
        self._fields: dict | None = None
        self._n = 0
        if (self.dir / PACKED_FILE).is_file():
            m = load_manifest(self.dir)
            eps = m["episodes"]
            self._stems = [str(s) for s in eps["stems"]]
            self._lengths = [int(x) for x in eps["lengths"]]
            self._returns = [float(x) for x in eps["returns"]]
            self._infos = [dict(x or {}) for x in (eps.get("infos") or [{}] * len(self._stems))]
            self._n = int(m["num_transitions"])
            self._fields = {f: {"dtype": np.dtype(m["fields"][f]["dtype"]), "shape": tuple(m["fields"][f]["shape"])}
                            for f in FIELDS}
        self._stem_set = set(self._stems)
        # truncate every field file to the committed rows (drops appends after the last commit)
        for f in FIELDS:
            p = self.dir / f"{f}.npy"
            if self._fields is None:
                if p.exists():
                    log.warning("%s: removing %s written before the first commit of an interrupted run", self.dir, p.name)
                    p.unlink()
                continue
            spec = self._fields[f]
            if not p.exists():
                if self._n:
                    raise DataError(p, f, f"missing, but packed.json commits {self._n} steps")
                continue
            row = int(np.prod(spec["shape"], dtype=np.int64)) * spec["dtype"].itemsize
            size = HEADER_BYTES + self._n * row
            dtype, shape, offset = read_npy_header(p)
            if offset != HEADER_BYTES or dtype != spec["dtype"] or os.path.getsize(p) < size:
                raise DataError(p, f, f"does not hold the {self._n} committed steps of {spec['dtype']} "
                                f"{list(spec['shape'])} (header {dtype} {list(shape)}, {os.path.getsize(p)} bytes)")
            if os.path.getsize(p) != size or shape[0] != self._n:
                log.warning("%s: dropping uncommitted steps of an interrupted run from %s", self.dir, p.name)
                with open(p, "r+b") as fh:
                    fh.truncate(size)
                    fh.seek(0)
                    fh.write(npy_header(spec["dtype"], (self._n, *spec["shape"])))
                    fh.flush()
                    os.fsync(fh.fileno())
        off = self.dir / OFFSETS_FILE
        if self._fields is not None:
            offsets = np.load(off, allow_pickle=False) if off.exists() else np.zeros(0, np.int64)
            want = np.concatenate([[0], np.cumsum(self._lengths, dtype=np.int64)])
            if len(offsets) < len(want) or np.any(offsets[: len(want)] != want):
                raise DataError(off, None, "offsets do not match the committed episode lengths in packed.json")
            if len(offsets) != len(want):
                self._write_offsets()
        elif off.exists():
            off.unlink()

    # --- public -------------------------------------------------------------------------------------------
    @property
    def stems(self) -> list[str]:
        return list(self._stems)

    def __contains__(self, stem: str) -> bool:
        return stem in self._stem_set

    def next_stem(self) -> str:
        n = 1 + max((int(s) for s in self._stems if s.isdigit()), default=-1)
        while str(n) in self._stem_set:
            n += 1
        return str(n)

    def write(self, episode: Episode, stem: str | None = None) -> str:
        """Validate and append one episode (visible to readers after the next commit); returns its stem."""
        stem, _, arrays, info = self._prepare(episode, stem)
        for f, a in arrays.items():  # write at the end of the committed + appended rows (overwrites a failed append)
            fh = self._file(f)
            fh.seek(HEADER_BYTES + self._n * self._row_bytes(f))
            fh.write(memoryview(a).cast("B"))
        n = len(arrays["rewards"])
        self._n += n
        self._stems.append(stem)
        self._stem_set.add(stem)
        self._lengths.append(n)
        self._returns.append(float(np.sum(arrays["rewards"], dtype=np.float64)))
        self._infos.append(info)
        self._written()
        return stem

    def _source(self, stem: str) -> str:
        return f"{self.dir}/{stem}"

    def _check_kind(self, arrays: dict[str, np.ndarray], source: str) -> None:
        if self._fields is None:
            self._fields = {f: {"dtype": a.dtype, "shape": tuple(a.shape[1:])} for f, a in arrays.items()}
        for f, a in arrays.items():
            spec = self._fields[f]
            if a.dtype != spec["dtype"] or tuple(a.shape[1:]) != spec["shape"]:
                raise DataError(source, f, f"expected {spec['dtype']} with per-step shape {list(spec['shape'])} like the "
                                f"task's other episodes, got {a.dtype} {list(a.shape[1:])}")

    def _file(self, field: str):
        fh = self._files.get(field)
        if fh is None:
            p = self.dir / f"{field}.npy"
            if not p.exists():
                spec = self._fields[field]
                with atomic_path(p) as tmp:
                    tmp.write_bytes(npy_header(spec["dtype"], (0, *spec["shape"])))
                    share_mode(tmp)
            fh = open(p, "r+b")
            fh.seek(0, os.SEEK_END)
            self._files[field] = fh
        return fh

    def _row_bytes(self, field: str) -> int:
        spec = self._fields[field]
        return int(np.prod(spec["shape"], dtype=np.int64)) * spec["dtype"].itemsize

    def _write_offsets(self) -> None:
        offsets = np.concatenate([[0], np.cumsum(self._lengths, dtype=np.int64)]).astype(np.int64)
        with atomic_path(self.dir / OFFSETS_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, offsets)
            share_mode(tmp)

    def _commit(self) -> None:
        if self._fields is None:
            return
        for f in FIELDS:
            fh = self._file(f)
            spec = self._fields[f]
            fh.truncate(HEADER_BYTES + self._n * self._row_bytes(f))
            fh.flush()
            os.fsync(fh.fileno())
            fh.seek(0)
            fh.write(npy_header(spec["dtype"], (self._n, *spec["shape"])))
            fh.flush()
            os.fsync(fh.fileno())
        self._write_offsets()
        manifest = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "task": self.dir.name,
            "num_episodes": len(self._stems), "num_transitions": self._n,
            "fields": {f: {"dtype": np.lib.format.dtype_to_descr(s["dtype"]), "shape": list(s["shape"]), "file": f"{f}.npy"}
                       for f, s in self._fields.items()},
            "episodes": {"stems": self._stems, "lengths": self._lengths, "returns": self._returns,
                         "infos": self._infos if any(self._infos) else None},
        }
        write_json(self.dir / PACKED_FILE, manifest)
        self._pending = 0

    def _release(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files = {}

    def __repr__(self):
        return f"PackedWriter({str(self.dir)!r}, episodes={self.num_episodes})"
