"""``latency``: the paper's speed figures from lram's own benchmark (:mod:`lram.bench.latency`, ``lram bench``).

Paper section 4.2 / spec 6: per backbone at equal size, the latency of one environment step at batch size 1
against the length of the history (up to 25,600 timesteps), and the throughput (environment steps per
second over all environments of a call) against the batch size.  There is nothing to train: a step's cost
does not depend on the weights' values, so each arm is a backbone with randomly initialised weights of the
scale's size preset, and its "evaluation" is the timing.  results.json holds every measured number (the
bench's figures per backbone: floors, median and quartiles per context, throughput per batch and context).
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from lram.experiments.core import Arm, Experiment, Launch, Scale, Stage

BACKBONES = ("xlstm[1:0]", "xlstm[7:1]", "mamba", "transformer")
RECURRENT = ("xlstm[1:0]", "xlstm[7:1]", "mamba")
FLAT = 1.5  # a recurrent step is "flat" when its latency at the longest history is within 1.5x the shortest's
GROWING = 2.0  # the Transformer's "grows" when it is at least 2x


class Latency(Experiment):
    name = "latency"
    claim = ("the recurrent backbones' step latency is flat in the context length while the Transformer's (KV cache) "
             "grows with it, so xLSTM is faster than the Transformer at long contexts and sustains a higher "
             "throughput (paper Fig. 4-5: 206M, Atari Freeway, A100, contexts up to 25,600 timesteps)")
    notes = ("Measured on this machine's CPU (`lram bench` has no GPU mode yet), fp32, a vector-observation environment "
             "emulated without simulator time; the history is a real prefill for xLSTM and Mamba and a KV cache of "
             "random keys/values for the Transformer (its cost depends only on the length). Randomly initialised "
             "weights at the scale's size preset (cpu: 16M, the paper: 206M). The 2 shared cores make single "
             "figures noisy: compare within one run. Transformer caches over half the RAM are reported as OOM.")
    scored = False
    scales = {
        # seconds: every backbone through the whole measurement at toy sizes, one thread (robust to a busy
        # machine); the numbers mean nothing
        "smoke": Scale(size="tiny", seeds=(0,), data={"contexts": (4, 32), "repeats": 3, "warmup": 1, "threads": 1,
                                                      "batch_sizes": (1, 2), "throughput_contexts": (4,)}),
        # estimate (not run here): `lram bench` at 16M took ~9 min for 5 backbones (the prefills of 76,800 tokens
        # dominate); 4 backbones, 30 repeats ~6 min, + throughput at 4 batch sizes x 2 contexts ~5 min: ~12 min
        "cpu": Scale(size="16M", seeds=(0,), data={"contexts": (50, 400, 1600, 6400, 25600), "repeats": 30, "warmup": 5,
                                                   "batch_sizes": (1, 4, 16, 64), "throughput_contexts": (50, 1600)}),
        # the paper's sizes and lengths (206M; B = 1, 16 and larger); the launch script only measures (no training)
        "paper": Scale(size="206M", seeds=(0,), launch=Launch(),
                       data={"contexts": (50, 400, 1600, 6400, 25600), "repeats": 50, "warmup": 10,
                             "batch_sizes": (1, 16, 64, 128), "throughput_contexts": (50, 1600, 6400)}),
    }

    def make_data(self, root: Path, scale: Scale, progress: bool) -> list[str]:
        return []

    def arms(self, scale: Scale) -> list[Arm]:
        return [Arm(b, s) for b in BACKBONES for s in scale.seeds]

    def stages(self, arm: Arm, overrides: list[str], run: Path, scale: Scale) -> list[Stage]:
        return []  # nothing to train (random weights time the same)

    def evaluate(self, arm: Arm, run: Path, scale: Scale, progress: bool) -> dict:
        """The bench's figures for this backbone (randomly initialised at the scale's size)."""
        import torch

        from lram.bench.latency import measure_backbone

        d = scale.data
        before = torch.get_num_threads()
        torch.set_num_threads(d.get("threads") or before)
        try:
            entry = measure_backbone(scale.size, arm.group, d["contexts"], d["repeats"], d["warmup"],
                                     torch.Generator().manual_seed(arm.seed), batch_sizes=d["batch_sizes"],
                                     throughput_contexts=d["throughput_contexts"])
            threads = torch.get_num_threads()
        finally:
            torch.set_num_threads(before)
        return {"backbone": arm.group, "size": scale.size, "seed": arm.seed, "threads": threads,
                "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(), **entry}

    def summarise(self, results: dict, reports: dict[str, dict], scale: Scale) -> None:
        """Per backbone: latency per context (medians over seeds of the median ms, with quartiles) and
        throughput per batch size and context (None: skipped, over the memory budget); the raw figures too."""
        d = scale.data
        latency, throughput = {}, {}
        for group, g in results["groups"].items():
            reps = [reports[Arm(group, s).name] for s in g["seeds"]]
            latency[group] = {str(c): {k: float(np.median([r["per_context"][str(c)][k] for r in reps]))
                                       for k in ("median_ms", "p25_ms", "p75_ms")} for c in d["contexts"]}
            throughput[group] = {}
            for b in d["batch_sizes"]:
                row = {}
                for c in d["throughput_contexts"]:
                    cells = [r["throughput"][str(b)][str(c)] for r in reps]
                    row[str(c)] = None if any("steps_per_s" not in x for x in cells) else \
                        float(np.median([x["steps_per_s"] for x in cells]))
                throughput[group][str(b)] = row
        results.update(contexts=list(d["contexts"]), batch_sizes=list(d["batch_sizes"]),
                       throughput_contexts=list(d["throughput_contexts"]), latency_ms=latency,
                       throughput_steps_per_s=throughput, measurements=reports)

    def extra_table(self, results: dict) -> str:
        if "latency_ms" not in results:
            return ""
        cs, bs = results["contexts"], results["batch_sizes"]
        first = next(iter(results["measurements"].values()))
        lines = [f"Latency per environment step at batch 1, ms (median [p25, p75]), {first['size']} preset, "
                 f"{first['threads']} threads:", "", "| backbone | " + " | ".join(f"C={c}" for c in cs) + " |",
                 "|---" * (len(cs) + 1) + "|"]
        for b, row in results["latency_ms"].items():
            lines.append(f"| {b} | " + " | ".join(f"{row[str(c)]['median_ms']:.2f} [{row[str(c)]['p25_ms']:.2f}, "
                                                  f"{row[str(c)]['p75_ms']:.2f}]" for c in cs) + " |")
        lines += ["", "Throughput, environment steps per second over all environments of a call (OOM: cache over "
                  "the memory budget):", "", "| backbone | context | " + " | ".join(f"B={b}" for b in bs) + " |",
                  "|---" * (len(bs) + 2) + "|"]
        for b, rows in results["throughput_steps_per_s"].items():
            for c in results["throughput_contexts"]:
                cells = [rows[str(n)][str(c)] for n in bs]
                lines.append(f"| {b} | {c} | " + " | ".join("OOM" if v is None else f"{v:.0f}" for v in cells) + " |")
        return "\n".join(lines)

    def plot_extra(self, results: dict, root: Path) -> list[Path]:
        """latency-speed.png: latency against the context at batch 1 (left; quartile bands) and throughput
        against the batch size at each measured context (right)."""
        from lram.evaluation.plots import _colors, _figure, _save

        if "latency_ms" not in results:
            return []
        names = list(results["latency_ms"])
        colors = _colors(names)
        fig = _figure(13.0, 4.8)
        left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        cs = results["contexts"]
        for n in names:
            row = results["latency_ms"][n]
            left.plot(cs, [row[str(c)]["median_ms"] for c in cs], "o-", color=colors[n], label=n)
            left.fill_between(cs, [row[str(c)]["p25_ms"] for c in cs], [row[str(c)]["p75_ms"] for c in cs],
                              color=colors[n], alpha=0.2)
        left.set_xscale("log")
        left.set_yscale("log")
        left.set_xlabel("history (timesteps)")
        left.set_ylabel("ms per environment step (batch 1)")
        left.set_title(f"latency ({results['scale']} scale)")
        left.legend(fontsize=8)
        styles = ["-", "--", ":", "-."]
        bs = results["batch_sizes"]
        for n in names:
            for i, c in enumerate(results["throughput_contexts"]):
                pts = [(b, results["throughput_steps_per_s"][n][str(b)][str(c)]) for b in bs]
                pts = [(b, v) for b, v in pts if v is not None]
                if pts:
                    right.plot(*zip(*pts), marker="o", linestyle=styles[i % len(styles)], color=colors[n],
                               label=f"{n}, C={c}")
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        right.set_xlabel("batch size (environments per call)")
        right.set_ylabel("environment steps per second")
        right.set_title("throughput")
        right.legend(fontsize=7)
        return [_save(fig, root / f"{self.name}-speed.png", {"experiment": self.name, "scale": results["scale"]})]

    def verdict(self, results: dict) -> str:
        """Checks, from results.json: every recurrent backbone flat (longest / shortest history <= 1.5x), the
        Transformer growing (>= 2x), xLSTM [1:0] faster than the Transformer at the longest history, and its
        throughput higher at the largest batch and longest throughput context (or the Transformer OOM).  All
        hold: agrees; none: disagrees; else partly."""
        lat = results.get("latency_ms", {})
        if "xlstm[1:0]" not in lat or "transformer" not in lat:
            return "not measured"
        lo, hi = str(results["contexts"][0]), str(results["contexts"][-1])
        ratio = {b: lat[b][hi]["median_ms"] / lat[b][lo]["median_ms"] for b in lat}
        x, t = lat["xlstm[1:0]"][hi]["median_ms"], lat["transformer"][hi]["median_ms"]
        tp = results["throughput_steps_per_s"]
        big, far = str(results["batch_sizes"][-1]), str(results["throughput_contexts"][-1])
        xt, tt = tp["xlstm[1:0]"][big][far], tp["transformer"][big][far]
        checks = {
            "recurrent flat": all(ratio[b] <= FLAT for b in RECURRENT if b in ratio),
            "Transformer growing": ratio["transformer"] >= GROWING,
            "xLSTM faster at the longest history": x < t,
            "xLSTM higher throughput": xt is not None and (tt is None or xt > tt),
        }
        flat = ", ".join(f"{b} {ratio[b]:.2f}x" for b in lat)
        fig = (f"latency C={hi} vs C={lo}: {flat}; C={hi}: xLSTM [1:0] {x:.2f} ms vs Transformer {t:.2f} ms; "
               f"B={big}, C={far}: xLSTM {'OOM' if xt is None else f'{xt:.0f}'} vs Transformer "
               f"{'OOM' if tt is None else f'{tt:.0f}'} steps/s")
        held = [k for k, ok in checks.items() if ok]
        failed = [k for k, ok in checks.items() if not ok]
        prefix = "not a result (smoke scale: toy sizes and histories, 3 repeats); " if results["scale"] == "smoke" else ""
        if not failed:
            return f"{prefix}agrees: {fig}"
        if not held:
            return f"{prefix}disagrees: {fig}"
        return f"{prefix}partly (holds: {', '.join(held)}; fails: {', '.join(failed)}): {fig}"
