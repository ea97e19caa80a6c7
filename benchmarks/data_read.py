"""Random window reads per second from each storage layout (the sampler's hot path), and bytes on disk.

Generates two tasks itself: a vector task (39-d float32 states, 4-d actions, Meta-World-like) and an image
task (3x64x64 uint8 frames, 18 discrete actions, Atari-like synthetic frames: a static gray background
with walls, moving sprites and a score bar, the gray channel repeated to RGB as the paper's Atari data).
It writes each in every layout, then times windows of C steps drawn as the paper's sampler draws them
(episode with probability proportional to its length, end ~ U{1..L}, start = max(end - C, 0)), all five
fields read and copied into fresh arrays (what a collate step does).

Three regimes per layout:
  warm    files open (handle cache hit) and data in the page cache
  reopen  every read opens its episode file again (paper layout at scale: 3.4M files, random episodes,
          so the per-process handle cache almost never hits); page cache warm.  Not applicable to the
          packed layout (5 files per task, always open)
  cold    file pages evicted from the page cache first (posix_fadvise DONTNEED); paper files reopened
          for every read, packed files mapped once

Usage: python benchmarks/data_read.py [--seconds 2] [--context 50] [--out benchmarks/out/data_read.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lram.data.episode import FIELDS, Episode
from lram.data.storage import HANDLES, PackedWriter, PaperWriter, open_task

LAYOUTS = {
    "paper hdf5 gzip-1": (PaperWriter, {"fmt": "hdf5", "compress": True}),
    "paper hdf5 gzip-1, h5py chunks": (PaperWriter, {"fmt": "hdf5", "compress": True, "chunk_bytes": None}),
    "paper hdf5 raw": (PaperWriter, {"fmt": "hdf5", "compress": False}),
    "paper npz raw": (PaperWriter, {"fmt": "npz", "compress": False}),
    "paper npz compressed": (PaperWriter, {"fmt": "npz", "compress": True}),
    "packed": (PackedWriter, {}),
}


def vector_episode(rng, T):
    t = np.arange(T, dtype=np.float32)[:, None]
    states = (np.sin(t / 20 + rng.uniform(0, 6, 39)) + 0.01 * rng.standard_normal((T, 39))).astype(np.float32)
    actions = np.clip(rng.standard_normal((T, 4)) * 0.3, -1, 1).astype(np.float32)
    rewards = rng.uniform(0, 10, T).astype(np.float32)
    return Episode(states, actions, rewards)


def image_episode(rng, T):
    """Atari-like 64x64 frames: static background and walls, 4 moving sprites, a changing score bar."""
    base = np.full((64, 64), 40, np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, 56, 2)
        base[y:y + rng.integers(2, 8), x:x + rng.integers(2, 30)] = rng.integers(80, 200)
    frames = np.repeat(base[None], T, axis=0)
    pos = rng.integers(0, 60, (4, 2)).astype(float)
    vel = rng.uniform(-1.5, 1.5, (4, 2))
    for t in range(T):
        pos = (pos + vel) % 60
        for k, (y, x) in enumerate(pos.astype(int)):
            frames[t, y:y + 4, x:x + 4] = 200 + 10 * k
        frames[t, 0:3, : (t * 7) % 64] = 255
    states = np.repeat(frames[:, None], 3, axis=1)
    actions = rng.integers(0, 18, T)
    rewards = rng.choice(np.array([0.0, 0.0, 0.0, 1.0], np.float32), T)
    return Episode(states, actions, rewards)


def _n(x) -> str:
    return "-" if x is None else f"{x:.0f}"


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file())


def evict(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def draw_windows(td, rng, n, C):
    p = td.lengths / td.lengths.sum()
    eps = rng.choice(td.num_episodes, size=n, p=p)
    ends = np.array([rng.integers(1, td.lengths[i] + 1) for i in eps])
    return [(int(i), int(max(e - C, 0)), int(e)) for i, e in zip(eps, ends)]


def time_reads(td, windows, seconds, reopen=False, limit=None):
    n = 0
    t0 = time.perf_counter()
    for i, s, e in windows:
        if reopen:
            td.close()
        w = td.read(i, s, e)
        for f in FIELDS:
            np.array(w[f])
        n += 1
        if (limit and n >= limit) or time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--context", type=int, default=50)
    ap.add_argument("--vector-episodes", type=int, default=200)
    ap.add_argument("--image-episodes", type=int, default=40)
    ap.add_argument("--episode-len", type=int, default=500)
    ap.add_argument("--workdir", default=None, help="where to write the data (default: a temp folder, removed after)")
    ap.add_argument("--out", default="benchmarks/out/data_read.json")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lram-data-read-"))
    results = []
    try:
        for kind, make, n_eps in (("vector 39-d", vector_episode, args.vector_episodes),
                                  ("image 3x64x64", image_episode, args.image_episodes)):
            episodes = [make(rng, int(rng.integers(args.episode_len // 2, args.episode_len * 3 // 2))) for _ in range(n_eps)]
            steps = sum(len(e) for e in episodes)
            for name, (cls, kw) in LAYOUTS.items():
                folder = work / kind.split()[0] / name.replace(" ", "_").replace(",", "")
                t0 = time.perf_counter()
                with cls(folder, **kw) as w:
                    for e in episodes:
                        w.write(e)
                write_s = time.perf_counter() - t0
                td = open_task(folder)
                windows = draw_windows(td, np.random.default_rng(1), 200_000, args.context)
                time_reads(td, windows[:200], 1.0)  # warm up: handles + page cache
                warm = time_reads(td, windows, args.seconds)
                # packed: 5 files per task stay mapped, so there is no reopen regime (None)
                paper = td.layout == "paper"
                reopen = time_reads(td, windows, args.seconds, reopen=True) if paper else None
                td.close()
                evict(folder)
                cold = time_reads(td, windows[len(windows) // 2:], args.seconds, reopen=paper, limit=2000)
                td.close()
                size = disk_bytes(folder)
                row = {"task": kind, "layout": name, "steps": steps, "files": sum(1 for _ in folder.iterdir()),
                       "disk_MB": size / 2**20, "bytes_per_step": size / steps, "write_s": write_s,
                       "warm_windows_per_s": warm, "reopen_windows_per_s": reopen, "cold_windows_per_s": cold}
                results.append(row)
                print(f"{kind:14s} {name:32s} {row['disk_MB']:8.1f} MB {row['bytes_per_step']:8.0f} B/step  "
                      f"write {write_s:5.1f} s  warm {warm:8.0f}/s  reopen {_n(reopen):>7s}/s  cold {cold:7.0f}/s", flush=True)
                shutil.rmtree(folder)
                HANDLES.clear()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nrandom {args.context}-step windows, all 5 fields copied out; 1 process; windows/s")
    head = "| task | layout | MB on disk | bytes/step | warm | reopen | cold |"
    print(head + "\n|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['task']} | {r['layout']} | {r['disk_MB']:.1f} | {r['bytes_per_step']:.0f} | {r['warm_windows_per_s']:.0f} "
              f"| {_n(r['reopen_windows_per_s'])} | {r['cold_windows_per_s']:.0f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"context": args.context, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
