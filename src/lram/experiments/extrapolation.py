"""``extrapolation``: acting on histories far longer than the training context (Dark-Room in context).

The paper: recurrent inference lets xLSTM carry an unbounded history (``use_inference_cache``) and
extrapolate to sequences longer than in training, where a Transformer's context is bounded.  Here each
backbone trains once on 30-step windows (90 tokens) of the Dark-Room histories of ``icl-darkroom``
(:mod:`lram.experiments.icl`) and then plays 40 consecutive episodes of every held-out goal on one state
(4,000 steps, 12,000 tokens in the 10x10 room).  The Transformer is scored three ways from the same
weights: its whole history in the KV cache, a sliding-window KV cache of the training window's 90 tokens
(positions still count from the first step), and the paper's protocol of re-processing the last 30 steps
at every step (positions within the training window).  The score per history length (episode index bins)
says which of them keep what they found.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lram.experiments.core import Arm, Scale, Stage
from lram.experiments.icl import (
    PAPER_ROOM,
    REPS,
    ROOM_6,
    ROOM_10,
    InContextExperiment,
    _ci,
    bootstrap_ci,
    episode_matrix,
    group_reports,
    held_out_tasks,
    history_tokens,
    in_context_report,
    paper_launch,
    plot_curves,
    room_of,
    split_group,
    transformer_overrides,
)

RECURRENT = ("xlstm[1:0]", "xlstm[7:1]", "mamba")
KV = "transformer-kv"  # + the window in tokens: sliding-window KV cache
REPROCESS = "transformer-reprocess"  # + the window in steps: the last steps re-processed every step
BINS = ((1, 1), (2, 5), (6, 10), (11, 25), (26, 50), (51, 100))  # episode indices (1-based, inclusive)


def history_bins(episodes: int) -> list[tuple[int, int]]:
    """The bins of :data:`BINS` that fit ``episodes`` (the last one cut at ``episodes``)."""
    return [(a, min(b, episodes)) for a, b in BINS if a <= episodes]


class Extrapolation(InContextExperiment):
    name = "extrapolation"
    claim = ("recurrent backbones (xLSTM) extrapolate to histories far longer than their training context, where "
             "the Transformer degrades (paper: recurrent inference, 'improved sequence length extrapolation')")
    notes = ("One training per backbone and seed (30-step windows = 90 tokens; data of icl-darkroom: in-context expert "
             "histories); evaluated on the 20 held-out goals of the 10x10 room over 40 consecutive episodes on one "
             "state (12,000 tokens, 133x the training window); the score (random 0, optimal 1 per goal) is binned by "
             "episode index, i.e. by the history length already in the state. Episode 1 is the search (no history); "
             "later episodes test whether the goal found is kept. The Transformer variants share one training: "
             "'transformer' keeps everything in its KV cache (learned positions up to 12,000, only the first 90 "
             "trained); 'transformer-kv90' attends to its last 90 tokens but its positions still count from the start; "
             "'transformer-reprocess30' re-runs the last 30 steps every step (the paper's protocol, positions always "
             "trained). The task needs no long memory: the expert stays "
             "on the goal, so at an episode start the last 30 steps show where it is, as in every training window; what "
             "is measured is whether a long history in the state harms acting. Read the first bin too: a variant already "
             "low there fails the held-out goals themselves (a 1-episode check on 4 training goals, 2026-12-02: "
             "the cpu-scale Transformer reaches some of those), so its later score says nothing about history "
             "length. cpu scale: tiny preset, 500 steps, 2 seeds.")
    scales = {
        "smoke": Scale(size="tiny", train_steps=2, batch_size=2, context=6, seeds=(0,), eval_episodes=4,
                       data={"rooms": ({**ROOM_6, "train_goals": 2, "episodes_per_goal": 3, "eval_goals": 2},),
                             "backbones": ("xlstm[1:0]",)}),
        # estimate ~30 min on 2 cores: 8 trainings x 500 steps (~12 min at the tiny preset's ~8 steps/s for xLSTM
        # [1:0], ~1.5x slower for [7:1] and Mamba), then 10 evaluations of 4,000 steps of 20 goals stepped together:
        # ~4-7 ms a step for the recurrent backbones and the windowed KV cache, ~15 ms for the re-processed window;
        # the whole-history KV cache reads all of its 20 x 12,000 tokens every step (memory-bound: measured ~200 ms
        # a step at 12,000-15,000 tokens on 2 busy cores, a few minutes per arm on idle ones)
        "cpu": Scale(size="tiny", train_steps=500, batch_size=16, context=30, seeds=(0, 1), eval_episodes=40,
                     data={"rooms": (ROOM_10,), "noise": 0.1, "backbones": RECURRENT}),
        # the paper (spec 7.7, 7.8; its extrapolation experiment is not specified: a choice): configs/darkroom_icl.yaml
        # (small preset, C = 400 timesteps = 1,200 tokens) per backbone on the 10x10 room's learning histories
        # (data/darkroom), 3 seeds, 40 consecutive episodes per held-out goal on one context (12,000 tokens, 10x the
        # window); the Transformer variants (KV window 1,200 tokens, re-processing the last 400 steps) evaluate the
        # Transformer's runs; written, not run here
        "paper": Scale(size="small", context=400, seeds=(0, 1, 2), eval_episodes=40,
                       data={"rooms": (PAPER_ROOM,), "backbones": RECURRENT}, launch=paper_launch()),
    }

    def labels(self, scale: Scale) -> list[str]:
        variants = [f"{KV}{3 * scale.context}", f"{REPROCESS}{scale.context}"]
        return [*scale.data.get("backbones", RECURRENT), "transformer", *variants]

    def arm_overrides(self, label: str, scale: Scale, room: dict) -> tuple[str, ...]:
        backbone = "transformer" if label.startswith("transformer") else label
        return (f"model.backbone={backbone}", *transformer_overrides(backbone, scale.eval_episodes, room))

    @staticmethod
    def trained_arm(arm: Arm) -> Arm:
        """The arm whose training ``arm`` evaluates: the Transformer variants share the Transformer's."""
        label, _ = split_group(arm.group)
        if label.startswith("transformer") and label != "transformer":
            return Arm(arm.group.replace(label, "transformer", 1), arm.seed, arm.overrides)
        return arm

    def stages(self, arm: Arm, overrides: list[str], run: Path, scale: Scale) -> list[Stage]:
        """A Transformer variant's stage is the Transformer's (same name and run: trained once, also by the
        launch script)."""
        trained = self.trained_arm(arm)
        if trained == arm:
            return super().stages(arm, overrides, run, scale)
        own = run.parent / trained.name
        shared = [f"logging.run_dir={own}" if o.startswith("logging.run_dir=") else o for o in overrides]
        return super().stages(trained, shared, own, scale)

    def train_arm(self, arm: Arm, overrides: list[str], run: Path, scale: Scale, progress: bool) -> None:
        if self.trained_arm(arm) == arm:  # the variants come after the Transformer they evaluate
            super().train_arm(arm, overrides, run, scale, progress)

    def evaluate(self, arm: Arm, run: Path, scale: Scale, progress: bool) -> dict:
        from lram.models.persistence import load_pretrained

        label, _ = split_group(arm.group)
        policy = load_pretrained(run.parent / self.trained_arm(arm).name)
        window = None
        if label.startswith(KV):
            cfg = policy.backbone.config  # the same weights with a sliding-window cache
            policy.backbone.config = dataclasses.replace(cfg, kv_window=int(label[len(KV):]))
            policy.config.backbone_options["kv_window"] = policy.backbone.config.kv_window
        elif label.startswith(REPROCESS):
            window = int(label[len(REPROCESS):])
        return in_context_report(policy, held_out_tasks(room_of(arm, scale)), scale.eval_episodes, scale.eval_max_steps,
                                 window=window)

    def summarise(self, results: dict, reports: dict[str, dict], scale: Scale) -> None:
        """Adds results["history"][group]: per episode-index bin the score per goal and seed (averaged over the
        bin's episodes), its mean and IQM with 95% bootstrap CIs over goals x seeds, and the history length in
        tokens at the bin's first episode."""
        super().summarise(results, reports, scale)
        results["history"] = {}
        for g, reps_ in group_reports(results, reports).items():
            _, scores = episode_matrix(reps_)
            room = room_of(Arm(g, 0), scale)
            rows = []
            for a, b in history_bins(scores.shape[1]):
                row = {"episodes": [a, b], "tokens": history_tokens(a - 1, room), "mean": None, "iqm": None}
                if scores.size:
                    est = bootstrap_ci(scores[:, a - 1:b].mean(axis=1, keepdims=True), REPS)
                    for k in ("mean", "iqm"):
                        row[k], row[f"{k}_ci"] = float(est[k][0]), [float(est[f"{k}_ci"][0][0]), float(est[f"{k}_ci"][1][0])]
                rows.append(row)
            results["history"][g] = rows

    def extra_table(self, results: dict) -> str:
        hist = results.get("history", {})
        if not hist:
            return ""
        bins = next(iter(hist.values()))
        lines = ["Score (IQM [95% CI] over goals x seeds) per history length: episode index bins, with the tokens of "
                 "history before the bin's first episode:", "",
                 "| arm | " + " | ".join(f"ep {r['episodes'][0]}-{r['episodes'][1]} ({r['tokens']} tok)" for r in bins) + " |",
                 "|---" * (len(bins) + 1) + "|"]
        for g, rows in hist.items():
            cells = ["-" if r["iqm"] is None else _ci(r["iqm"], r["iqm_ci"]) for r in rows]
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot_extra(self, results: dict, root: Path) -> list[Path]:
        from lram.evaluation.plots import _colors, _figure, _save

        if not results.get("history"):
            return []
        out = [plot_curves(results, root / f"{self.name}-curves.png", self.name)]
        colors = _colors(list(results["history"]))
        fig = _figure(7.0, 4.5)
        ax = fig.add_subplot(1, 1, 1)
        for g, rows in results["history"].items():
            rows = [r for r in rows if r["iqm"] is not None]
            x = [max(r["tokens"], 1) for r in rows]
            ax.errorbar(x, [r["iqm"] for r in rows], yerr=[[r["iqm"] - r["iqm_ci"][0] for r in rows],
                        [r["iqm_ci"][1] - r["iqm"] for r in rows]], color=colors[g], marker="o", capsize=3, label=g)
        ax.axvline(3 * results["settings"]["context"], color="0.5", ls="--", lw=1, label="training window")
        ax.set_xscale("log")
        ax.set_xlabel("history before the episode (tokens, log)")
        ax.set_ylabel("score IQM, 95% CI (random 0, optimal 1)")
        ax.set_title(f"{self.name} ({results['scale']})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out.append(_save(fig, root / f"{self.name}-history.png", {"experiment": self.name, "scale": results["scale"]}))
        return out

    def verdict(self, results: dict) -> str:
        """On the longest-history bin (score IQM): agrees when the best xLSTM's CI lies above every Transformer variant's
        and the best Transformer variant is not already below it in the first bin (partly when it is: a deficit
        without history is not extrapolation); disagrees when a Transformer variant's lies above it; else the CIs
        overlap."""
        last = {g: rows[-1] for g, rows in results.get("history", {}).items() if rows and rows[-1]["iqm"] is not None}
        xl = {g: r for g, r in last.items() if split_group(g)[0].startswith("xlstm")}
        tf = {g: r for g, r in last.items() if split_group(g)[0].startswith("transformer")}
        if not xl or not tf:
            return "not measured"
        bx, x = max(xl.items(), key=lambda kv: kv[1]["iqm"])
        bt, t = max(tf.items(), key=lambda kv: kv[1]["iqm"])
        a, b = x["episodes"]
        fig = (f"episodes {a}-{b} ({x['tokens']}+ tokens of history), score IQM: {bx} {_ci(x['iqm'], x['iqm_ci'])} "
               f"vs best Transformer {bt} {_ci(t['iqm'], t['iqm_ci'])}")
        if results.get("scale") == "smoke":
            return f"not a result (smoke scale: a few steps); {fig}"
        if all(x["iqm_ci"][0] > r["iqm_ci"][1] for r in tf.values()):
            # the Transformer already below in the first bin (no history): its deficit is not extrapolation
            first = {g: rows[0] for g, rows in results["history"].items() if rows and rows[0]["iqm"] is not None}
            if bt in first and bx in first and first[bt]["iqm_ci"][1] < first[bx]["iqm_ci"][0]:
                return (f"partly: {fig}; {bx} keeps its score over the long history (first bin "
                        f"{_ci(first[bx]['iqm'], first[bx]['iqm_ci'])}), but {bt} is already below it in the first "
                        f"bin, without history ({_ci(first[bt]['iqm'], first[bt]['iqm_ci'])}): its deficit is not "
                        "degradation with history length")
            return f"agrees: {fig}"
        if any(r["iqm_ci"][0] > x["iqm_ci"][1] for r in tf.values()):
            return f"disagrees: {fig}"
        return f"inconclusive (the CIs overlap): {fig}"

