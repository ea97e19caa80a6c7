"""The larger CPU recipe (configs/cpu_mt.yaml) end to end: data, training, scores.

Makes the data (Meta-World MT10 scripted experts, three DMControl tasks recorded from SAC experts trained
here, Dark-Room sweep histories), converts it to the packed layout, trains ``configs/cpu_mt.yaml`` and
evaluates the checkpoint online against a random baseline (Meta-World: 10 episodes per task; DMControl: 5;
Dark-Room: every training goal over 5 consecutive episodes, and the 20 held-out goals).  Every stage
resumes.  Writes ``OUT/scores.json``, ``OUT/heldout.json``, plots and ``OUT/RESULTS.md``.

    python benchmarks/cpu_mt.py --out runs/cpu-mt          # ~1.5 h on 2 cores (data ~20 min, training ~1 h)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DMC_TASKS = "point_mass-easy,reacher-easy,ball_in_cup-catch"  # all 2-d actions (one action size per domain)
ROOT = Path(__file__).resolve().parents[1]


def make_data(data: Path, sac_timesteps: int, quick: bool = False) -> None:
    """The recipe's data (``quick``: a few episodes of everything, to smoke-test the pipeline)."""
    from lram.data.generators import darkroom, dmcontrol, metaworld
    from lram.data.storage import convert_dataset_once
    from lram.envs.darkroom import goal_split

    metaworld.main([str(data / "mt10"), "--tasks", "mt10", "--episodes", "2" if quick else "100", "--noise", "0.1",
                    "--quiet"])
    dmcontrol.main([str(data / "dmc"), "--tasks", DMC_TASKS, "--algo", "sac", "--timesteps", str(sac_timesteps),
                    "--episodes", "1" if quick else "20", *(["--max-steps", "100"] if quick else []), "--quiet"])
    goals = ";".join(f"{x},{y}" for x, y in goal_split("train")[: 3 if quick else None])
    darkroom.main([str(data / "darkroom"), "--goals", goals, "--episodes-per-goal", "3" if quick else "10",
                   "--algo", "sweep", "--noise", "0.1", "--quiet"])
    for name in ("mt10", "dmc", "darkroom"):
        convert_dataset_once(data / name, data / "packed" / name, "packed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/cpu-mt"))
    p.add_argument("--sac-timesteps", type=int, default=12000,
                   help="SAC training steps per DMControl task (SAC runs at ~70 steps/s on one core here)")
    p.add_argument("--quick", action="store_true", help="a smoke test: minutes, meaningless scores")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=3000")
    a = p.parse_args()
    from lram.envs.darkroom import goal_split
    from lram.evaluation.evaluate import evaluate_checkpoint, format_report, merge_reports, plot_report
    from lram.training.config import load_config
    from lram.training.trainer import train
    from lram.utils.io import atomic_path, write_json_atomic

    data = a.out / "data"
    times = {}
    t = time.perf_counter()
    make_data(data, 300 if a.quick else a.sac_timesteps, a.quick)
    times["data"] = time.perf_counter() - t
    run = a.out / "run"
    cfg = load_config(ROOT / "configs" / "cpu_mt.yaml", [
        f"data.domains=[{{name: metaworld, path: {data / 'packed' / 'mt10'}}}, "
        f"{{name: dmcontrol, path: {data / 'packed' / 'dmc'}}}, "
        f"{{name: darkroom, path: {data / 'packed' / 'darkroom'}, return_condition: false}}]", f"logging.run_dir={run}",
        *(["train.steps=10", "train.checkpoint_every=5"] if a.quick else []), *a.overrides])
    t = time.perf_counter()
    if not (run / "done").exists():
        train(cfg, resume=(run / "checkpoints").exists())
        (run / "done").write_text("complete\n")
    times["training"] = time.perf_counter() - t
    t = time.perf_counter()
    reports = {}
    for domain, episodes, envs in (("metaworld", 10, 5), ("dmcontrol", 5, 5), ("darkroom", 5, 1)):
        if a.quick:
            episodes = 1
        reports[domain] = evaluate_checkpoint(run, domains=[domain], episodes=episodes, num_envs=envs,
                                              random_baseline=True, progress=False)
    scores = merge_reports(list(reports.values()))
    write_json_atomic(a.out / "scores.json", scores)
    held = [f"darkroom/darkroom_{x}_{y}" for x, y in goal_split("test")[: 2 if a.quick else None]]
    heldout = evaluate_checkpoint(run, tasks=held, episodes=2 if a.quick else 5, random_baseline=True, out=a.out / "heldout.json",
                                  progress=False)
    times["evaluation"] = time.perf_counter() - t
    for report, name in ((scores, "scores.png"), (heldout, "heldout.png")):
        try:
            plot_report(report, a.out / name)
        except ImportError:
            pass
    mw = scores["domains"]["metaworld"]
    lines = ["# cpu_mt recipe (configs/cpu_mt.yaml)", "",
             "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()), "",
             f"Meta-World MT10 mean success {mw['success_rate']:.2f} (target >= 0.8), normalised {mw['normalised_score']:.2f}; "
             f"DMControl normalised {scores['domains']['dmcontrol']['normalised_score']:.2f}; Dark-Room training goals "
             f"{scores['domains']['darkroom']['normalised_score']:.2f}, held-out goals "
             f"{heldout['domains']['darkroom']['normalised_score']:.2f} (in context, 5 consecutive episodes).", "",
             "```", format_report(scores), "```", "", "Held-out Dark-Room goals:", "", "```", format_report(heldout), "```"]
    with atomic_path(a.out / "RESULTS.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
