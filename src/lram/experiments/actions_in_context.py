"""``actions-in-context``: policies with and without the previous actions in their context, on continuous control.

The paper (ablation, spec section 7.1): removing actions from the context improves the continuous-control
domains (Meta-World, DMControl) and leaves the discrete ones unaffected; its explanation is that
consecutive continuous actions change smoothly, so a model that sees a_{t-1} learns to copy it (a shortcut)
and becomes overconfident.  Here one xLSTM [1:0] recipe trains with ``model.action_condition`` false (the
default: tokens r_{t-1} s_t R_t per step) or true (the previous action's dims as extra tokens in front:
a_{t-1} r_{t-1} s_t R_t), seeds x both, on Meta-World scripted experts and DMControl SAC experts, and is
scored online.  The dataset statistic behind the explanation, the mean squared difference of consecutive
actions (the error of "repeat the previous action"), is computed from the experiment's own data, beside
2 Var(a) (its value if consecutive actions were independent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lram.experiments.core import Arm, Experiment, Launch, Scale, ci_verdict
from lram.experiments.datasets import dmcontrol_sac

GROUPS = {"no-actions": "false", "with-actions": "true"}  # group suffix -> model.action_condition
MAX_ACT_DIM = 4  # the widest action here (Meta-World's); DMControl's tasks here have 1-2 dims
PAPER_ACT_DIM = 8  # the paper's action tokens per step (spec 7.1: a_1..a_8; the recipe's model.max_act_dim)
# the paper scale's continuous-control domains (spec 7.1), as the recipe files and core.PAPER_DATASETS name them
PAPER_DOMAINS = {"metaworld": "data/metaworld", "dmcontrol": "data/dmcontrol"}


def action_smoothness(packed_root: Path | dict[str, Path | str]) -> dict[str, dict]:
    """Per ``domain/task`` of a packed dataset root (``packed_root/DOMAIN/TASK``; or a dict domain -> dataset
    path): the mean over consecutive step pairs within episodes (and over action dims) of (a_{t+1} - a_t)^2,
    2 Var(a) (pooled over steps, mean over dims), their ratio, and the episodes' count, mean and best return
    (the experts' quality)."""
    from lram.data.storage import open_dataset

    if isinstance(packed_root, dict):
        sources = {d: Path(p) for d, p in sorted(packed_root.items())}
    else:
        sources = {p.name: p for p in sorted(Path(packed_root).iterdir()) if p.is_dir()}
    out = {}
    for domain, path in sources.items():
        for task, data in sorted(open_dataset(path, progress=False).items()):
            acts = [np.asarray(data.read(i, fields=("actions",))["actions"], dtype=np.float64)
                    for i in range(data.num_episodes)]
            diffs = np.concatenate([np.diff(a.reshape(len(a), -1), axis=0) for a in acts])
            flat = np.concatenate([a.reshape(len(a), -1) for a in acts])
            msd, indep = float(np.mean(diffs**2)), float(2 * flat.var(axis=0).mean())
            out[f"{domain}/{task}"] = {"consecutive_msd": msd, "independent_msd": indep,
                                       "ratio": msd / indep if indep > 0 else None,
                                       "episodes": int(data.num_episodes), "return_mean": float(data.returns.mean()),
                                       "return_best": float(data.returns.max())}
    return out


def domain_means(per_task: dict[str, dict], key: str) -> dict[str, float]:
    """The mean of ``key`` over each domain's tasks."""
    domains = sorted({t.split("/", 1)[0] for t in per_task})
    return {d: float(np.mean([v[key] for t, v in per_task.items() if t.startswith(d + "/")])) for d in domains}


class ActionsInContext(Experiment):
    name = "actions-in-context"
    claim = ("removing actions from the context improves continuous-control domains (Meta-World, DMControl): "
             "with actions the model exploits the smoothness of consecutive actions and becomes overconfident "
             "(paper ablation, spec 7.1)")
    notes = ("Both groups share everything but model.action_condition; actions enter as one token per action dim "
             "(model.max_act_dim=4: Meta-World's 4 dims, DMControl's 1-2, no all-padding tokens), so a step is "
             "7 tokens with actions and 3 without. Training windows start without the previous action (the "
             "sampler does not read it), while acting the recurrent agent feeds it at every step. The cpu "
             "scale is the tiny preset (d_model 128), 1,200 steps, C = 30, 3 seeds, xLSTM [1:0] only (the paper: "
             "several backbones and 5 context lengths); DMControl is 2 tasks with 250-step episodes and SAC "
             "experts of 20k steps (their returns are in the data table: weak experts make the DMControl "
             "scores noisy), Meta-World 3 tasks of scripted experts with action noise 0.1 (which by itself "
             "adds 2 x 0.1^2 = 0.02 to the consecutive-action MSD). No discrete domain is in it. The paper scale keeps "
             "the recipe's 8 action dims (11 tokens a step with actions) at 16M (a choice: the spec gives no size).")
    scales = {
        # seconds: the pipeline end to end (a few steps, cut episodes, a 100-step SAC); the numbers mean nothing
        "smoke": Scale(size="tiny", train_steps=4, batch_size=2, context=6, seeds=(0,), eval_episodes=1,
                       eval_max_steps=8, data={"backbones": ("xlstm[1:0]",), "metaworld_tasks": ("reach-v3",),
                                               "metaworld_episodes": 2, "dmcontrol_tasks": ("cartpole-balance",),
                                               "dmcontrol_episodes": 2, "dmcontrol_max_steps": 20,
                                               "sac_timesteps": 100}),
        # ~34 min on 2 idle cores (estimated, not run: the tiny preset's ~8 steps/s at batch 16, C = 30, 3
        # tokens a step, and 2.3x that step time with 7 tokens a step, the ratio measured in forward+backward
        # timings; SAC ~70 steps/s per core): data ~6 min (Meta-World ~45 s; two 20k-step SAC experts side by
        # side, one core each, ~5 min), training 3 seeds x 1,200 x (0.125 + 0.29) s ~ 25 min, evaluation 6 arms
        # x ~30 s ~ 3 min
        "cpu": Scale(size="tiny", train_steps=1200, batch_size=16, context=30, seeds=(0, 1, 2), eval_episodes=10,
                     eval_max_steps=250,
                     data={"backbones": ("xlstm[1:0]",),
                           "metaworld_tasks": ("reach-v3", "button-press-topdown-v3", "drawer-close-v3"),
                           "metaworld_episodes": 100, "dmcontrol_tasks": ("cartpole-balance", "ball_in_cup-catch"),
                           "dmcontrol_episodes": 30, "dmcontrol_max_steps": 250, "sac_timesteps": 20000}),
        # the paper (spec 7.1): with / without the previous action's 8 dims as tokens, on the recipe
        # configs/paper/xlstm-1-0_16M.yaml restricted to Meta-World and DMControl (data/metaworld, data/dmcontrol;
        # C = 50, 33,334 optimizer steps, one micro-batch per domain), 3 seeds, 5 episodes per task; written,
        # not run here.  The size is a choice (the spec does not give the ablation's): 16M, the paper's smallest,
        # because the ablation doubles the runs of one backbone and with actions a step is 11 tokens instead of
        # 3 (550 instead of 150 per window at C = 50, ~3.7x the compute of a step); 206M is the headline size
        "paper": Scale(size="16M", seeds=(0, 1, 2), eval_episodes=5, eval_workers=8,
                       data={"backbones": ("xlstm[1:0]",)}, launch=Launch()),
    }

    def __init__(self):
        self.smoothness: dict[str, dict] = {}
        self.smoothness_sources: dict[str, str] = {}  # at a launch scale: the datasets to compute it from
        self.smoothness_note = ""  # why the statistic is missing, when it is

    def make_data(self, root: Path, scale: Scale, progress: bool) -> list[str]:
        from lram.data.generators import metaworld
        from lram.data.storage import convert_dataset_once

        d = scale.data
        quiet = [] if progress else ["--quiet"]
        metaworld.main([str(root / "metaworld"), "--tasks", ",".join(d["metaworld_tasks"]), "--episodes",
                        str(d["metaworld_episodes"]), "--noise", "0.1", *quiet])
        dmcontrol_sac(root / "dmcontrol", d["dmcontrol_tasks"], timesteps=d["sac_timesteps"],
                      episodes=d["dmcontrol_episodes"], max_steps=d["dmcontrol_max_steps"], quiet=not progress)
        for domain in ("metaworld", "dmcontrol"):
            convert_dataset_once(root / domain, root / "packed" / domain, "packed")
        packed = root / "packed"
        self.smoothness = action_smoothness(packed)
        return [f"data.domains=[{{name: metaworld, path: {packed / 'metaworld'}}}, "
                f"{{name: dmcontrol, path: {packed / 'dmcontrol'}}}]",
                "data.domain_weights={metaworld: 0.5, dmcontrol: 0.5}"]

    def launch_data(self, scale: Scale) -> list[str]:
        """The recipe's Meta-World and DMControl datasets only (the statistic is computed from them at collect)."""
        self.smoothness, self.smoothness_sources = {}, dict(PAPER_DOMAINS)
        return ["data.domains=[" + ", ".join(f"{{name: {d}, path: {p}}}" for d, p in PAPER_DOMAINS.items()) + "]"]

    def train_overrides(self, scale: Scale) -> list[str]:
        if scale.launch is not None:  # the recipe's model.max_act_dim: the paper's 8 action dims
            return super().train_overrides(scale)
        return [*super().train_overrides(scale), f"model.max_act_dim={MAX_ACT_DIM}"]

    def arms(self, scale: Scale) -> list[Arm]:
        return [Arm(f"{b}/{g}", s, (f"model.backbone={b}", f"model.action_condition={flag}",
                                    *self.backbone_overrides(b, flag, scale)))
                for b in scale.data["backbones"] for g, flag in GROUPS.items() for s in scale.seeds]

    @staticmethod
    def backbone_overrides(backbone: str, flag: str, scale: Scale) -> tuple[str, ...]:
        """The Transformer's learned positions must cover a whole evaluation episode (recurrent acting keeps
        it all): 3 tokens a step, and MAX_ACT_DIM more with actions."""
        if backbone != "transformer":
            return ()
        tokens = 3 + ((PAPER_ACT_DIM if scale.launch is not None else MAX_ACT_DIM) if flag == "true" else 0)
        return (f"model.backbone_options={{max_positions: {tokens * (scale.eval_max_steps or 1000) + 64}}}",)

    def summarise(self, results: dict, reports: dict[str, dict], scale: Scale) -> None:
        """The data's consecutive-action statistic and expert returns, per task and per domain (at a launch
        scale computed here from its datasets; skipped, with a note, when they cannot be read)."""
        if not self.smoothness and self.smoothness_sources:
            missing = [p for p in self.smoothness_sources.values() if not Path(p).exists()]
            if missing:
                self.smoothness_note = f"not computed: dataset(s) {', '.join(missing)} not found"
            else:
                try:
                    self.smoothness = action_smoothness(self.smoothness_sources)
                except (OSError, ValueError, KeyError) as e:  # a format open_dataset cannot read
                    self.smoothness_note = f"not computed: {type(e).__name__}: {e}"
        if not self.smoothness:
            results["action_smoothness"] = {"note": self.smoothness_note or "not computed: no datasets"}
            return
        results["action_smoothness"] = {
            "tasks": self.smoothness,
            "domains": {k: domain_means(self.smoothness, k) for k in ("consecutive_msd", "independent_msd")},
            "definition": "consecutive_msd: mean over consecutive step pairs within episodes and over action dims "
                          "of (a_{t+1} - a_t)^2 (the MSE of repeating the previous action); independent_msd: "
                          "2 Var(a), its value for independent consecutive actions"}

    def extra_table(self, results: dict) -> str:
        s = results.get("action_smoothness")
        if not s:
            return ""
        if "tasks" not in s:
            return f"Training data's consecutive-action statistic: {s.get('note', 'not computed')}."
        lines = ["Training data: consecutive actions (MSD = mean (a_{t+1} - a_t)^2 over steps and dims, the error "
                 "of repeating the previous action; 2 Var(a) = its value for independent actions) and the "
                 "experts' returns.", "",
                 "| domain/task | episodes | return mean / best | MSD consecutive | 2 Var(a) | ratio |",
                 "|---|---|---|---|---|---|"]
        for task, v in s["tasks"].items():
            ratio = f"{v['ratio']:.3f}" if v["ratio"] is not None else "-"
            lines.append(f"| {task} | {v['episodes']} | {v['return_mean']:.1f} / {v['return_best']:.1f} | "
                         f"{v['consecutive_msd']:.4g} | {v['independent_msd']:.4g} | {ratio} |")
        for d, msd in s["domains"]["consecutive_msd"].items():
            indep = s["domains"]["independent_msd"][d]
            ratio = f"{msd / indep:.3f}" if indep > 0 else "-"
            lines.append(f"| **{d}** (means of its tasks) | | | {msd:.4g} | {indep:.4g} | {ratio} |")
        return "\n".join(lines)

    def verdict(self, results: dict) -> str:
        """From xLSTM [1:0]'s two groups: agrees when the no-actions IQM CI lies above the with-actions CI;
        partly when the CIs overlap but the no-actions IQM is higher; disagrees otherwise."""
        groups = results["groups"]
        no, wa = groups.get("xlstm[1:0]/no-actions"), groups.get("xlstm[1:0]/with-actions")
        if not no or not wa or "iqm" not in no or "iqm" not in wa:
            return "not measured"
        per_domain = ", ".join(f"{d} {no['domains'][d]:.3f} vs {wa['domains'][d]:.3f}"
                               for d in sorted(no["domains"]) if d in wa["domains"])
        fig = (f"no actions IQM {no['iqm']:.3f} [{no['iqm_ci'][0]:.3f}, {no['iqm_ci'][1]:.3f}] vs with actions "
               f"{wa['iqm']:.3f} [{wa['iqm_ci'][0]:.3f}, {wa['iqm_ci'][1]:.3f}] (per domain, means: {per_domain})")
        if results["scale"] == "smoke":
            return f"not a result (smoke scale: a few steps); {fig}"
        return ci_verdict(no, wa, fig, higher="higher without actions", no_gain="no gain from removing actions",
                          worse="with actions is better")
