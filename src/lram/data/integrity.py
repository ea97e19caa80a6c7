"""Whole-tree validation of stored trajectory data (``lram data check``).

Every episode is read in full and checked: readable, required fields present, all fields as long as
``rewards`` and as the index says, finite values, acceptable dtypes, the same observation/action kind
as the task's other episodes, done flags only at the last step, returns-to-go equal to the reverse
cumulative sum of the rewards and the indexed return equal to their sum (within float32 accumulation
error).  Every problem is collected (none stops the check), each naming the file, the field and the reason.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lram.data.episode import FIELDS, DataError, validate_episode
from lram.data.packed_layout import PackedTask
from lram.data.paper_layout import (
    LENGTHS_FILE,
    RETURNS_FILE,
    list_episode_files,
    open_episode_file,
)
from lram.data.storage import find_tasks, task_layout
from lram.data.taskdata import is_discrete_actions, read_json, stem_sort_key

_EPS32 = 2.0**-24
_KINDS = {  # acceptable dtype kinds per field, as stored
    "states": "fiub", "actions": "iuf", "rewards": "fiu", "dones": "biuf", "returns_to_go": "fiu",
}


@dataclass
class Problem:
    """One finding: ``severity`` is 'error' (the check fails) or 'warning' (reported only)."""

    path: str
    field: str | None
    message: str
    episode: str | None = None
    severity: str = "error"

    @classmethod
    def from_error(cls, e: DataError, episode: str | None = None) -> Problem:
        text = str(e)
        prefix = e.source + (f": field '{e.field}'" if e.field else "") + ": "
        return cls(e.source, e.field, text[len(prefix):] if text.startswith(prefix) else text, episode)

    def __str__(self) -> str:
        where = self.path + (f" [episode {self.episode}]" if self.episode is not None else "")
        return f"{where}: " + (f"field '{self.field}': " if self.field else "") + self.message


def _tolerance(n: int, scale: float) -> float:
    """Float32 accumulation error bound for sums of ``n`` terms of magnitude up to ``scale``."""
    return 1e-3 + 4 * _EPS32 * n * scale


def check_arrays(raw: dict[str, np.ndarray], source: str, *, episode: str | None = None, index_length: int | None = None,
                 index_return: float | None = None, meta: dict | None = None, length_source: str = "the index") -> list[Problem]:
    """All problems of one episode given its stored arrays (missing optional fields may be absent)."""
    out: list[Problem] = []

    def bad(field, msg):
        out.append(Problem(source, field, msg, episode))

    for f in ("states", "actions", "rewards"):
        if f not in raw:
            bad(f, "missing (required: states, actions, rewards)")
    if "rewards" not in raw:
        return out
    r_raw = np.asarray(raw["rewards"])
    n = r_raw.shape[0] if r_raw.ndim else 0
    arrays = {}
    for f, a in raw.items():
        a = np.asarray(a)
        if f == "dones" and (a.ndim == 0 or (a.shape == (1,) and n > 1)):
            flag = bool(a.reshape(-1)[0]) if a.dtype.kind in "biuf" else False
            a = np.zeros(n, dtype=bool)
            a[-1:] = flag
        if a.dtype.kind not in _KINDS[f]:
            bad(f, f"wrong dtype {a.dtype} (expected kind {'/'.join(_KINDS[f])})")
            continue
        if a.ndim == 0 or a.shape[0] != n:
            bad(f, f"has {list(a.shape)} but rewards have {n} steps")
            continue
        if f in ("rewards", "dones", "returns_to_go") and not (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)):
            bad(f, f"expected [T] values, got shape {list(a.shape)}")
            continue
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad(f, f"contains NaN/inf (first at step {int(np.argwhere(~np.isfinite(a))[0][0])})")
            continue
        arrays[f] = a
    if n == 0:
        bad("rewards", "empty episode (length 0)")
        return out
    if index_length is not None and index_length != n:
        bad(None, f"holds {n} steps but {length_source} says {index_length}")
    if out:
        return out
    try:
        validate_episode(arrays, source)
    except DataError as e:
        out.append(Problem.from_error(e, episode))
        return out
    r = arrays["rewards"].reshape(n).astype(np.float64)
    ref = np.cumsum(r[::-1])[::-1]
    scale = float(np.abs(r).sum())
    if "returns_to_go" in arrays:
        rtg = arrays["returns_to_go"].reshape(n).astype(np.float64)
        wrong = np.abs(rtg - ref) > _tolerance(n, scale)
        if wrong.any():
            k = int(np.argmax(wrong))
            bad("returns_to_go", f"inconsistent with the rewards (first at step {k}: {rtg[k]:.6g} stored, {ref[k]:.6g} "
                "expected, the undiscounted sum of the rewards from that step on)")
    if index_return is not None and abs(index_return - ref[0]) > _tolerance(n, scale):
        bad(None, f"sum of rewards {ref[0]:.6g} differs from the indexed return {index_return:.6g}")
    if "dones" in arrays:
        d = arrays["dones"].reshape(n).astype(bool)
        if d[:-1].any():
            bad("dones", f"done flag set before the last step (at step {int(np.argmax(d))} of {n})")
    if meta is not None:
        s, a = arrays["states"], arrays["actions"]
        if tuple(s.shape[1:]) != meta["obs_shape"]:
            bad("states", f"per-step shape {list(s.shape[1:])} differs from the task's {list(meta['obs_shape'])}")
        kind = (is_discrete_actions(a), tuple(a.shape[1:]) if not is_discrete_actions(a) else ())
        if kind != meta["action_kind"]:
            want = "discrete" if meta["action_kind"][0] else f"continuous {list(meta['action_kind'][1])}"
            bad("actions", f"shape {list(a.shape)} differs from the task's {want} actions")
    return out


def episode_meta(raw: dict[str, np.ndarray]) -> dict:
    a = np.asarray(raw["actions"])
    d = is_discrete_actions(a)
    return {"obs_shape": tuple(np.asarray(raw["states"]).shape[1:]), "action_kind": (d, () if d else tuple(a.shape[1:]))}


def check_paper_task(task_dir: Path, progress: bool = True) -> tuple[list[Problem], int]:
    """(problems, number of episode files checked) for a paper-layout folder."""
    out: list[Problem] = []
    d = Path(task_dir)
    try:
        files = list_episode_files(d)
    except DataError as e:
        return [Problem.from_error(e)], 0
    for name in os.listdir(d):
        if name.startswith(".") and name.endswith(".tmp"):
            out.append(Problem(str(d / name), None, "temp file left by an interrupted writer (reopening a writer removes it)",
                               severity="warning"))
    lengths: dict | None = None
    returns: dict = {}
    if (d / LENGTHS_FILE).is_file():
        try:
            lengths = read_json(d / LENGTHS_FILE)
        except DataError as e:
            out.append(Problem.from_error(e))
    else:
        out.append(Problem(str(d), None, f"no {LENGTHS_FILE}: readers scan every file to index the task", severity="warning"))
    if (d / RETURNS_FILE).is_file():
        try:
            returns = read_json(d / RETURNS_FILE)
        except DataError as e:
            out.append(Problem.from_error(e))
    if lengths is not None:
        for stem, v in lengths.items():
            if stem not in files:
                out.append(Problem(str(d / f"{stem}.hdf5"), None, f"episode listed in {LENGTHS_FILE} but its file is missing"))
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) or v < 1:
                msg = f"episode {stem!r}: expected a positive integer length, got {v!r}"
                out.append(Problem(str(d / LENGTHS_FILE), None, msg))
                lengths[stem] = None
        unindexed = [s for s in files if s not in lengths]
        if unindexed:
            out.append(Problem(str(d), None, f"{len(unindexed)} episode files not in {LENGTHS_FILE} (written after the last "
                               f"index update, e.g. {unindexed[0]}{files[unindexed[0]]}); reopening a writer indexes them",
                               severity="warning"))
    meta = None
    stems = sorted(files, key=stem_sort_key)
    for stem in tqdm(stems, desc=f"checking {d.name}", disable=not progress or len(stems) < 2, leave=False, unit="file"):
        path = d / f"{stem}{files[stem]}"
        try:
            h = open_episode_file(path)
        except DataError as e:
            out.append(Problem.from_error(e))
            continue
        except OSError as e:
            out.append(Problem(str(path), None, f"cannot read ({e})"))
            continue
        try:
            raw = {}
            for f in FIELDS:
                if f in h.names():
                    raw[f] = h.slice(f)
            idx_len = lengths.get(stem) if lengths is not None else None
            idx_ret = returns.get(stem)
            idx_ret = float(idx_ret) if isinstance(idx_ret, (int, float)) and not isinstance(idx_ret, bool) else None
            problems = check_arrays(raw, str(path), index_length=int(idx_len) if idx_len else None, index_return=idx_ret,
                                    meta=meta, length_source=LENGTHS_FILE)
            if not problems and meta is None:
                meta = episode_meta(raw)
            out.extend(problems)
        except DataError as e:
            out.append(Problem.from_error(e))
        finally:
            h.close()
    return out, len(stems)


def check_packed_task(task_dir: Path, progress: bool = True) -> tuple[list[Problem], int]:
    """(problems, number of episodes checked) for a packed-layout folder."""
    d = Path(task_dir)
    try:
        td = PackedTask(d)
    except DataError as e:
        return [Problem.from_error(e)], 0
    out: list[Problem] = []
    ok_fields = []
    for f in FIELDS:
        try:
            td._map(f)
            ok_fields.append(f)
        except DataError as e:
            out.append(Problem.from_error(e))
    try:
        if set(ok_fields) >= {"states", "actions", "rewards"}:
            meta = {"obs_shape": td.obs_shape, "action_kind": (td.discrete, () if td.discrete else (td.action_dim,))}
            for i in tqdm(range(td.num_episodes), desc=f"checking {d.name}", disable=not progress or td.num_episodes < 2,
                          leave=False, unit="ep"):
                raw = td.read(i, fields=ok_fields)
                for pr in check_arrays(raw, str(d), episode=td.stems[i], index_length=int(td.lengths[i]),
                                       index_return=float(td.returns[i]), meta=meta, length_source="packed.json"):
                    if pr.field in FIELDS:
                        pr.path = str(td.field_path(pr.field))
                    out.append(pr)
    finally:
        td.close()
    return out, td.num_episodes


def check_task(task_dir: str | os.PathLike, progress: bool = True) -> tuple[list[Problem], int]:
    d = Path(task_dir)
    layout = task_layout(d)
    if layout == "packed":
        return check_packed_task(d, progress)
    if layout == "paper":
        return check_paper_task(d, progress)
    return [Problem(str(d), None, "not a task folder")], 0


def check_tree(root: str | os.PathLike, progress: bool = True) -> tuple[dict[str, list[Problem]], dict[str, int]]:
    """Check every task under ``root``: ({task: problems}, {task: episodes checked})."""
    problems, counts = {}, {}
    for name, path in tqdm(find_tasks(root).items(), desc="checking tasks", disable=not progress, unit="task"):
        problems[name], counts[name] = check_task(path, progress)
    return problems, counts
