"""Training throughput (timesteps/s, GFLOP/s, MFU) per backbone, size, context and input kind.
Usage: python benchmarks/train_throughput.py --help   (implementation: lram.bench.throughput)"""

from lram.bench.throughput import main

if __name__ == "__main__":
    raise SystemExit(main())
