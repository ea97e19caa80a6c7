"""``context-length``: one multi-task policy per backbone and context length C (timesteps), on Meta-World.

The paper (spec section 7.6; its text: "the evaluation performance improves across domains as the sequence
length increases, which indicates that the history helps to predict the next action"): xLSTM trained and
evaluated with 5 context lengths.  Here xLSTM [1:0] and the Transformer train the same recipe at 4 context
lengths, seeds x lengths x backbones arms, and act as the paper's evaluation does: on the last C timesteps,
re-processed at every step (:class:`lram.evaluation.window.WindowAgent`), so that no model sees a longer
history than it trained on.
"""

from __future__ import annotations

from pathlib import Path

from lram.experiments.core import Arm, Experiment, Launch, Scale, ci_verdict


def group_name(backbone: str, context: int) -> str:
    return f"{backbone}/C={context}"


def arm_context(arm: Arm) -> int:
    """The context length (timesteps) an arm trains with (its ``data.context`` override)."""
    return next(int(o.split("=", 1)[1]) for o in arm.overrides if o.startswith("data.context="))


class ContextLength(Experiment):
    name = "context-length"
    claim = ("evaluation performance improves as the context length grows: the history helps to predict the next "
             "action (paper: xLSTM, 5 context lengths)")
    notes = ("Every arm acts on its own training context (the last C timesteps, re-processed every step), as the "
             "paper evaluates; lram's default recurrent acting would give the recurrent backbones the whole "
             "episode. The batch is 16 windows at every C, so longer contexts also train on more target actions "
             "per step (C x 16), as in the paper. Meta-World's scripted-expert states are nearly Markov (a policy "
             "of the current state suffices), which leaves history little to add; an ICLR reviewer of the paper "
             "noted that without actions in context all lengths perform alike. The cpu scale is the tiny preset "
             "(d_model 128), 1,200 steps, 3 Meta-World tasks, 3 seeds; Mamba and Dark-Room are not in it.")
    scales = {
        # seconds: the pipeline end to end (a few steps, cut episodes); the numbers mean nothing
        "smoke": Scale(size="tiny", train_steps=4, batch_size=2, context=4, seeds=(0,), eval_episodes=1,
                       eval_max_steps=8, data={"backbones": ("xlstm[1:0]", "transformer"), "contexts": (1, 4),
                                               "metaworld_tasks": ("reach-v3",), "metaworld_episodes": 2}),
        # ~30 min on 2 idle cores (estimated, not run: the tiny xLSTM's ~8 steps/s at batch 16, C = 30, scaled
        # by forward+backward timings per C and backbone: xLSTM 0.009 / 0.018 / 0.046 / 0.161 s a step at C = 1 /
        # 5 / 15 / 40, the Transformer 0.011 / 0.017 / 0.036 / 0.080 s): data ~45 s, training 3 seeds x 1,200 x
        # (0.234 + 0.144) s ~ 23 min, evaluation 24 arms x ~15 s (30 episodes of 200 steps, a forward over the
        # window per step, and the random baseline) ~ 6 min
        "cpu": Scale(size="tiny", train_steps=1200, batch_size=16, context=30, seeds=(0, 1, 2), eval_episodes=10,
                     data={"backbones": ("xlstm[1:0]", "transformer"), "contexts": (1, 5, 15, 40),
                           "metaworld_tasks": ("reach-v3", "button-press-topdown-v3", "drawer-close-v3"),
                           "metaworld_episodes": 100}),
        # the paper (spec 7.6: xLSTM, 5 context lengths; here with the Transformer beside it): the recipe
        # configs/paper/BACKBONE_16M.yaml (six domains, 33,334 optimizer steps of 6 x 128 windows) with its
        # data.context replaced, 3 seeds, 5 episodes per task; written, not run here.  Choices (the spec gives
        # neither): the lengths 1 to the recipe's 50 timesteps, spaced about evenly in log C; the size 16M, the
        # paper's smallest, since the ablation is 2 backbones x 5 lengths x 3 seeds = 30 runs
        "paper": Scale(size="16M", seeds=(0, 1, 2), eval_episodes=5,
                       data={"backbones": ("xlstm[1:0]", "transformer"), "contexts": (1, 5, 10, 25, 50)},
                       launch=Launch()),
    }

    def make_data(self, root: Path, scale: Scale, progress: bool) -> list[str]:
        from lram.data.generators import metaworld
        from lram.data.storage import convert_dataset_once

        d = scale.data
        metaworld.main([str(root / "metaworld"), "--tasks", ",".join(d["metaworld_tasks"]), "--episodes",
                        str(d["metaworld_episodes"]), "--noise", "0.1", *([] if progress else ["--quiet"])])
        convert_dataset_once(root / "metaworld", root / "packed" / "metaworld", "packed")
        return [f"data.domains=[{{name: metaworld, path: {root / 'packed' / 'metaworld'}}}]"]

    def arms(self, scale: Scale) -> list[Arm]:
        return [Arm(group_name(b, c), s, (f"model.backbone={b}", f"data.context={c}"))
                for b in scale.data["backbones"] for c in scale.data["contexts"] for s in scale.seeds]

    def evaluate(self, arm: Arm, run: Path, scale: Scale, progress: bool) -> dict:
        """Online, acting on the last C timesteps (the arm's training context), re-processed every step."""
        from lram.evaluation.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(run, episodes=scale.eval_episodes, random_baseline=True,
                                   max_steps=scale.eval_max_steps, progress=progress, window=arm_context(arm))

    def summarise(self, results: dict, reports: dict[str, dict], scale: Scale) -> None:
        """IQM (with CI) and mean per backbone and context length: the curve."""
        curve: dict[str, list[dict]] = {}
        for b in scale.data["backbones"]:
            for c in scale.data["contexts"]:
                g = results["groups"].get(group_name(b, c), {})
                if "iqm" in g:
                    curve.setdefault(b, []).append({"context": c, "iqm": g["iqm"], "iqm_ci": g["iqm_ci"],
                                                    "mean": g["mean"], "mean_ci": g["mean_ci"]})
        results["context_length"] = {"contexts": list(scale.data["contexts"]), "backbones": curve,
                                     "evaluation": "window: the last C timesteps, re-processed every step"}

    def extra_table(self, results: dict) -> str:
        cl = results.get("context_length")
        if not cl or not cl["backbones"]:
            return ""
        cs = cl["contexts"]
        lines = ["IQM normalised score [95% CI] by context length C (timesteps; acting on the last C):", "",
                 "| backbone | " + " | ".join(f"C={c}" for c in cs) + " |", "|---" * (len(cs) + 1) + "|"]
        for b, points in cl["backbones"].items():
            by_c = {p["context"]: p for p in points}
            cells = [f"{by_c[c]['iqm']:.3f} [{by_c[c]['iqm_ci'][0]:.3f}, {by_c[c]['iqm_ci'][1]:.3f}]" if c in by_c
                     else "-" for c in cs]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot_extra(self, results: dict, root: Path) -> list[Path]:
        """``context-length-curve.png``: IQM with its 95% CI against C, one line per backbone."""
        from lram.evaluation.plots import _colors, _figure, _save

        cl = results.get("context_length") or {}
        curves = cl.get("backbones") or {}
        if not curves:
            return []
        colors = _colors(list(curves))
        fig = _figure(6.5, 4.2)
        ax = fig.add_subplot(1, 1, 1)
        for b, points in curves.items():
            c = [p["context"] for p in points]
            ax.plot(c, [p["iqm"] for p in points], "o-", color=colors[b], label=b)
            ax.fill_between(c, [p["iqm_ci"][0] for p in points], [p["iqm_ci"][1] for p in points],
                            color=colors[b], alpha=0.2)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(cl["contexts"], [str(c) for c in cl["contexts"]])
        ax.set_xlabel("context length C (timesteps)")
        ax.set_ylabel("IQM normalised score (95% CI)")
        ax.set_title(f"{results['experiment']} ({results['scale']})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return [_save(fig, root / f"{self.name}-curve.png", {"experiment": results["experiment"],
                                                               "scale": results["scale"]})]

    def verdict(self, results: dict) -> str:
        """From xLSTM [1:0]'s curve: agrees when the longest context's IQM CI lies above the shortest's; partly
        when its IQM is higher but the CIs overlap; disagrees otherwise."""
        points = (results.get("context_length") or {}).get("backbones", {}).get("xlstm[1:0]", [])
        if len(points) < 2:
            return "not measured"
        short, long = points[0], points[-1]
        curve = ", ".join(f"C={p['context']} {p['iqm']:.3f}" for p in points)
        fig = (f"xLSTM [1:0] IQM C={long['context']} {long['iqm']:.3f} [{long['iqm_ci'][0]:.3f}, "
               f"{long['iqm_ci'][1]:.3f}] vs C={short['context']} {short['iqm']:.3f} [{short['iqm_ci'][0]:.3f}, "
               f"{short['iqm_ci'][1]:.3f}] (curve: {curve})")
        if results["scale"] == "smoke":
            return f"not a result (smoke scale: a few steps); {fig}"
        return ci_verdict(long, short, fig, higher="higher at the longest context",
                          no_gain="no gain from a longer context", worse="the shortest context is better")
