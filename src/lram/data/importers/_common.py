"""Shared plumbing of the importers: a resumable write loop into one lram task folder and small readers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lram.data.episode import DataError, Episode
from lram.data.storage import LAYOUTS, PackedWriter, PaperWriter


def open_writer(dst: str | os.PathLike, layout: str = "paper", **writer_options):
    """A :class:`PaperWriter` (``layout='paper'``; options fmt, compress, ...) or a :class:`PackedWriter`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {list(LAYOUTS)}, got {layout!r}")
    if layout == "paper":
        return PaperWriter(dst, **writer_options)
    opts = {k: v for k, v in writer_options.items() if k in ("commit_every", "validate")}
    return PackedWriter(dst, **opts)


def write_episodes(dst: str | os.PathLike, items: Iterable[tuple[str, Callable[[], Episode]]], *, total: int | None = None,
                   layout: str = "paper", desc: str = "import", progress: bool = True, **writer_options) -> dict:
    """Write ``(stem, make_episode)`` pairs into the task folder ``dst``, skipping stems already there.

    ``make_episode`` is only called for stems not yet written, so a resumed import does not redo their work.
    Returns ``{"written": n, "skipped": m, "task": Path}``.
    """
    written = skipped = 0
    with open_writer(dst, layout, **writer_options) as w:
        for stem, make in tqdm(items, total=total, desc=desc, disable=not progress, unit="ep", leave=False):
            if stem in w:
                skipped += 1
                continue
            w.write(make(), stem=stem)
            written += 1
    return {"written": written, "skipped": skipped, "task": Path(dst)}


def split_points(ends: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each episode of a flat stream whose steps ``ends`` (bool) close an episode.

    Steps after the last closing step form an unfinished episode and are not returned.
    """
    idx = np.flatnonzero(np.asarray(ends, dtype=bool))
    starts = np.concatenate([[0], idx[:-1] + 1]) if len(idx) else np.zeros(0, np.int64)
    return [(int(s), int(e) + 1) for s, e in zip(starts, idx)]


def hdf5_files(src: str | os.PathLike, suffixes: tuple[str, ...] = (".hdf5", ".h5")) -> dict[str, Path]:
    """HDF5 files of ``src`` (a file, or a folder searched recursively) keyed by task name.

    A single file is named by its stem; files in a folder by their path relative to it without the suffix
    (a file named ``data``/``dataset`` by its folder).
    """
    src = Path(src)
    if src.is_file():
        return {src.stem: src}
    if not src.is_dir():
        raise DataError(src, None, "no such file or folder")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in suffixes)
    if not files:
        raise DataError(src, None, f"holds no HDF5 files ({', '.join(suffixes)})")
    names = {}
    for p in files:
        rel = p.relative_to(src).with_suffix("")
        if rel.name in ("data", "dataset") and len(rel.parts) > 1:  # e.g. IIWA_Box_None_PickPlace/data.hdf5
            rel = rel.parent
        names[rel.as_posix()] = p
    return names
