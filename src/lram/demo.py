"""``lram demo``: the whole road on one CPU in minutes -- data, training, scores and latency.

1. **Data** made here: Meta-World scripted-expert episodes (a few tasks, with action noise) and Dark-Room
   learning histories (one Q-learning agent per training goal, random to optimal), in the paper's layout.
2. **Training**: a tiny xLSTM policy on both domains (``configs/cpu_tiny.yaml``'s recipe), checkpointed.
3. **Scores**: online evaluation of the checkpoint in every training task with a random baseline
   (data-normalised scores), and in-context evaluation on held-out Dark-Room goals (several consecutive
   episodes on one recurrent state: does the return rise from episode to episode?).
4. **Latency**: the 16M-preset step at batch 1 (xLSTM [1:0] vs the Transformer with a KV cache) against
   the memory-bound floor, as ``lram bench`` measures it.

Everything goes under ``--out`` (default ``demo/``): ``data/``, ``run/`` (checkpoints, metrics, eval
reports and plots), ``latency.json`` and ``REPORT.md``.  Every stage resumes: a re-run keeps the data,
continues training from the last checkpoint and redoes only the measurements.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class DemoBudget:
    """How much of each stage to run (the defaults take ~4 minutes on 2 CPU cores)."""

    metaworld_tasks: tuple[str, ...] = ("reach-v3", "button-press-topdown-v3", "drawer-close-v3")
    metaworld_episodes: int = 40
    darkroom_goals: int = 80  # training goals (of 80)
    darkroom_episodes: int = 200  # episodes per learning history
    train_steps: int = 600
    eval_episodes: int = 5
    icl_goals: int = 4  # held-out Dark-Room goals
    icl_episodes: int = 8  # consecutive episodes per held-out goal
    latency_size: str = "16M"
    latency_contexts: tuple[int, ...] = (50, 1600)
    latency_repeats: int = 30

    @classmethod
    def quick(cls) -> DemoBudget:
        """A smoke-test budget (well under a minute): the same pipeline, tiny amounts."""
        return cls(metaworld_tasks=("reach-v3",), metaworld_episodes=4, darkroom_goals=3, darkroom_episodes=20,
                   train_steps=20, eval_episodes=2, icl_goals=1, icl_episodes=3, latency_size="tiny",
                   latency_contexts=(10,), latency_repeats=5)


def _stage(name: str) -> float:
    print(f"\n=== {name}", flush=True)
    return time.perf_counter()


def make_data(out: Path, budget: DemoBudget, progress: bool) -> Path:
    from lram.data.generators import darkroom, metaworld
    from lram.envs.darkroom import goal_split

    quiet = [] if progress else ["--quiet"]
    data = out / "data"
    metaworld.main([str(data / "metaworld"), "--tasks", ",".join(budget.metaworld_tasks), "--episodes",
                    str(budget.metaworld_episodes), "--noise", "0.1", *quiet])
    goals = goal_split("train")[: budget.darkroom_goals]
    darkroom.main([str(data / "darkroom"), "--goals", ";".join(f"{x},{y}" for x, y in goals), "--episodes-per-goal",
                   str(budget.darkroom_episodes), *quiet])
    return data


def train_policy(out: Path, data: Path, budget: DemoBudget) -> dict:
    from lram.training.config import load_config
    from lram.training.trainer import train

    config = Path(__file__).resolve().parents[2] / "configs" / "cpu_tiny.yaml"
    steps = budget.train_steps
    overrides = [f"data.domains=[{{name: metaworld, path: {data / 'metaworld'}}}, {{name: darkroom, path: {data / 'darkroom'}}}]",
                 f"logging.run_dir={out / 'run'}", f"train.steps={steps}", f"train.eval_every={max(steps // 2, 1)}",
                 f"train.checkpoint_every={max(steps // 4, 1)}", "logging.tensorboard=false"]
    cfg = load_config(config if config.exists() else None,
                      overrides + ([] if config.exists() else ["model.size=tiny", "data.context=20", "data.batch_size=16"]))
    return train(cfg, resume=(out / "run" / "checkpoints").exists())


def evaluate_policy(out: Path, budget: DemoBudget, progress: bool) -> tuple[dict, dict]:
    from lram.envs.darkroom import goal_split
    from lram.evaluation.evaluate import evaluate_checkpoint, plot_report

    run = out / "run"
    scores = evaluate_checkpoint(run, episodes=budget.eval_episodes, num_envs=5, random_baseline=True,
                                 out=run / "eval" / "scores.json", progress=progress)
    held = [f"darkroom/darkroom_{x}_{y}" for x, y in goal_split("test")[: budget.icl_goals]]
    icl = evaluate_checkpoint(run, tasks=held, episodes=budget.icl_episodes, num_envs=1, random_baseline=True,
                              out=run / "eval" / "darkroom_heldout.json", progress=progress)
    for report, name in ((scores, "scores.png"), (icl, "darkroom_heldout.png")):
        try:
            plot_report(report, run / "eval" / name)
        except ImportError:
            pass  # matplotlib missing: the JSON reports and REPORT.md still hold everything
    return scores, icl


def measure_latency(out: Path, budget: DemoBudget, progress: bool) -> dict:
    from lram.bench.latency import run

    return run(budget.latency_size, ("xlstm[1:0]", "transformer"), budget.latency_contexts,
               repeats=budget.latency_repeats, warmup=5, out=out / "latency.json", progress=progress)


def write_report(out: Path, budget: DemoBudget, train_metrics: dict, scores: dict, icl: dict, latency: dict,
                 seconds: dict) -> Path:
    from lram.evaluation.evaluate import format_report
    from lram.utils.io import atomic_path

    lines = ["# lram demo", "", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), ""]
    lines += ["## Training", "", "```", json.dumps({k: round(v, 4) for k, v in train_metrics.items()
                                                  if isinstance(v, (int, float))}, indent=1), "```", ""]
    lines += ["## Scores in the training tasks (data-normalised vs a random policy)", "", "```", format_report(scores),
              "```", "", "![scores](run/eval/scores.png)", ""]
    lines += ["## In-context RL on held-out Dark-Room goals", "",
              f"{budget.icl_episodes} consecutive episodes per goal on one recurrent state; return of each episode:", "",
              "| goal | " + " | ".join(f"ep {i}" for i in range(budget.icl_episodes)) + " |",
              "|---|" + "---|" * budget.icl_episodes]
    for task, r in icl["domains"].get("darkroom", {"tasks": {}})["tasks"].items():
        lines.append(f"| {task} | " + " | ".join(f"{e['total_return']:.0f}" for e in r["episodes_detail"]) + " |")
    lines += ["", "![in-context](run/eval/darkroom_heldout.png)", ""]
    lines += ["## Latency per environment step (batch 1)", "", "```"]
    from lram.bench.latency import format_table

    lines += [format_table(latency), "```", ""]
    path = out / "REPORT.md"
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lram demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: demo/)")
    p.add_argument("--train-steps", type=int, default=None, help="optimizer steps (default: 600)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of the whole pipeline")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    budget = DemoBudget.quick() if a.quick else DemoBudget()
    if a.train_steps is not None:
        budget.train_steps = a.train_steps
    progress = not a.quiet
    a.out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    t = _stage("1/4 data: Meta-World scripted experts, Dark-Room learning histories")
    data = make_data(a.out, budget, progress)
    seconds["data"] = time.perf_counter() - t
    t = _stage(f"2/4 training: tiny xLSTM, {budget.train_steps} steps")
    metrics = train_policy(a.out, data, budget)
    seconds["training"] = time.perf_counter() - t
    t = _stage("3/4 scores: training tasks, and held-out Dark-Room goals in context")
    scores, icl = evaluate_policy(a.out, budget, progress)
    seconds["evaluation"] = time.perf_counter() - t
    t = _stage(f"4/4 latency: {budget.latency_size} step, xLSTM vs Transformer")
    latency = measure_latency(a.out, budget, progress)
    seconds["latency"] = time.perf_counter() - t
    report = write_report(a.out, budget, metrics, scores, icl, latency, seconds)
    from lram.bench.latency import format_table
    from lram.evaluation.evaluate import format_report

    print(format_report(scores))
    heldout = [np.mean([e["total_return"] for e in r["episodes_detail"][-2:]]) for r in
               icl["domains"].get("darkroom", {"tasks": {}})["tasks"].values()]
    if heldout:
        print(f"held-out Dark-Room goals, mean return of the last two in-context episodes: {np.mean(heldout):.1f}")
    print(format_table(latency))
    print(f"\nwrote {report} ({sum(seconds.values()):.0f} s)")
    return 0
