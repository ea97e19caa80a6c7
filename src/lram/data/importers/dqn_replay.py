"""Import DQN-Replay Atari checkpoints (Agarwal et al. 2020, Dopamine replay logs) into lram task folders.

Source: per game and run, ``<Game>/<run>/replay_logs/$store$_<field>_ckpt.<k>.gz``, each a gzipped ``.npy``
array of the Dopamine replay buffer of iteration ``k``:

    observation [N, 84, 84] uint8 (grayscale)   action [N] int (index into the game's *minimal* action set)
    reward [N] float                            terminal [N] uint8 (1 at the last step of an episode)

Conversion (spec 1.2 and 8.4, the paper's ``download_atari_datasets.py --a_to_full_space --to_rgb --crop_dim=64``):

* episodes end at ``terminal``; steps after a checkpoint's last terminal (an episode continued in the next
  checkpoint) are dropped;
* frames are resized to 64x64 with ``cv2.INTER_AREA`` (needs ``opencv-python-headless``) and the gray channel
  is repeated 3 times: states are ``[T, 3, 64, 64]`` uint8;
* actions are mapped to the full 18-action ALE set through the game's minimal action set, taken from
  ``ale_py.ALEInterface.getMinimalActionSet()`` (ale-py bundles the ROMs) or given as ``minimal_actions``;
* rewards are kept as stored.  Dopamine stores rewards already clipped to [-1, 1] (its runner clips before
  ``agent.step``), so ``clip_rewards`` only matters for other sources.

The observation file is decompressed as a stream (one episode in memory at a time, not the 7 GB array of a
1M-step checkpoint).  Stems are 9 digits ``<run><k:02d><episode:06d>`` (Atari stems are 9 digits in the paper);
``info`` keeps run, checkpoint and start step.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lram.data.episode import DataError, Episode
from lram.data.importers._common import split_points, write_episodes

FIELDS = ("observation", "action", "reward", "terminal")
_CKPT = re.compile(r"^\$store\$_observation_ckpt\.(\d+)\.gz$")
FRAME_SIZE = 64


def store_file(logs: Path, field: str, k: int) -> Path:
    """Path of one ``$store$_<field>_ckpt.<k>.gz`` file."""
    return Path(logs) / f"$store$_{field}_ckpt.{k}.gz"


def load_gz_npy(path: str | os.PathLike, field: str) -> np.ndarray:
    """A whole gzipped ``.npy`` array (for the small per-step fields)."""
    try:
        with gzip.open(path, "rb") as fh:
            return np.load(fh, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(path, field, "missing") from None
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(path, field, f"not a gzipped .npy array ({e})") from None


class GzNpyRows:
    """Reads rows ``[start, end)`` of a gzipped ``.npy`` array in increasing order without loading it all."""

    def __init__(self, path: str | os.PathLike, field: str = "observation"):
        self.path, self.field = Path(path), field
        try:
            self.fh = gzip.open(self.path, "rb")
            version = np.lib.format.read_magic(self.fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            self.shape, fortran, self.dtype = reader(self.fh)
        except FileNotFoundError:
            raise DataError(self.path, field, "missing") from None
        except (OSError, EOFError, ValueError, zlib.error) as e:
            raise DataError(self.path, field, f"not a gzipped .npy array ({e})") from None
        if fortran or self.dtype.hasobject or len(self.shape) < 1:
            raise DataError(self.path, field, f"expected a C-order numeric array, got shape {self.shape} dtype {self.dtype}")
        self.offset = self.fh.tell()
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return int(self.shape[0])

    def rows(self, start: int, end: int) -> np.ndarray:
        if not 0 <= start <= end <= len(self):
            raise IndexError(f"{self.path}: rows [{start}, {end}) outside [0, {len(self)})")
        try:
            self.fh.seek(self.offset + start * self.row_bytes)  # forward seeks decompress and discard
            buf = self.fh.read((end - start) * self.row_bytes)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(self.path, self.field, f"corrupt gzip stream ({e})") from None
        if len(buf) != (end - start) * self.row_bytes:
            raise DataError(self.path, self.field, f"truncated: rows [{start}, {end}) of {len(self)} not all present")
        return np.frombuffer(buf, dtype=self.dtype).reshape(end - start, *self.shape[1:])

    def close(self) -> None:
        self.fh.close()


def to_lram_frames(frames: np.ndarray, source: str = "observation") -> np.ndarray:
    """[T, H, W] uint8 grayscale -> [T, 3, 64, 64] uint8: cv2 INTER_AREA resize, gray channel repeated 3x."""
    try:
        import cv2
    except ImportError:
        raise ImportError("importing Atari frames needs OpenCV: pip install opencv-python-headless") from None
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise DataError(source, "observation", f"expected [T, H, W] uint8 grayscale frames, got {list(frames.shape)} "
                        f"{frames.dtype}")
    out = np.empty((len(frames), FRAME_SIZE, FRAME_SIZE), dtype=np.uint8)
    for t, f in enumerate(frames):
        out[t] = f if f.shape == (FRAME_SIZE, FRAME_SIZE) else cv2.resize(f, (FRAME_SIZE, FRAME_SIZE),
                                                                          interpolation=cv2.INTER_AREA)
    return np.repeat(out[:, None], 3, axis=1)


def rom_name(game: str) -> str:
    """DQN-Replay game name (CamelCase, e.g. 'SpaceInvaders') -> ale-py ROM id ('space_invaders')."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower()


def minimal_action_set(game: str) -> list[int]:
    """Full-action-space ids of the game's minimal action set, from ale-py (which bundles the ROMs)."""
    try:
        import ale_py
        from ale_py import roms
    except ImportError:
        raise ImportError("mapping Atari actions to the full action set needs ale-py (pip install ale-py==0.12.1) "
                          "or an explicit minimal action set (--minimal-actions 0,1,3,4,11,12)") from None
    try:
        path = roms.get_rom_path(rom_name(game))
    except Exception as e:  # ale-py raises its own error types for unknown ROMs
        raise ValueError(f"ale-py has no ROM for game {game!r} ({rom_name(game)}): {e}; "
                         "pass the minimal action set explicitly (--minimal-actions)") from None
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(str(path))
    return [int(getattr(a, "value", a)) for a in ale.getMinimalActionSet()]


def parse_minimal_actions(text: str | Sequence[int] | None) -> list[int] | None:
    """A minimal action set from a JSON list ('[0, 1, 3]'), a comma list ('0,1,3') or a sequence of ints."""
    if text is None or not isinstance(text, str):
        return None if text is None else [int(a) for a in text]
    import json

    text = text.strip()
    vals = json.loads(text) if text.startswith("[") else [int(x) for x in text.split(",") if x.strip()]
    if not vals or any(not 0 <= int(v) < 18 for v in vals):
        raise ValueError(f"minimal actions: expected full-set ids in [0, 18), got {text!r}")
    return [int(v) for v in vals]


def find_checkpoints(src: str | os.PathLike) -> list[tuple[Path, int, int, str]]:
    """(replay_logs folder, run, checkpoint k, game) of every observation checkpoint under ``src``.

    Layout ``<Game>/<run>/replay_logs/``: the run is the folder above ``replay_logs`` (1 if not a number) and
    the game the folder above the run.
    """
    src = Path(src)
    if not src.exists():
        raise DataError(src, None, "no such file or folder")
    files = [src] if src.is_file() else sorted(src.rglob("$store$_observation_ckpt.*.gz"))
    out = []
    for p in files:
        m = _CKPT.match(p.name)
        if not m:
            raise DataError(p, None, "not a DQN-Replay observation checkpoint ($store$_observation_ckpt.<k>.gz)")
        logs = p.parent
        run_dir = logs.parent if logs.name == "replay_logs" else logs
        run = int(run_dir.name) if run_dir.name.isdigit() else 1
        game = run_dir.parent.name if run_dir.name.isdigit() else run_dir.name
        out.append((logs, run, int(m.group(1)), game))
    if not out:
        raise DataError(src, None, "holds no DQN-Replay checkpoints ($store$_observation_ckpt.<k>.gz)")
    return sorted(out, key=lambda x: (x[3], x[1], x[2]))


def checkpoint_items(logs: Path, run: int, k: int, minimal: Sequence[int], clip_rewards: bool = False):
    """(stem, make_episode) for every finished episode of checkpoint ``k``; frames are read lazily, in order."""
    if not (0 <= run <= 9 and 0 <= k <= 99):
        raise ValueError(f"{logs}: run {run} / checkpoint {k} do not fit the 9-digit stem <run><k:02d><episode:06d>")
    small = {f: load_gz_npy(store_file(logs, f, k), f) for f in ("action", "reward", "terminal")}
    obs = GzNpyRows(store_file(logs, "observation", k))
    n = len(obs)
    for f, a in small.items():
        if a.ndim != 1 or len(a) != n:
            obs.close()
            raise DataError(store_file(logs, f, k), f, f"expected shape [{n}] (the observation count), got {list(a.shape)}")
    actions = small["action"]
    if actions.dtype.kind not in "iu" or (n and (actions.min() < 0 or actions.max() >= len(minimal))):
        obs.close()
        raise DataError(store_file(logs, "action", k), "action", f"expected ints in [0, {len(minimal)}) (the minimal "
                        f"action set {list(minimal)}), got {actions.dtype} in [{actions.min()}, {actions.max()}]")
    full = np.asarray(minimal, dtype=np.int64)[actions]
    rewards = small["reward"].astype(np.float32)
    if clip_rewards:
        rewards = np.clip(rewards, -1.0, 1.0)
    spans = split_points(small["terminal"] != 0)
    if len(spans) > 1_000_000:
        raise ValueError(f"{logs}: more than 10^6 episodes in checkpoint {k}")
    src_name = str(store_file(logs, "observation", k))

    def make(s: int, e: int, j: int) -> Episode:
        states = to_lram_frames(obs.rows(s, e), src_name)
        dones = np.zeros(e - s, dtype=bool)
        dones[-1] = True
        return Episode(states, full[s:e].copy(), rewards[s:e].copy(), dones, info={"run": run, "checkpoint": k, "start": s})

    try:
        for j, (s, e) in enumerate(spans):
            yield f"{run}{k:02d}{j:06d}", (lambda s=s, e=e, j=j: make(s, e, j))
    finally:
        obs.close()


def import_dqn_replay(src: str | os.PathLike, dst_root: str | os.PathLike, *, game: str | None = None,
                      minimal_actions: str | Sequence[int] | None = None, checkpoints: Sequence[int] | None = None,
                      clip_rewards: bool = False, layout: str = "paper", progress: bool = True,
                      **writer_options) -> dict[str, dict]:
    """Import every DQN-Replay checkpoint under ``src`` into ``dst_root/<game>`` task folders (resumable).

    ``game`` overrides the game name inferred from the folders; ``checkpoints`` selects iterations ``k``.
    """
    found = find_checkpoints(src)
    if game is not None:
        found = [(logs, run, k, game) for logs, run, k, _ in found]
    if checkpoints is not None:
        found = [x for x in found if x[2] in set(checkpoints)]
        if not found:
            raise DataError(src, None, f"holds none of the checkpoints {list(checkpoints)}")
    if layout == "paper":
        writer_options.setdefault("stem_digits", 9)
    results: dict[str, dict] = {}
    minimal_given = parse_minimal_actions(minimal_actions)
    for g in dict.fromkeys(x[3] for x in found):
        minimal = minimal_given if minimal_given is not None else minimal_action_set(g)
        total = {"written": 0, "skipped": 0, "task": Path(dst_root) / g}
        for logs, run, k, _ in (x for x in found if x[3] == g):
            r = write_episodes(Path(dst_root) / g, checkpoint_items(logs, run, k, minimal, clip_rewards), layout=layout,
                               desc=f"{g} run {run} ckpt {k}", progress=progress, **writer_options)
            total["written"] += r["written"]
            total["skipped"] += r["skipped"]
        results[g] = total
    return results
