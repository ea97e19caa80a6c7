"""Which mLSTM kernel should the xLSTM backbone use on this machine?  Training step time (forward +
backward) of the 16M xLSTM[1:0] backbone on a batch of C=50 windows (150 tokens), per kernel, measured
in one run.  Usage: python benchmarks/xlstm_kernels.py [--batch 4] [--repeats 5]"""

from __future__ import annotations

import argparse

import torch

from lram.bench.latency import time_call
from lram.models import build_backbone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=150)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels = ["chunkwise", "mlstm_kernels:chunkwise--native_autograd", "mlstm_kernels:chunkwise--native_custbw",
               "recurrent"]
    x = torch.randn(args.batch, args.tokens, 512)
    print(f"xLSTM[1:0] 16M backbone, batch {args.batch} x {args.tokens} tokens, {torch.get_num_threads()} threads")
    print(f"{'kernel':<45}{'chunk':>6}{'fwd+bwd ms':>12}{'fwd ms':>10}")
    for kernel in kernels:
        for chunk in ((32, 64) if kernel != "recurrent" else (64,)):
            try:
                torch.manual_seed(0)
                bb = build_backbone("xlstm", d_model=512, num_blocks=8, mlstm_kernel=kernel, chunk_size=chunk)
            except (ImportError, ValueError) as e:
                print(f"{kernel:<45} unavailable: {e}")
                break

            def train_step(bb=bb):
                y, _ = bb(x, return_state=False)
                y.square().mean().backward()

            def fwd(bb=bb):
                with torch.no_grad():
                    bb(x, return_state=False)

            t = time_call(train_step, args.repeats, 1)["median_ms"]
            f = time_call(fwd, args.repeats, 1)["median_ms"]
            print(f"{kernel:<45}{chunk:>6}{t:>12.1f}{f:>10.1f}")


if __name__ == "__main__":
    main()
