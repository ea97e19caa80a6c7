"""Inference latency per environment step at batch size 1, against the memory-bound floor.

For every backbone at a size preset, the policy's :class:`RecurrentAgent` acts in one environment with a
vector observation (204-d, the unified DMControl layout): one call = embedding of (r_{t-1}, s_t, R_t),
one backbone ``step`` over those 3 tokens, the action head and greedy decoding.  The history before the
timed steps is C timesteps for each C in ``contexts``:

* xLSTM / Mamba: a real prefill (the parallel forward over 3C random tokens returns the state);
* Transformer: the KV cache is filled with random keys/values of 3C tokens (a real prefill of 76,800 tokens
  would take minutes; the cost of a step does not depend on the cached values, only on their number).

The floor is measured in the same run: one pass over the weights that a step reads (every Linear/conv
weight matrix multiplied by a [3, in] activation through BLAS), i.e. what a memory-bound step cannot beat
with BLAS; and the kernel floor, the same pass with lram's own streaming kernel.  See :func:`floor_benchmark`.  If the
``xlstm`` package is installed, its ``xLSTMBlockStack.step`` on the same configuration (three calls of
one token per environment step) is timed too.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from lram.models import LRAMConfig, LRAMPolicy
from lram.models.layers import KERNEL_MIN_WEIGHT
from lram.models.presets import SIZE_PRESETS
from lram.models.state import RecurrentState
from lram.utils.checks import validation
from lram.utils.io import write_json_atomic

DEFAULT_CONTEXTS = (50, 400, 1600, 6400, 25600)
DEFAULT_BACKBONES = ("xlstm[1:0]", "xlstm[7:1]", "mamba", "transformer")


def time_call(fn: Callable[[], object], repeats: int, warmup: int) -> dict:
    """Median and quartiles of the wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) >= 4 else [min(times), statistics.median(times), max(times)]
    return {"median_ms": statistics.median(times), "p25_ms": q[0], "p75_ms": q[2], "repeats": repeats}


def step_weight_shapes(model: LRAMPolicy) -> list[tuple[int, ...]]:
    """Shapes of the weight matrices a vector-observation step reads (image encoder and lookup tables excluded)."""
    skip = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    if model.image_encoder is not None:
        skip |= {id(p) for p in model.image_encoder.parameters()}
    return [tuple(p.shape) for p in model.parameters() if p.dim() >= 2 and id(p) not in skip]


def floor_benchmark(shapes: Sequence[tuple[int, ...]], tokens: int, repeats: int, warmup: int) -> dict:
    """One pass over weights of the given shapes, the memory-bound floor of a step, measured three ways:

    * ``median_ms`` (the floor): each matrix times the step's activations through BLAS, the faster of a
      matrix-vector product per matrix and ``W @ x^T`` with ``tokens`` columns -- what the issue's targets
      are stated against;
    * ``kernel_ms`` (the kernel floor, when lram's compiled CPU kernels load): the same products with
      lram's streaming few-rows kernel, i.e. exactly the weight traffic of lram's own step, so that the
      step's ratio to it is the cost of everything else (matrix memory, small ops);
    * ``sum_ms``: a plain sum over every matrix, for information (repeated passes keep part of the
      weights in the 32 MB L3 cache, so it is not a clean DRAM figure)."""
    mats = [torch.randn(s[0], int(torch.tensor(s[1:]).prod())) for s in shapes]
    vecs = [torch.randn(m.shape[1]) for m in mats]
    cols = [torch.randn(tokens, m.shape[1]).t() for m in mats]

    def gemv_pass():
        for m, v in zip(mats, vecs):
            torch.mv(m, v)

    def columns_pass():
        for m, c in zip(mats, cols):
            m @ c

    def sum_pass():
        for m in mats:
            m.sum()

    def kernel_pass():  # as lram.models.layers.Linear dispatches: the kernel for large weights, BLAS for small
        for m, c in zip(mats, cols):
            torch.ops.lram.linear_rows(c.t(), m, None) if m.numel() >= KERNEL_MIN_WEIGHT else m @ c

    gemv = time_call(gemv_pass, repeats, warmup)
    columns = time_call(columns_pass, repeats, warmup)
    out = dict(min(gemv, columns, key=lambda t: t["median_ms"]))
    out.update(weights=int(sum(m.numel() for m in mats)), gemv_ms=gemv["median_ms"], columns_ms=columns["median_ms"],
               sum_ms=time_call(sum_pass, repeats, warmup)["median_ms"])
    from lram.models.kernels import load_cpu_kernels

    if load_cpu_kernels():
        out["kernel_ms"] = time_call(kernel_pass, repeats, warmup)["median_ms"]
    return out


def _fill_state(model: LRAMPolicy, agent, history_steps: int, spare_steps: int, generator: torch.Generator) -> str:
    """Give the agent a history of ``history_steps`` timesteps (room for ``spare_steps`` more); returns how."""
    bb = model.backbone
    tokens = history_steps * model.config.tokens_per_step
    if model.config.backbone == "transformer":
        st = agent.state
        window = bb.config.kv_window
        capacity = (window + bb.config.kv_margin) if window else tokens + model.config.tokens_per_step * spare_steps
        for name in list(st.tensors):
            if name.startswith(("k.", "v.")):
                B, H, _, dh = st.tensors[name].shape
                st.tensors[name] = torch.randn(B, H, capacity, dh, generator=generator)
        st.tensors["length"] = torch.full_like(st.tensors["length"], tokens)
        return "synthetic KV cache"
    x = torch.randn(1, tokens, model.config.d_model, generator=generator)
    with torch.inference_mode():
        _, state = bb(x)
    B = agent.num_envs  # one real prefill, copied to every row (the cost of a step does not depend on values)
    agent.state = state if B == 1 else RecurrentState(
        {k: v.expand(B, *v.shape[1:]).contiguous() for k, v in state.tensors.items()}, state.signature)
    return "prefill" if B == 1 else "prefill of one row, copied to every row"


def _transformer_cache_bytes(model: LRAMPolicy, batch: int, history_steps: int, spare_steps: int) -> int:
    cfg = model.config
    return 2 * cfg.num_blocks * batch * (history_steps + spare_steps) * cfg.tokens_per_step * cfg.d_model * 4


def throughput_benchmark(model: LRAMPolicy, batch_sizes: Sequence[int], contexts: Sequence[int], repeats: int,
                         warmup: int, generator: torch.Generator, memory_budget: int) -> dict:
    """Environment steps per second with ``B`` environments per call (the paper's throughput), for every
    batch size and context length; Transformer caches beyond ``memory_budget`` bytes are skipped (OOM)."""
    out: dict = {}
    for B in batch_sizes:
        agent = model.make_agent(B, discrete=False, action_dims=6, reward_scale=100.0)
        obs = torch.randn(B, model.config.state_dim, generator=generator)
        zero, rtg = torch.zeros(B), torch.ones(B)
        row: dict = {}
        for C in contexts:
            spare = warmup + repeats + 1
            if model.config.backbone == "transformer" and not model.backbone.config.kv_window \
                    and _transformer_cache_bytes(model, B, C, spare) > memory_budget:
                row[str(C)] = {"skipped": f"KV cache over the memory budget ({memory_budget / 2**30:.1f} GiB)"}
                continue
            how = _fill_state(model, agent, C, spare, generator)
            with torch.inference_mode():
                t = time_call(functools.partial(agent.act, obs, zero, rtg), repeats, warmup)
            t.update(history=how, steps_per_s=B / (t["median_ms"] / 1e3))
            row[str(C)] = t
        out[str(B)] = row
    return out


def library_step_benchmark(d_model: int, num_blocks: int, repeats: int, warmup: int) -> dict | None:
    """The official xlstm package's recurrent step (3 one-token calls per environment step)."""
    try:
        import xlstm
    except ImportError:
        return None
    cfg = xlstm.xLSTMBlockStackConfig(
        mlstm_block=xlstm.mLSTMBlockConfig(
            mlstm=xlstm.mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=4)
        ),
        context_length=150, num_blocks=num_blocks, embedding_dim=d_model,
    )
    stack = xlstm.xLSTMBlockStack(cfg).eval()
    x = torch.randn(1, 1, d_model)
    state = {"s": None}

    def env_step():
        for _ in range(3):
            _, state["s"] = stack.step(x, state["s"])

    with torch.inference_mode():
        env_step()
        return time_call(env_step, repeats, warmup)


def measure_backbone(size: str, variant: str, contexts: Sequence[int], repeats: int, warmup: int,
                     generator: torch.Generator, compile_step: bool = False, batch_sizes: Sequence[int] = (),
                     throughput_contexts: Sequence[int] | None = None, bar=None) -> dict:
    """One backbone at a size preset, randomly initialised: its floor, the batch-1 latency per context and (with
    ``batch_sizes``) the throughput per batch size at ``throughput_contexts`` (default: ``contexts``)."""
    overrides = {}
    if variant == "transformer":  # learned positions must cover the longest history
        longest = max([*contexts, *(throughput_contexts or ())])
        overrides["backbone_options"] = {"max_positions": (longest + warmup + repeats + 2) * 3}
    torch.manual_seed(0)
    model = LRAMPolicy(LRAMConfig.from_preset(size, variant, use_images=False, **overrides)).eval()
    floor = floor_benchmark(step_weight_shapes(model), 3, repeats, warmup)
    if bar is not None:
        bar.update(1)
    entry = {"params_total": model.num_parameters(), "step_weights": floor["weights"], "floor": floor,
             "compiled": compile_step, "per_context": {}}
    obs = torch.randn(1, model.config.state_dim, generator=generator)
    zero, rtg = torch.zeros(1), torch.ones(1)
    # one agent per model: a compiled step is compiled once and serves every context length
    agent = model.make_agent(1, discrete=False, action_dims=6, reward_scale=100.0, compile=compile_step)
    # the agent prepares the model for inference (lram's fused CPU kernels where they apply): record which
    entry["implementation"] = getattr(agent, "implementation", None)
    for C in contexts:
        how = _fill_state(model, agent, C, warmup + repeats + 1, generator)
        env_step = functools.partial(agent.act, obs, zero, rtg)
        with torch.inference_mode(), validation("full"):
            timing = time_call(env_step, repeats, warmup + (3 if compile_step else 0))
        timing["history"] = how
        timing["ratio_to_floor"] = timing["median_ms"] / floor["median_ms"]
        if "kernel_ms" in floor:
            timing["ratio_to_kernel_floor"] = timing["median_ms"] / floor["kernel_ms"]
        entry["per_context"][str(C)] = timing
        if bar is not None:
            bar.update(1)
    if batch_sizes and not compile_step:
        entry["throughput"] = throughput_benchmark(model, batch_sizes, contexts if throughput_contexts is None
                                                   else throughput_contexts, repeats, warmup, generator,
                                                   memory_budget=_memory_bytes() // 2)
    return entry


def run(
    size: str = "16M",
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    contexts: Sequence[int] = DEFAULT_CONTEXTS,
    repeats: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    compiled: Sequence[str] = (),
    batch_sizes: Sequence[int] = (),
) -> dict:
    """Run the latency benchmark; returns (and optionally writes as JSON) all figures."""
    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    preset = SIZE_PRESETS[size]
    results: dict = {
        "size": size, "contexts": list(contexts), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
        "backbones": {},
    }
    from tqdm import tqdm

    runs = [(v, False) for v in backbones] + [(v, True) for v in compiled]
    bar = tqdm(total=len(runs) * (len(contexts) + 1), desc="latency", disable=not progress)
    for variant, compile_step in runs:
        entry = measure_backbone(size, variant, contexts, repeats, warmup, gen, compile_step, batch_sizes, bar=bar)
        results["backbones"][variant + (" compiled" if compile_step else "")] = entry
    bar.close()
    lib = library_step_benchmark(preset.d_model, preset.recurrent_blocks, repeats, warmup)
    if lib is not None:
        results["xlstm_library_step"] = lib
    if out is not None:
        write_json_atomic(out, results)
    return results


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def format_throughput(results: dict) -> str:
    """Environment steps per second (all environments of a call) per batch size and context."""
    contexts = results["contexts"]
    head = f"{'backbone':<22}{'batch':>6} " + "".join(f"{'C=' + str(c):>12}" for c in contexts)
    lines = ["throughput (environment steps per second, all environments of a call)", head, "-" * len(head)]
    for name, e in results["backbones"].items():
        for B, row in e.get("throughput", {}).items():
            cells = "".join(f"{row[str(c)]['steps_per_s']:>12.0f}" if "steps_per_s" in row[str(c)] else f"{'OOM':>12}"
                            for c in contexts)
            lines.append(f"{name:<22}{B:>6} {cells}")
    return "\n".join(lines)


def format_table(results: dict) -> str:
    """A plain-text table of the results (ms per environment step, and ratio to the floor)."""
    contexts = results["contexts"]
    head = f"{'backbone':<22}{'floor ms':>9}{'kernel ms':>10} " + "".join(f"{'C=' + str(c):>19}" for c in contexts)
    lines = [f"latency per environment step (ms), batch 1, {results['size']} preset, {results['threads']} threads; "
             "(x floor / x kernel floor)", head, "-" * len(head)]
    for name, e in results["backbones"].items():
        cells = "".join(
            f"{r['median_ms']:>7.2f}({r['ratio_to_floor']:>3.2f}x/{r.get('ratio_to_kernel_floor', float('nan')):>3.2f}x)"
            for r in (e["per_context"][str(c)] for c in contexts)
        )
        lines.append(f"{name:<22}{e['floor']['median_ms']:>9.2f}{e['floor'].get('kernel_ms', float('nan')):>10.2f} {cells}")
    lib = results.get("xlstm_library_step")
    if lib:
        lines.append(f"official xlstm library step() (same {results['size']}-size stack, 3 tokens): {lib['median_ms']:.2f} ms")
        for name, e in results["backbones"].items():
            if name.startswith("xlstm[1:0]"):
                worst = max(v["median_ms"] for v in e["per_context"].values())
                lines.append(f"speed-up of lram {name} over the library step (worst context): "
                             f"{lib['median_ms'] / worst:.1f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="lram bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="16M", choices=list(SIZE_PRESETS))
    p.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES),
                   help="comma-separated: " + ",".join(DEFAULT_BACKBONES))
    p.add_argument("--contexts", default=",".join(map(str, DEFAULT_CONTEXTS)), help="history lengths in timesteps")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", default="", help="backbones to time also with a torch.compile'd step, e.g. xlstm[1:0]")
    p.add_argument("--batch-sizes", default="", help="also measure throughput with this many environments per call, "
                   "e.g. 16,64 (the Transformer's KV cache is skipped beyond half the RAM)")
    p.add_argument("--out", default="benchmarks/out/latency.json")
    args = p.parse_args(argv)
    try:
        contexts = [int(c) for c in args.contexts.split(",") if c]
    except ValueError:
        p.error(f"--contexts: expected comma-separated integers, got {args.contexts!r}")
    backbones = [b for b in args.backbones.split(",") if b]
    for b in backbones + [c for c in args.compile.split(",") if c]:
        if b not in DEFAULT_BACKBONES and b != "xlstm":
            p.error(f"--backbones: unknown backbone {b!r}; choose from {','.join(DEFAULT_BACKBONES)}")
    compiled = [b for b in args.compile.split(",") if b]
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        p.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
    results = run(args.size, backbones, contexts, args.repeats, args.warmup, args.threads, args.out,
                  compiled=compiled, batch_sizes=batch_sizes)
    print(format_table(results))
    if batch_sizes:
        print(format_throughput(results))
    print(f"wrote {args.out}")
    return 0
