"""Storage of trajectory data: one reader interface over the paper's layout and lram's packed layout.

* :func:`open_task` (one task folder, layout detected) and :func:`open_dataset` (every task folder under a
  root; layouts may be mixed) return :class:`TaskData` readers (see :mod:`lram.data.taskdata`).
* :class:`PaperWriter` (one ``.hdf5``/``.npz`` file per episode, :mod:`lram.data.paper_layout`) and
  :class:`PackedWriter` (one memory-mappable array per field, :mod:`lram.data.packed_layout`) write
  episodes crash-safely and resume an existing folder.
* :func:`convert_task` / :func:`convert_dataset` copy between layouts (resumable, with progress).
* :func:`lram.data.integrity.check_tree` validates a whole tree (``lram data check``).

Example::

    with PackedWriter("data/packed/reach-v3") as w:
        w.write(Episode(states, actions, rewards))
    td = open_task("data/packed/reach-v3")
    window = td.read(0, start=10, end=60)          # dict of [50, ...] arrays
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from tqdm.auto import tqdm

from lram.data.episode import DataError
from lram.data.packed_layout import PackedTask, PackedWriter, is_packed_task
from lram.data.paper_layout import PaperTask, PaperWriter, is_paper_task
from lram.data.taskdata import HANDLES, LAYOUTS, TaskData, set_max_open_files, share_mode, summary_stats
from lram.utils.io import atomic_path

__all__ = [
    "TaskData", "PaperTask", "PackedTask", "PaperWriter", "PackedWriter", "open_task", "open_dataset",
    "find_tasks", "task_layout", "convert_task", "convert_dataset", "write_all_stats_csv", "set_max_open_files",
    "HANDLES", "LAYOUTS",
]


def task_layout(path: str | os.PathLike) -> str | None:
    """'packed' or 'paper' if ``path`` is a task folder of that layout, else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    if is_packed_task(path):
        return "packed"
    if is_paper_task(path):
        return "paper"
    return None


def open_task(path: str | os.PathLike, progress: bool = True) -> TaskData:
    """Open one task folder, detecting its layout (``packed.json`` -> packed; episode files/index -> paper)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "no such folder")
    layout = task_layout(path)
    if layout == "packed":
        return PackedTask(path)
    if layout == "paper":
        return PaperTask(path, progress=progress)
    raise DataError(path, None, "not a task folder: expected packed.json, episode_lengths.json or episode files "
                    "(*.hdf5, *.npz)")


def find_tasks(root: str | os.PathLike) -> dict[str, Path]:
    """Every task folder under ``root`` (or ``root`` itself), keyed by its path relative to ``root``.

    Task folders are not descended into, so a folder of a million episode files is listed only until its
    first episode file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, None, "no such folder")
    if task_layout(root):
        return {root.name: root}
    found: dict[str, Path] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            subdirs = sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))
        for sub in subdirs:
            if task_layout(sub):
                found[sub.relative_to(root).as_posix()] = sub
            else:
                stack.append(sub)
    return dict(sorted(found.items()))


def open_dataset(root: str | os.PathLike, progress: bool = True) -> dict[str, TaskData]:
    """Open every task folder under ``root``; keys are paths relative to ``root`` (e.g. 'metaworld/reach-v2')."""
    tasks = find_tasks(root)
    if not tasks:
        raise DataError(root, None, "holds no task folders (packed.json, episode_lengths.json or episode files)")
    return {name: open_task(p, progress=progress) for name, p in tasks.items()}


def convert_task(src: str | os.PathLike | TaskData, dst: str | os.PathLike, layout: str, progress: bool = True,
                 **writer_options) -> TaskData:
    """Copy one task into ``dst`` in ``layout`` ('paper' or 'packed'); returns the reader of the copy.

    Resumable: episodes whose stem already exists in ``dst`` are skipped.  ``writer_options`` go to
    :class:`PaperWriter` (fmt, compress, compression_level, ...) or :class:`PackedWriter`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {list(LAYOUTS)}, got {layout!r}")
    td = src if isinstance(src, TaskData) else open_task(src, progress=progress)
    dst = Path(dst)
    if dst.resolve() == td.path.resolve():
        raise ValueError(f"convert: source and destination are the same folder ({dst})")
    writer_cls = PaperWriter if layout == "paper" else PackedWriter
    with writer_cls(dst, **writer_options) as w:
        todo = [i for i, s in enumerate(td.stems) if s not in w]
        for i in tqdm(todo, desc=f"{td.task} -> {layout}", disable=not progress or not todo, leave=False, unit="ep"):
            w.write(td.episode(i), stem=td.stems[i])
    return open_task(dst, progress=progress)


def convert_dataset_once(src_root: str | os.PathLike, dst_root: str | os.PathLike, layout: str,
                         progress: bool = False) -> Path:
    """``dst_root``, converted from ``src_root`` unless it exists: written as ``<dst_root>.partial`` and then
    renamed, so a killed conversion leaves no half copy that a re-run would take for complete."""
    import shutil

    dst_root = Path(dst_root)
    if not dst_root.exists():
        partial = dst_root.with_name(dst_root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        convert_dataset(src_root, partial, layout, progress=progress)
        partial.rename(dst_root)
    return dst_root


def convert_dataset(src_root: str | os.PathLike, dst_root: str | os.PathLike, layout: str, progress: bool = True,
                    **writer_options) -> dict[str, TaskData]:
    """Convert every task under ``src_root`` into the same relative folders under ``dst_root``."""
    tasks = open_dataset(src_root, progress=progress)
    dst_root = Path(dst_root)
    out = {}
    for name, td in tqdm(tasks.items(), desc=f"converting to {layout}", disable=not progress, unit="task"):
        dst = dst_root if (len(tasks) == 1 and td.path == Path(src_root)) else dst_root / name
        out[name] = convert_task(td, dst, layout, progress=progress, **writer_options)
    if layout == "paper":
        write_all_stats_csv(dst_root, out)
    return out


def write_all_stats_csv(root: str | os.PathLike, tasks: dict[str, TaskData] | None = None) -> Path:
    """Write ``<root>/all_stats.csv`` (one row of stats.json values per task), as the paper's scripts do."""
    root = Path(root)
    tasks = tasks if tasks is not None else open_dataset(root)
    rows = {name: summary_stats(td.lengths, td.returns) for name, td in tasks.items()}
    columns = list(dict.fromkeys(k for r in rows.values() for k in r))
    target = root / "all_stats.csv"
    with atomic_path(target) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["task", *columns])
            for name, r in rows.items():
                w.writerow([name, *(r.get(c, "") for c in columns)])
        share_mode(tmp)
    return target
