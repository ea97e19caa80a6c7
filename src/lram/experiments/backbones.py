"""``backbones``: xLSTM [1:0], xLSTM [7:1], Mamba and the Transformer at equal size, one multi-domain policy each.

The paper (section 4.1, Fig. 3): at equal parameter counts the xLSTM matches or beats the Transformer and
Mamba across domains.  Here every backbone trains the same recipe on the same data (Meta-World scripted
experts and Dark-Room learning histories), seeds x backbones arms, and is scored online against a random
policy in the real environments.
"""

from __future__ import annotations

from pathlib import Path

from lram.experiments.core import Arm, Experiment, Launch, Scale
from lram.experiments.datasets import dmcontrol_sac

BACKBONES = ("xlstm[1:0]", "xlstm[7:1]", "mamba", "transformer")


class Backbones(Experiment):
    name = "backbones"
    claim = ("at equal size, xLSTM matches or outperforms the Transformer and Mamba as a multi-domain action "
             "model (paper Fig. 3, sizes 16M-206M, 432 tasks)")
    notes = ("The IQM pools every task of every seed, so Dark-Room's goals (40 at cpu scale) outweigh the other "
             "domains' 5 tasks: read the per-domain columns beside it. Dark-Room is scored in context (10 "
             "consecutive episodes on one state). The recurrent backbones act on their recurrent state (the whole "
             "history); the Transformer acts on a sliding window of its 30 training timesteps re-processed every "
             "step (the paper's protocol), so it cannot carry what it found across Dark-Room episodes. The cpu "
             "scale is the tiny preset (d_model 128), 1,500 steps, and weak experts in places (DMControl: one task, "
             "a 20k-step SAC; Atari: Freeway's scripted expert, ~30 points against 0 for random, and 10% of the "
             "steps, since an image batch costs ~10x a vector batch).")
    scales = {
        # seconds: the pipeline end to end (a few steps, cut episodes, a 100-step SAC); the numbers mean nothing
        "smoke": Scale(size="tiny", train_steps=4, batch_size=2, context=6, seeds=(0,), eval_episodes=1,
                       eval_max_steps=8, data={"metaworld_tasks": ("reach-v3",), "metaworld_episodes": 2,
                                               "darkroom_goals": 2, "darkroom_episodes": 2,
                                               "dmcontrol_tasks": ("cartpole-balance",), "dmcontrol_episodes": 2,
                                               "dmcontrol_max_steps": 20, "sac_timesteps": 100,
                                               "atari_games": ("freeway",), "atari_episodes": 1,
                                               "atari_max_steps": 20,
                                               "weights": {"metaworld": 1, "darkroom": 1, "dmcontrol": 1,
                                                           "atari": 1}}),
        # four domains, one of them images: Meta-World (3 tasks, scripted experts), Dark-Room (40 goals,
        # learning histories), DMControl (cartpole-balance, a 20k-step SAC expert, 1,000-step episodes) and Atari
        # Freeway (the scripted expert, full games of 2,048 steps, IMPALA CNN); 1,500 steps per arm, 3 seeds x 4
        # backbones.  An image batch (16 x 30 frames) costs ~10x a vector batch, so Atari gets 10% of the steps
        "cpu": Scale(size="tiny", train_steps=1500, batch_size=16, context=30, seeds=(0, 1, 2), eval_episodes=10,
                     data={"metaworld_tasks": ("reach-v3", "button-press-topdown-v3", "drawer-close-v3"),
                           "metaworld_episodes": 100, "darkroom_goals": 40, "darkroom_episodes": 10,
                           "dmcontrol_tasks": ("cartpole-balance",), "dmcontrol_episodes": 30,
                           "dmcontrol_max_steps": 1000, "sac_timesteps": 20000,
                           "atari_games": ("freeway",), "atari_episodes": 10, "atari_max_steps": 27000,
                           "weights": {"metaworld": 0.5, "darkroom": 0.2, "dmcontrol": 0.2, "atari": 0.1}}),
        # the paper (spec 4.5, 5.1): configs/paper/BACKBONE_206M.yaml (six domains, 432 tasks, C = 50, 33,334
        # optimizer steps of 6 x 128 windows on 4 A100s), 3 seeds, 5 episodes per task; written, not run here
        "paper": Scale(size="206M", seeds=(0, 1, 2), eval_episodes=5, eval_workers=8, launch=Launch()),
    }

    def make_data(self, root: Path, scale: Scale, progress: bool) -> list[str]:
        from lram.data.generators import atari, darkroom, metaworld
        from lram.data.storage import convert_dataset_once
        from lram.envs.darkroom import goal_split

        d = scale.data
        quiet = [] if progress else ["--quiet"]
        metaworld.main([str(root / "metaworld"), "--tasks", ",".join(d["metaworld_tasks"]), "--episodes",
                        str(d["metaworld_episodes"]), "--noise", "0.1", *quiet])
        goals = goal_split("train")[: d["darkroom_goals"]]
        darkroom.main([str(root / "darkroom"), "--goals", ";".join(f"{x},{y}" for x, y in goals),
                       "--episodes-per-goal", str(d["darkroom_episodes"]), "--algo", "sweep", "--noise", "0.1", *quiet])
        dmcontrol_sac(root / "dmcontrol", d["dmcontrol_tasks"], timesteps=d["sac_timesteps"],
                      episodes=d["dmcontrol_episodes"], max_steps=d["dmcontrol_max_steps"], quiet=not progress)
        atari.main([str(root / "atari"), "--games", ",".join(d["atari_games"]), "--algo", "scripted", "--episodes",
                    str(d["atari_episodes"]), "--max-steps", str(d["atari_max_steps"]), "--compress", *quiet])
        domains = ("metaworld", "darkroom", "dmcontrol", "atari")
        for domain in domains:
            convert_dataset_once(root / domain, root / "packed" / domain, "packed")
        packed = root / "packed"
        entries = ", ".join(f"{{name: {n}, path: {packed / n}" + (", return_condition: false}" if n == "darkroom" else "}")
                            for n in domains)
        weights = ", ".join(f"{n}: {w}" for n, w in d["weights"].items())
        return [f"data.domains=[{entries}]", f"data.domain_weights={{{weights}}}", "model.use_images=true"]

    def arms(self, scale: Scale) -> list[Arm]:
        return [Arm(b, s, (f"model.backbone={b}",)) for b in BACKBONES for s in scale.seeds]

    def evaluate(self, arm: Arm, run: Path, scale: Scale, progress: bool) -> dict:
        """Recurrent backbones act on their recurrent state (the whole history, lram's default); the Transformer
        on a sliding window of its training context, re-processed every step (the paper's protocol): a KV cache
        of the whole history would put it at positions it never trained."""
        import json

        from lram.evaluation.evaluate import evaluate_checkpoint

        window = None
        if arm.group == "transformer":  # the run's own training context (config.json, written by the trainer)
            window = int(json.loads((run / "config.json").read_text())["data"]["context"])
        return evaluate_checkpoint(run, episodes=scale.eval_episodes, random_baseline=True, window=window,
                                   max_steps=scale.eval_max_steps, workers=scale.eval_workers, progress=progress)

    def verdict(self, results: dict) -> str:
        """Agrees when xLSTM [1:0]'s IQM CI reaches the best other backbone's IQM (matches or beats it);
        disagrees when its upper bound lies below another backbone's lower bound; else partly."""
        groups = {k: g for k, g in results["groups"].items() if "iqm" in g}
        if "xlstm[1:0]" not in groups or len(groups) < 2:
            return "not measured"
        x = groups["xlstm[1:0]"]
        others = {k: g for k, g in groups.items() if k != "xlstm[1:0]"}
        best_name, best = max(others.items(), key=lambda kv: kv[1]["iqm"])
        fig = f"xLSTM [1:0] IQM {x['iqm']:.3f} [{x['iqm_ci'][0]:.3f}, {x['iqm_ci'][1]:.3f}] vs {best_name} {best['iqm']:.3f}"
        if results["scale"] == "smoke":
            return f"not a result (smoke scale: a few steps); {fig}"
        if any(x["iqm_ci"][1] < g["iqm_ci"][0] for g in others.values()):
            return f"disagrees: {fig} (another backbone's CI lies above)"
        if x["iqm_ci"][1] >= best["iqm"]:
            return f"agrees: {fig}"
        return f"partly: {fig}"
