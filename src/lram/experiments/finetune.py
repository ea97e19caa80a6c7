"""``finetune``: a pretrained policy fine-tuned on held-out tasks with little data, against the same model
trained from scratch on that data (paper section 7.9, appendix: pretrained better in most domains).

Per seed: one pretraining on training tasks (kept and shared by the seed's arms), then three arms, all
scored online on the held-out tasks only:

* ``fine-tuned``: a new run from the pretraining's weights (``train.init_from``; a fresh optimizer), on the
  held-out data;
* ``scratch``: the same recipe and steps on the same data from a random initialisation;
* ``zero-shot``: the pretrained policy itself, never trained on the held-out tasks (what fine-tuning adds).

Every arm conditions on the same target return per task (the best return in the held-out data), so the
normalised scores are comparable.  Meta-World here: pretraining on a few ML45 training tasks, fine-tuning
on ML45 test tasks with a few episodes each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lram.experiments.core import Arm, Experiment, Launch, Scale, Stage

FINETUNED, SCRATCH, ZERO_SHOT = "fine-tuned", "scratch", "zero-shot"
PAPER_DOMAINS = ("metaworld", "dmcontrol", "procgen", "atari", "composuite", "mimicgen")
# the 37 held-out tasks of the paper (spec 4.1), by domain
PAPER_HELDOUT = {
    "metaworld": "the 5 ML45 test tasks (bin-picking, box-close, door-lock, door-unlock, hand-insert)",
    "dmcontrol": "5 tasks (cartpole-balance, finger-turn_hard, pendulum-swingup, reacher-hard, walker-walk)",
    "procgen": "4 games (climber, ninja, plunder, jumper)",
    "atari": "5 games (alien, pong, ms-pacman, space-invaders, star-gunner)",
    "composuite": "16 tasks (Panda_*_ObjectWall_*)",
    "mimicgen": "2 tasks (Threading_D2, ThreePieceAssembly_D2)",
}


class Finetune(Experiment):
    name = "finetune"
    claim = ("pretrained on the training tasks and fine-tuned offline on held-out tasks, the policy beats the same "
             "model trained from scratch on that data in most domains (paper appendix, xLSTM, 37 held-out tasks)")
    notes = ("fine-tuned and scratch share the recipe (steps, learning rate, data); fine-tuning keeps the pretrained "
             "state standardisation. At cpu scale: tiny preset, pretraining 2,000 steps on 5 Meta-World ML45 training "
             "tasks (scripted experts, 100 episodes each), fine-tuning 400 steps on 2 ML45 test tasks with 10 episodes "
             "each; one domain, so 'most domains' reduces to Meta-World. The paper's fine-tuning data (possibly the "
             "best 5% of trajectories) and size are not known exactly.")
    scales = {
        # seconds: both stages and all arms end to end; the numbers mean nothing
        "smoke": Scale(size="tiny", train_steps=3, batch_size=2, context=6, seeds=(0,), eval_episodes=1,
                       eval_max_steps=8, data={"pretrain_tasks": ("reach-v3",), "pretrain_episodes": 2,
                                               "pretrain_steps": 4, "heldout_tasks": ("door-lock-v3",),
                                               "heldout_episodes": 2}),
        # estimate (not run; tiny preset ~8 optimizer steps/s at batch 16, context 30 on 2 cores; scripted
        # Meta-World ~15 s per task per 100 episodes): data 5 x 100 + 2 x 10 episodes ~1.5 min; pretraining
        # 3 seeds x 2,000 steps ~12.5 min; fine-tuned + scratch 6 x 400 steps ~5 min; evaluation 9 arms x 2 tasks
        # x 10 episodes (+ random baseline) ~3 min: ~22 min, under 40 on a busy machine
        "cpu": Scale(size="tiny", train_steps=400, batch_size=16, context=30, seeds=(0, 1, 2), eval_episodes=10,
                     data={"pretrain_tasks": ("reach-v3", "button-press-topdown-v3", "drawer-close-v3", "door-open-v3",
                                              "window-open-v3"),
                           "pretrain_episodes": 100, "pretrain_steps": 2000,
                           "heldout_tasks": ("door-lock-v3", "door-unlock-v3"), "heldout_episodes": 10}),
        # the paper: pretraining = configs/paper/xlstm-1-0_206M.yaml (432 tasks; the same run as the backbones
        # experiment's xlstm[1:0] arm of that seed), fine-tuning 100K micro-steps = 16,667 optimizer steps on the
        # 37 held-out tasks (run_params/finetune.yaml; evaluation every 25K micro-steps), 5 episodes per task
        "paper": Scale(size="206M", train_steps=16667, seeds=(0, 1, 2), eval_episodes=5, launch=Launch(
            datasets={f"data/heldout/{d}": f"{d} held-out: {what}, same source as data/{d}"
                      for d, what in PAPER_HELDOUT.items()})),
    }

    def __init__(self):
        self.data: dict[str, list[str]] = {"pretrain": [], "finetune": []}  # set by make_data / launch_data
        self.heldout: dict[str, str] = {}  # domain -> the held-out dataset (evaluated tasks and their targets)

    # ------------------------------------------------------------------ data
    def make_data(self, root: Path, scale: Scale, progress: bool) -> list[str]:
        """Scripted-expert Meta-World data: training tasks to pretrain on, a few episodes of held-out ones."""
        from lram.data.generators import metaworld
        from lram.data.storage import convert_dataset_once

        d = scale.data
        quiet = [] if progress else ["--quiet"]
        for part, tasks, episodes in (("pretrain", d["pretrain_tasks"], d["pretrain_episodes"]),
                                      ("heldout", d["heldout_tasks"], d["heldout_episodes"])):
            metaworld.main([str(root / "raw" / part), "--tasks", ",".join(tasks), "--episodes", str(episodes),
                            "--noise", "0.1", *quiet])
            convert_dataset_once(root / "raw" / part, root / part / "metaworld", "packed")
        self.data = {"pretrain": [f"data.domains=[{{name: metaworld, path: {root / 'pretrain' / 'metaworld'}}}]"],
                     "finetune": [f"data.domains=[{{name: metaworld, path: {root / 'heldout' / 'metaworld'}}}]"]}
        self.heldout = {"metaworld": str(root / "heldout" / "metaworld")}
        return []  # each stage names its own data (stages)

    def launch_data(self, scale: Scale) -> list[str]:
        """Pretraining on the recipe's six domains; fine-tuning on their held-out tasks under data/heldout/."""
        self.heldout = {d: f"data/heldout/{d}" for d in PAPER_DOMAINS}
        domains = ", ".join(f"{{name: {d}, path: {p}}}" for d, p in self.heldout.items())
        self.data = {"pretrain": [], "finetune": [f"data.domains=[{domains}]"]}
        return []

    # ------------------------------------------------------------------ arms and their stages
    def arms(self, scale: Scale) -> list[Arm]:
        return [Arm(g, s, ("model.backbone=xlstm[1:0]",)) for g in (FINETUNED, SCRATCH, ZERO_SHOT) for s in scale.seeds]

    def stage_overrides(self, scale: Scale, steps: int | None) -> list[str]:
        """A stage's step count and what scales with it (None: the recipe's)."""
        if steps is None:
            return []
        if scale.launch is not None:  # the recipe's warm-up; evaluation and checkpoints 4 times per run
            return [f"train.steps={steps}", f"train.eval_every={max(1, steps // 4)}",
                    f"train.checkpoint_every={max(1, steps // 4)}"]
        return [f"train.steps={steps}", f"optim.warmup_steps={max(1, steps // 20)}",
                f"train.checkpoint_every={max(1, steps // 4)}"]

    def pretrain_stage(self, seed: int, overrides: list[str], runs: Path, scale: Scale) -> Stage:
        """The seed's pretraining (shared by its three arms)."""
        run = runs / f"pretrain-seed{seed}"
        shared = [o for o in overrides if not o.startswith("logging.run_dir=")]
        steps = scale.data.get("pretrain_steps") if scale.launch is None else None
        return Stage(run.name, (*shared, *self.data["pretrain"], *self.stage_overrides(scale, steps),
                                f"logging.run_dir={run}"), run)

    def stages(self, arm: Arm, overrides: list[str], run: Path, scale: Scale) -> list[Stage]:
        pretrain = self.pretrain_stage(arm.seed, overrides, run.parent, scale)
        if arm.group == ZERO_SHOT:
            return [pretrain]
        tuned = (*overrides, *self.data["finetune"],
                 *(self.stage_overrides(scale, scale.train_steps) if scale.launch is not None else ()))
        if arm.group == SCRATCH:
            return [Stage(arm.name, tuned, run)]
        return [pretrain, Stage(arm.name, (*tuned, f"train.init_from={pretrain.run}"), run)]

    # ------------------------------------------------------------------ evaluation: the held-out tasks
    def evaluate(self, arm: Arm, run: Path, scale: Scale, progress: bool) -> dict:
        """Every held-out task with an environment, conditioned on the best return in its held-out data."""
        from lram.data.storage import open_dataset
        from lram.evaluation import ENV_BUILDERS
        from lram.evaluation.evaluate import assemble_report, evaluate_checkpoint

        source = run.parent / f"pretrain-seed{arm.seed}" if arm.group == ZERO_SHOT else run
        rows: dict[str, dict] = {}
        last = None
        for domain, path in self.heldout.items():
            if domain not in ENV_BUILDERS:
                continue
            for task, data in sorted(open_dataset(path, progress=False).items()):
                last = evaluate_checkpoint(source, tasks=[f"{domain}/{task}"], target_return=float(np.max(data.returns)),
                                           episodes=scale.eval_episodes, random_baseline=True,
                                           max_steps=scale.eval_max_steps, progress=progress)
                rows.setdefault(domain, {})[task] = last["domains"][domain]["tasks"][task]
        if last is None:
            raise ValueError(f"finetune: no held-out task with an environment in {sorted(self.heldout)}")
        return assemble_report(last["checkpoint"], last["step"], scale.eval_episodes, last["seed"],
                               {d: (False, r) for d, r in rows.items()})

    def summarise(self, results: dict, reports: dict[str, dict], scale: Scale) -> None:
        """Per group and held-out task: success rate and return, means over seeds."""
        per: dict[str, dict[str, dict]] = {}
        for arm_name in results["arms"]:
            group = next(g for g in (FINETUNED, SCRATCH, ZERO_SHOT) if arm_name.startswith(g + "-seed"))
            for d, dom in reports[arm_name]["domains"].items():
                for t, row in dom["tasks"].items():
                    cell = per.setdefault(group, {}).setdefault(f"{d}/{t}", {"success": [], "return": []})
                    if row.get("success_rate") is not None:
                        cell["success"].append(row["success_rate"])
                    cell["return"].append(row["return_mean"])
        results["heldout"] = {g: {t: {"success_rate": float(np.mean(c["success"])) if c["success"] else None,
                                      "return_mean": float(np.mean(c["return"])), "seeds": len(c["return"])}
                                  for t, c in tasks.items()} for g, tasks in per.items()}

    def extra_table(self, results: dict) -> str:
        held = results.get("heldout", {})
        tasks = sorted({t for g in held.values() for t in g})
        if not tasks:
            return ""
        lines = ["Held-out tasks, success rate (mean return), means over seeds:", "",
                 "| arm | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        for g, rows in held.items():
            cells = [(f"{rows[t]['success_rate']:.2f}" if rows[t]["success_rate"] is not None else "-")
                     + f" ({rows[t]['return_mean']:.0f})" if t in rows else "-" for t in tasks]
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def verdict(self, results: dict) -> str:
        """Agrees when the fine-tuned IQM's CI lies above the scratch IQM (and, with several domains, fine-tuning
        leads in most of them); disagrees when its CI lies below; else inconclusive."""
        groups = results["groups"]
        if "iqm" not in groups.get(FINETUNED, {}) or "iqm" not in groups.get(SCRATCH, {}):
            return "not measured"
        ft, sc = groups[FINETUNED], groups[SCRATCH]
        domains = [d for d in ft["domains"] if d in sc["domains"]]
        ahead = sum(ft["domains"][d] > sc["domains"][d] for d in domains)
        fig = (f"fine-tuned IQM {ft['iqm']:.3f} [{ft['iqm_ci'][0]:.3f}, {ft['iqm_ci'][1]:.3f}] vs scratch "
               f"{sc['iqm']:.3f} [{sc['iqm_ci'][0]:.3f}, {sc['iqm_ci'][1]:.3f}]; ahead in {ahead} of {len(domains)} "
               "domain(s)")
        if "iqm" in groups.get(ZERO_SHOT, {}):
            fig += f"; zero-shot {groups[ZERO_SHOT]['iqm']:.3f}"
        if results["scale"] == "smoke":
            return f"not a result (smoke scale: a few steps); {fig}"
        if ft["iqm_ci"][0] > sc["iqm"] and 2 * ahead > len(domains):
            return f"agrees: {fig}"
        if ft["iqm_ci"][1] < sc["iqm"]:
            return f"disagrees: {fig}"
        return f"inconclusive (the CIs overlap): {fig}"
