"""Training throughput: timesteps per second of a full optimizer step, per backbone, size, context and input.

One optimizer step is what :class:`lram.training.trainer.Trainer` does per micro-batch: the policy's
forward and masked cross-entropy loss over a batch of windows, the backward, global-norm clipping and the
AdamW update (the trainer's optimizer).  Inputs are vector states (204-d, continuous 6-d actions) or images
(3 x 64 x 64 uint8 through the IMPALA CNN, 18 discrete actions).  The backbones of one configuration are
timed in interleaved rounds, so a noisy machine slows all of them alike, and the ratios to the Transformer
are medians of per-round ratios.

Beside timesteps/s, the achieved GFLOP/s: the floating-point operations of one step (forward and backward)
counted by ``torch.utils.flop_counter`` on the PyTorch path of the same model (matrix products,
convolutions, attention), divided by the step time; and the MFU, that rate over this machine's measured
fp32 matrix-multiply peak (the best of a few large products, measured in the same run).  ``--profile``
prints where the time of one configuration goes (torch.profiler, by operator).

    python benchmarks/train_throughput.py                         # the whole grid
    python benchmarks/train_throughput.py --targets               # issue 8's ratios: tiny and 16M at C=50
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Sequence

import torch

from lram.models import LRAMPolicy, TrajectoryBatch
from lram.models.presets import SIZE_PRESETS
from lram.utils.io import write_json_atomic

BACKBONES = ("transformer", "xlstm[1:0]", "xlstm[7:1]", "mamba")
DEFAULT_BATCH = {"tiny": 32, "small": 16, "16M": 8, "48M": 4, "110M": 2, "206M": 2}
# issue 8's targets: (size, context, kind) -> minimum timesteps/s ratio to the Transformer per backbone
TARGETS = {("tiny", 50, "vector"): {"xlstm[1:0]": 0.8, "mamba": 0.8, "xlstm[7:1]": 0.5},
           ("16M", 50, "vector"): {"xlstm[1:0]": 0.8, "mamba": 0.8, "xlstm[7:1]": 0.5}}


def make_batch(kind: str, batch: int, context: int, generator: torch.Generator) -> TrajectoryBatch:
    """A batch of full windows: vector states with 6-d continuous actions, or images with 18 actions."""
    g = generator
    if kind == "image":
        states = torch.randint(0, 256, (batch, context, 3, 64, 64), dtype=torch.uint8, generator=g)
        actions = torch.randint(0, 18, (batch, context), generator=g)
        extra = {"discrete": True, "num_actions": 18}
    else:
        states = torch.randn(batch, context, 204, generator=g)
        actions = torch.rand(batch, context, 6, generator=g) * 2 - 1
        extra = {"discrete": False, "action_dims": 6}
    return TrajectoryBatch(states=states, actions=actions, returns_to_go=torch.rand(batch, context, generator=g) * 100,
                           rewards=torch.rand(batch, context, generator=g),
                           timestep_mask=torch.ones(batch, context, dtype=torch.bool), reward_scale=100.0, **extra)


def build(size: str, backbone: str, kind: str, train_kernel: str = "auto") -> LRAMPolicy:
    options = {} if backbone == "transformer" else {"train_kernel": train_kernel}
    return LRAMPolicy.from_preset(size, backbone, use_images=kind == "image", backbone_options=options)


class OptimizerStep:
    """One training step of the trainer's recipe on a fixed batch (loss, backward, clip, AdamW)."""

    def __init__(self, model: LRAMPolicy, batch: TrajectoryBatch):
        from lram.training.trainer import make_optimizer, param_groups

        self.model, self.batch = model, batch
        self.optimizer = make_optimizer(param_groups(model, 0.01), 1e-4, torch.device("cpu"))

    def __call__(self) -> float:
        loss, _ = self.model.loss(self.batch, metrics=False)  # as the trainer's step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.25)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def _flop_formulas() -> dict:
    """Formulas torch's flop counter lacks or gets wrong for these models: CPU flash attention (not counted)
    and the backward of grouped convolutions (counted as if ungrouped: x channels too many for the depthwise
    convs of the recurrent blocks); the backward of a conv is its input- and weight-gradient, 2x the forward."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def conv_backward(grad_out_shape, x_shape, w_shape, *args, **kwargs):
        return 2 * fc.conv_flop_count(x_shape, w_shape, grad_out_shape)

    def flash(query, key, value, *args, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    def flash_backward(grad_out, query, key, value, *args, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)

    return {aten.convolution_backward: conv_backward, aten._scaled_dot_product_flash_attention_for_cpu: flash,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: flash_backward}


def count_flops(size: str, backbone: str, kind: str, batch: TrajectoryBatch) -> int:
    """Floating-point operations of one forward + backward, counted on the PyTorch path of the model (matrix
    products, convolutions, attention; the recurrent cells' parallel form counts its full [T, T] products,
    as attention does)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build(size, backbone, kind, train_kernel="torch")
    with FlopCounterMode(display=False, custom_mapping=_flop_formulas()) as counter:
        loss, _ = model.loss(batch)
        loss.backward()
    return int(counter.get_total_flops())


def matmul_peak(repeats: int = 5) -> float:
    """This machine's fp32 matrix-multiply rate in GFLOP/s: the best of a few large products."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (4096, 512, 2048), (2048, 1024, 4096)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def measure(size: str, context: int, kind: str, backbones: Sequence[str], batch_size: int, rounds: int, warmup: int,
            peak: float, progress: bool = True) -> dict:
    """Timesteps/s, GFLOP/s and MFU of every backbone on one (size, context, kind), in interleaved rounds."""
    g = torch.Generator().manual_seed(0)
    batch = make_batch(kind, batch_size, context, g)
    steps = {}
    for b in backbones:
        torch.manual_seed(0)
        steps[b] = OptimizerStep(build(size, b, kind), batch)
        for _ in range(warmup):
            steps[b]()
    times: dict[str, list[float]] = {b: [] for b in backbones}
    for _ in range(rounds):
        for b in backbones:
            t = time.perf_counter()
            steps[b]()
            times[b].append(time.perf_counter() - t)
    out = {}
    timesteps = batch_size * context
    for b in backbones:
        flops = count_flops(size, b, kind, batch)
        sec = statistics.median(times[b])
        row = {"step_s": sec, "timesteps_per_s": timesteps / sec, "gflops": flops / sec / 1e9,
               "mfu": flops / sec / 1e9 / peak if peak else None, "flops_per_step": flops,
               "params": steps[b].model.num_parameters()}
        if "transformer" in times and b != "transformer":
            row["ratio_to_transformer"] = statistics.median(
                tr / tb for tr, tb in zip(times["transformer"], times[b]))
        out[b] = row
        if progress:
            ratio = f"  x{row['ratio_to_transformer']:.2f} of the Transformer" if "ratio_to_transformer" in row else ""
            print(f"  {size:>5} C={context:<4} {kind:<6} {b:<12} {row['timesteps_per_s']:9.0f} timesteps/s "
                  f"{row['gflops']:7.1f} GFLOP/s  MFU {row['mfu']:.2f}{ratio}", flush=True)
    return out


def profile(size: str, context: int, kind: str, backbone: str, batch_size: int, rows: int = 30) -> str:
    """Where one optimizer step's time goes, by operator (torch.profiler, 3 steps after 2 warm-up steps)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    step = OptimizerStep(build(size, backbone, kind), make_batch(kind, batch_size, context, g))
    for _ in range(2):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def format_table(results: dict) -> str:
    lines = ["| size | context | input | backbone | timesteps/s | GFLOP/s | MFU | vs Transformer |",
             "|---|---|---|---|---|---|---|---|"]
    for key, rows in results["configs"].items():
        size, context, kind = key.split("|")
        for b, r in rows.items():
            ratio = f"{r['ratio_to_transformer']:.2f}x" if "ratio_to_transformer" in r else ""
            lines.append(f"| {size} | {context} | {kind} | {b} | {r['timesteps_per_s']:.0f} | {r['gflops']:.1f} | "
                         f"{r['mfu']:.2f} | {ratio} |")
    return "\n".join(lines)


def format_summary(results: dict) -> str:
    """One markdown row per configuration: the Transformer's timesteps/s and MFU, then each other backbone's
    timesteps/s, ratio to the Transformer and MFU (the table of benchmarks/RESULTS.md)."""
    backbones = list(dict.fromkeys(b for rows in results["configs"].values() for b in rows))
    head = "| size | C | input | " + " | ".join(backbones) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(backbones)]
    for key, rows in results["configs"].items():
        size, context, kind = key.split("|")
        cells = []
        for b in backbones:
            r = rows.get(b)
            if r is None:
                cells.append("")
                continue
            ratio = f" **{r['ratio_to_transformer']:.2f}x**" if "ratio_to_transformer" in r else ""
            cells.append(f"{r['timesteps_per_s']:.0f}{ratio} (MFU {r['mfu']:.2f})")
        lines.append(f"| {size} | {context} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(results: dict) -> list[str]:
    """Lines stating each of issue 8's targets, the measured ratio and whether it holds."""
    lines = []
    for (size, context, kind), wants in TARGETS.items():
        rows = results["configs"].get(f"{size}|{context}|{kind}")
        if rows is None:
            continue
        for b, want in wants.items():
            if b in rows and "ratio_to_transformer" in rows[b]:
                got = rows[b]["ratio_to_transformer"]
                lines.append(f"{size} C={context} {kind}: {b} {got:.2f}x the Transformer (target >= {want}x): "
                             f"{'met' if got >= want else 'NOT met'}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="train_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,small,16M")
    p.add_argument("--contexts", default="20,50,200", help="window lengths in timesteps")
    p.add_argument("--kinds", default="vector,image", help="vector and/or image inputs")
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--batch-size", type=int, default=None, help=f"windows per step (default per size: {DEFAULT_BATCH})")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--targets", action="store_true", help="only the configurations of issue 8's targets")
    p.add_argument("--profile", default="", help="print an operator profile of this backbone per configuration")
    p.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default mmap threshold (see lram.utils.memory)")
    p.add_argument("--out", default="benchmarks/out/train_throughput.json")
    p.add_argument("--summary", action="store_true", help="print one row per configuration (as in RESULTS.md)")
    p.add_argument("--table-from", default="", help="only print the tables of an earlier --out JSON file")
    a = p.parse_args(argv)
    if a.table_from:
        import json

        results = json.loads(open(a.table_from).read())
        print(format_summary(results) if a.summary else format_table(results))
        for line in check_targets(results):
            print(line)
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    backbones = [b for b in a.backbones.split(",") if b]
    for b in backbones:
        if b not in BACKBONES:
            p.error(f"--backbones: unknown backbone {b!r}; choose from {','.join(BACKBONES)}")
    if a.targets:
        configs = list(TARGETS)
    else:
        sizes = [s for s in a.sizes.split(",") if s]
        for s in sizes:
            if s not in SIZE_PRESETS:
                p.error(f"--sizes: unknown size {s!r}; choose from {','.join(SIZE_PRESETS)}")
        try:
            contexts = [int(c) for c in a.contexts.split(",") if c]
        except ValueError:
            p.error(f"--contexts: expected comma-separated integers, got {a.contexts!r}")
        kinds = [k for k in a.kinds.split(",") if k]
        for k in kinds:
            if k not in ("vector", "image"):
                p.error(f"--kinds: expected vector and/or image, got {k!r}")
        configs = [(s, c, k) for s in sizes for c in contexts for k in kinds]
    from lram.models.kernels import load_cpu_kernels
    from lram.utils.memory import keep_freed_memory

    load_cpu_kernels()
    if not a.no_malloc_tuning:
        keep_freed_memory()  # as lram train does
    peak = matmul_peak()
    print(f"fp32 matmul peak of this machine: {peak:.0f} GFLOP/s ({torch.get_num_threads()} threads)", flush=True)
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__},
               "matmul_peak_gflops": peak, "configs": {}}
    for size, context, kind in configs:
        bs = a.batch_size or DEFAULT_BATCH[size]
        results["configs"][f"{size}|{context}|{kind}"] = measure(size, context, kind, backbones, bs, a.rounds, a.warmup, peak)
        if a.profile:
            print(profile(size, context, kind, a.profile, bs))
        write_json_atomic(a.out, results)
    print(format_summary(results) if a.summary else format_table(results))
    for line in check_targets(results):
        print(line)
    print(f"wrote {a.out}")
    return 0
