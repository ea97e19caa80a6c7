"""Sampler throughput and memory: C=50 windows per second per worker (one process) for a vector-state
domain and an image domain, from the packed and the paper layout, and resident memory as the dataset
grows (1M -> 5M transitions).  The data are generated here (random values, real formats).

Usage: python benchmarks/sampler.py [--root /tmp/lram-bench-data] [--transitions 5000000]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from pathlib import Path

import numpy as np

from lram.data import Episode, PackedWriter, PaperWriter, open_dataset
from lram.data.sampler import DomainData, SamplerConfig, WindowSampler


def rss_mb() -> float:
    """Anonymous resident memory (allocations; memory-mapped data pages are page cache, not counted)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_task(path: Path, layout: str, transitions: int, image: bool, seed: int, ep_len: int = 200) -> None:
    if path.exists():
        return
    rng = np.random.default_rng(seed)
    writer = PackedWriter(path, commit_every=500) if layout == "packed" else PaperWriter(
        path, fmt="hdf5", compress=True, progress=False, commit_every=500)
    with writer as w:
        for _ in range(transitions // ep_len):
            if image:
                s = rng.integers(0, 256, (ep_len, 3, 64, 64), dtype=np.uint8)
                a = rng.integers(0, 18, ep_len)
            else:
                s = rng.normal(size=(ep_len, 39)).astype(np.float32)
                a = rng.uniform(-1, 1, (ep_len, 4)).astype(np.float32)
            w.write(Episode(states=s, actions=a, rewards=rng.random(ep_len).astype(np.float32)))


def windows_per_second(root: Path, name: str, batches: int, batch_size: int = 32) -> float:
    tasks = open_dataset(root, progress=False)
    image = any(len(t.obs_shape) == 3 for t in tasks.values())
    dom = DomainData(name, list(tasks.values()), num_actions=18 if image else None)
    s = WindowSampler([dom], SamplerConfig(context=50, batch_size=batch_size))
    s.batch(0)
    t0 = time.perf_counter()
    for k in range(1, batches + 1):
        s.batch(k)
    return batches * batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="/tmp/lram-bench-data")
    p.add_argument("--transitions", type=int, default=5_000_000)
    p.add_argument("--out", default="benchmarks/out/sampler.json")
    args = p.parse_args()
    root = Path(args.root)
    results = {}
    # throughput: vector 1M-step tasks, image 100k-step tasks, both layouts
    for kind, image, n in (("vector", False, 1_000_000), ("image", True, 100_000)):
        for layout in ("packed", "paper"):
            base = root / f"{kind}-{layout}"
            for i in range(2):
                make_task(base / f"task{i}", layout, n // 2, image, seed=i)
            rate = windows_per_second(base, kind, 60 if image else 200)
            results[f"{kind}/{layout}"] = round(rate, 1)
            print(f"{kind:<7}{layout:<8}{rate:>10.0f} windows/s per worker (C=50, batch 32)")
    # memory: the same sampler over 1M and args.transitions transitions (packed, vector)
    for n in (1_000_000, args.transitions):
        base = root / f"memory-{n}"
        make_task(base / "task0", "packed", n, False, seed=7)
        gc.collect()
        before = rss_mb()
        tasks = open_dataset(base, progress=False)
        s = WindowSampler([DomainData("vector", list(tasks.values()))], SamplerConfig(context=50, batch_size=32))
        for k in range(300):
            s.batch(k)
        after = rss_mb()
        results[f"memory_mb/{n}"] = round(after - before, 1)
        print(f"memory for {n:>9,} transitions: +{after - before:.1f} MB resident after 300 batches")
        del s, tasks
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
