"""Latency per environment step vs context length (same as `lram bench`).  Usage: python benchmarks/latency.py --help"""

from lram.bench.latency import main

if __name__ == "__main__":
    raise SystemExit(main())
