"""Storage figures for REAL Atari frames: bytes on disk per frame, compression ratio, write time and sampler
throughput per layout.

Frames come from lram's Atari env (Freeway, the paper's preprocessing: 64x64 gray repeated to [3, 64, 64] uint8)
played by the scripted Freeway expert, so the compression ratios are those of real game frames, not of the
random data of ``benchmarks/sampler.py`` (which does not compress at all).  Layouts: the paper layout (one
file per episode) as HDF5 gzip level 1 (the paper's setting), HDF5 uncompressed, npz uncompressed and npz
compressed, and lram's packed layout (memory-mapped .npy per field).  Sampler: ``WindowSampler`` windows of
C = 50 steps, batches of 32, one process (= one data-loader worker), files already in the page cache.

Usage: python benchmarks/atari_frames.py [--games 2] [--steps 2100] [--root /tmp/lram-atari-frames]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from lram.data import PackedWriter, PaperWriter, open_dataset
from lram.data.generators.atari import record_episode
from lram.data.sampler import DomainData, SamplerConfig, WindowSampler
from lram.envs.atari import FreewayExpert, make_atari_env

LAYOUTS = {  # name -> writer factory
    "paper hdf5 gzip-1": lambda d: PaperWriter(d, fmt="hdf5", compress=True, progress=False),
    "paper hdf5 uncompressed": lambda d: PaperWriter(d, fmt="hdf5", compress=False, progress=False),
    "paper npz uncompressed": lambda d: PaperWriter(d, fmt="npz", compress=False, progress=False),
    "paper npz compressed": lambda d: PaperWriter(d, fmt="npz", compress=True, progress=False),
    "packed (.npy memmap)": lambda d: PackedWriter(d),
}


def record(games: int, steps: int, seed: int) -> list:
    """``games`` Freeway games (at most ``steps`` agent steps each) played by the scripted expert."""
    env = make_atari_env("freeway", max_episode_steps=steps)
    eps = []
    try:
        for g in range(games):
            t0 = time.perf_counter()
            ep = record_episode(env, FreewayExpert(env), seed=seed + g, max_steps=steps, discrete=True)
            dt = time.perf_counter() - t0
            print(f"game {g}: {len(ep)} steps, return {ep.total_return:.0f}, {len(ep) / dt:.0f} steps/s", flush=True)
            eps.append(ep)
    finally:
        env.close()
    return eps


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def windows_per_second(task_dir: Path, seconds: float = 3.0, batch_size: int = 32) -> float:
    """C = 50 windows per second drawn by one WindowSampler process from the task in ``task_dir``."""
    tasks = open_dataset(task_dir.parent, progress=False)
    dom = DomainData("atari", list(tasks.values()), num_actions=18)
    s = WindowSampler([dom], SamplerConfig(context=50, batch_size=batch_size))
    s.batch(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += 1
        s.batch(n)
    return n * batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games", type=int, default=2, help="full Freeway games to record (default: 2)")
    p.add_argument("--steps", type=int, default=2100, help="agent steps per game at most (a full game is ~2050)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="/tmp/lram-atari-frames")
    p.add_argument("--out", default="benchmarks/out/atari_frames.json")
    args = p.parse_args()
    eps = record(args.games, args.steps, args.seed)
    frames = sum(len(e) for e in eps)
    raw = frames * int(np.prod(eps[0].states.shape[1:]))  # uint8 bytes of the frames alone
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    results = {"frames": frames, "raw_frame_bytes": raw // frames, "layouts": {}}
    print(f"{frames} frames, raw {raw / frames:.0f} B/frame ({raw / 2**20:.1f} MiB)\n")
    print(f"{'layout':<26}{'B/frame':>9}{'ratio':>8}{'write s':>9}{'windows/s':>11}")
    for name, factory in LAYOUTS.items():
        task_dir = root / name.split()[0] / name.replace(" ", "_").replace("(", "").replace(")", "") / "atari-freeway"
        t0 = time.perf_counter()
        with factory(task_dir) as w:
            for ep in eps:
                w.write(ep)
        write_s = time.perf_counter() - t0
        size = folder_bytes(task_dir)
        rate = windows_per_second(task_dir)
        row = {"bytes_per_frame": round(size / frames, 1), "ratio_vs_raw": round(raw / size, 2), "write_s": round(write_s, 3),
               "windows_per_s": round(rate, 1), "folder_bytes": size}
        results["layouts"][name] = row
        print(f"{name:<26}{size / frames:>9.0f}{raw / size:>8.1f}{write_s:>9.2f}{rate:>11.0f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
