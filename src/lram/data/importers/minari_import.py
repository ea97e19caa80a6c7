"""Import Minari datasets stored on local disk into lram task folders (no network: ``download=False``).

Minari (``minari==0.5.4``) stores ``<MINARI_DATASETS_PATH>/<dataset_id>/data/{main_data.hdf5, metadata.json}``;
each episode has T+1 observations and T actions, rewards, terminations, truncations.  Conversion:

* the final observation (the one after the last action) is dropped, so states has T rows;
* observations are flattened per step to float32: Box values reshaped to a vector, Dict spaces by their keys
  in sorted order, Tuple spaces in order (nested spaces recursively), then concatenated;
* Discrete actions become int64 ``[T]`` (minus the space's ``start``); Box actions float32 ``[T, a]`` (flattened;
  ``clip_actions`` clips them to [-1, 1], the range lram's tokenizer expects);
* ``dones`` = terminations; ``info`` keeps ``trj_id`` (the episode id) and ``truncated``.

Stems are the Minari episode ids, so re-running skips episodes already written.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lram.data.episode import DataError, Episode
from lram.data.importers._common import write_episodes


def _minari():
    try:
        import minari
    except ImportError:
        raise ImportError("importing Minari datasets needs minari: pip install minari==0.5.4") from None
    return minari


@contextlib.contextmanager
def datasets_path(root: str | os.PathLike | None) -> Iterator[None]:
    """Temporarily point ``MINARI_DATASETS_PATH`` at ``root`` (no change if None)."""
    if root is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def locate(src: str | os.PathLike) -> tuple[Path, str]:
    """(datasets root, dataset id) of a dataset folder ``src`` (the one holding ``data/metadata.json``)."""
    src = Path(src)
    meta = src / "data" / "metadata.json"
    if not meta.is_file():
        raise DataError(src, None, "not a Minari dataset folder: expected data/metadata.json and data/main_data.hdf5")
    try:
        dataset_id = json.loads(meta.read_text())["dataset_id"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(meta, "dataset_id", f"unreadable ({e!r})") from None
    parts = str(dataset_id).split("/")
    if tuple(src.resolve().parts[-len(parts):]) != tuple(parts):
        raise DataError(meta, "dataset_id", f"{dataset_id!r} does not match the folder {src}")
    root = src.resolve()
    for _ in parts:
        root = root.parent
    return root, str(dataset_id)


def flatten(space, value, n: int, source: str, name: str = "observations") -> np.ndarray:
    """Per-step float32 vectors ``[n, d]`` of a (possibly nested Dict/Tuple) space's batched values."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        if not isinstance(value, dict):
            raise DataError(source, name, f"expected a dict for a Dict space, got {type(value).__name__}")
        return np.concatenate([flatten(space[k], value[k], n, source, f"{name}/{k}") for k in sorted(space.keys())], axis=1)
    if isinstance(space, spaces.Tuple):
        return np.concatenate([flatten(s, v, n, source, f"{name}/{i}") for i, (s, v) in enumerate(zip(space, value))], axis=1)
    a = np.asarray(value)
    if a.shape[0] != n:
        raise DataError(source, name, f"expected {n} steps, got shape {list(a.shape)}")
    if isinstance(space, spaces.Discrete):
        return (a.reshape(n, 1) - int(space.start)).astype(np.float32)
    if not isinstance(space, (spaces.Box, spaces.MultiBinary, spaces.MultiDiscrete)):
        raise DataError(source, name, f"unsupported observation space {type(space).__name__}")
    return a.reshape(n, -1).astype(np.float32)


def to_episode(ep, obs_space, act_space, source: str, clip_actions: bool = False) -> Episode:
    """One Minari ``EpisodeData`` as an :class:`Episode` (final observation dropped)."""
    from gymnasium import spaces

    src = f"{source}: episode {ep.id}"
    t = len(ep.rewards)
    states = flatten(obs_space, ep.observations, t + 1, src)[:t]
    acts = np.asarray(ep.actions)
    if len(acts) != t:
        raise DataError(src, "actions", f"expected {t} steps (the number of rewards), got shape {list(acts.shape)}")
    if isinstance(act_space, spaces.Discrete):
        actions = acts.reshape(t).astype(np.int64) - int(act_space.start)
    elif isinstance(act_space, spaces.Box):
        actions = acts.reshape(t, -1).astype(np.float32)
        if clip_actions:
            actions = np.clip(actions, -1.0, 1.0)
    else:
        raise DataError(src, "actions", f"unsupported action space {type(act_space).__name__} (Discrete or Box)")
    term = np.asarray(ep.terminations).reshape(-1).astype(bool)
    trunc = np.asarray(ep.truncations).reshape(-1).astype(bool)
    for f, a in (("terminations", term), ("truncations", trunc)):
        if len(a) != t:
            raise DataError(src, f, f"expected {t} steps, got {len(a)}")
    return Episode(states, actions, np.asarray(ep.rewards, dtype=np.float32).reshape(t), term,
                   info={"trj_id": int(ep.id), "truncated": bool(trunc[-1]) if t else False})


def import_minari(src: str | os.PathLike, dst_root: str | os.PathLike, *, dataset_id: str | None = None,
                  task: str | None = None, clip_actions: bool = False, layout: str = "paper", progress: bool = True,
                  **writer_options) -> dict[str, dict]:
    """Import a local Minari dataset into ``dst_root/<task>`` (task defaults to the dataset id).

    ``src`` is the dataset folder (holding ``data/metadata.json``) or, with ``dataset_id``, the datasets root
    (what ``MINARI_DATASETS_PATH`` would be).
    """
    minari = _minari()
    root, dataset_id = (Path(src), dataset_id) if dataset_id is not None else locate(src)
    task = task or dataset_id
    with datasets_path(root):
        try:
            ds = minari.load_dataset(dataset_id, download=False)
        except (FileNotFoundError, OSError, ValueError, KeyError) as e:
            raise DataError(Path(root) / dataset_id, None, f"cannot load the Minari dataset {dataset_id!r} ({e})") from None
    obs_space, act_space = ds.observation_space, ds.action_space
    ids = [int(i) for i in ds.episode_indices]
    source = str(Path(root) / dataset_id / "data" / "main_data.hdf5")

    def make(i: int) -> Episode:
        ep = next(iter(ds.iterate_episodes([i])))
        return to_episode(ep, obs_space, act_space, source, clip_actions)

    items = ((str(i), (lambda i=i: make(i))) for i in ids)
    res = write_episodes(Path(dst_root) / task, items, total=len(ids), layout=layout, desc=task, progress=progress,
                         **writer_options)
    return {task: res}
