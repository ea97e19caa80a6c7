"""What makes the demo's policy act well: training arms on the demo's data, each scored in its environments.

Every arm is a training run (the demo's recipe, ``configs/cpu_tiny.yaml``, with overrides) on data made by
``lram demo``'s first stage; each run is then evaluated online in every Meta-World task (success rate,
normalised score against a random policy) and the Dark-Room training goals, with both ways of decoding
continuous actions (the arg-max bin, and the mean of the predicted bin distribution).  Arms whose run is
complete are kept, so an interrupted study resumes.  Results: ``OUT/study.json`` and a Markdown table
``OUT/study.md``.

    python benchmarks/policy_study.py --out /tmp/study --arms baseline,mw-only-600,mw-only-3000

The arms and what they vary are listed in ``ARMS`` below; docs/training.md discusses the measured table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = "{out}/demo/data"
SOURCES = {  # domain data sets an arm can train on (made by this script if missing)
    "mw": ("metaworld", "{out}/demo/data/metaworld", None),
    "mw-clean": ("metaworld", "{out}/mw_n0", ["--episodes", "40", "--noise", "0"]),
    "mw-100": ("metaworld", "{out}/mw_e100", ["--episodes", "100", "--noise", "0.1"]),
    "dr": ("darkroom", "{out}/demo/data/darkroom", None),
    "dr-sweep": ("darkroom", "{out}/dr_sweep", ["--algo", "sweep", "--noise", "0.1", "--episodes-per-goal", "10"]),
}
MW_TASKS = "reach-v3,button-press-topdown-v3,drawer-close-v3"

# name -> (data sources, overrides of configs/cpu_tiny.yaml)
# the study's base recipe (configs/cpu_tiny.yaml as it was when the study ran; the demo's recipe has moved on
# since: 30-step windows, 3,600 weighted steps), so that the arms stay comparable with the measured table
STUDY_BASE = ["data.context=20", "data.domain_order=round_robin", "data.domain_weights=null", "optim.accumulation=0"]
ARMS: dict[str, tuple[list[str], list[str]]] = {
    "baseline": (["mw", "dr"], ["train.steps=600"]),
    "mw-600": (["mw"], ["train.steps=600"]),
    "mw-1500": (["mw"], ["train.steps=1500"]),
    "mw-3000": (["mw"], ["train.steps=3000"]),
    "mw-1500-sigma4": (["mw"], ["train.steps=1500", "model.label_sigma_bins=4"]),
    "mw-1500-b64": (["mw"], ["train.steps=1500", "data.batch_size=64"]),
    "mw-1500-lr3e-4": (["mw"], ["train.steps=1500", "optim.lr=3e-4"]),
    "mw-1500-lr3e-3": (["mw"], ["train.steps=1500", "optim.lr=3e-3"]),
    "mw-750-b32": (["mw"], ["train.steps=750", "data.batch_size=32"]),  # the samples of mw-1500 in half the steps
    "mw-1500-c5": (["mw"], ["train.steps=1500", "data.context=5"]),
    "mw-1500-c50": (["mw"], ["train.steps=1500", "data.context=50"]),
    "mw-1500-nortg": (["mw"], ["train.steps=1500", "model.rtg_condition=false"]),
    "mwclean-1500": (["mw-clean"], ["train.steps=1500"]),
    "mw100-1500": (["mw-100"], ["train.steps=1500"]),
    "mw100-3000": (["mw-100"], ["train.steps=3000"]),
    "dr-1500": (["dr"], ["train.steps=1500"]),
    "drsweep-1000-c30": (["dr-sweep"], ["train.steps=1000", "data.context=30"]),
    "both-sweep-2000": (["mw-100", "dr-sweep"], ["train.steps=2000", "data.context=30"]),
}
# the arms above ran before lram normalised states by default (raw states, as the paper); the same arms
# with standardised states are named "<arm>-n"
RAW = [k for k in ARMS]
for _k in RAW:
    ARMS[_k] = (ARMS[_k][0], ["data.normalize_states=false", *ARMS[_k][1]])
    ARMS[_k + "-n"] = (ARMS[_k][0], [o for o in ARMS[_k][1] if o != "data.normalize_states=false"])


def source_path(out: Path, key: str) -> str:
    domain, template, args = SOURCES[key]
    path = Path(template.format(out=out))
    if not path.exists() and args is not None:
        from lram.data.generators import darkroom, metaworld
        from lram.envs.darkroom import goal_split

        if domain == "metaworld":
            metaworld.main([str(path), "--tasks", MW_TASKS, *args, "--quiet"])
        else:
            goals = ";".join(f"{x},{y}" for x, y in goal_split("train"))
            darkroom.main([str(path), "--goals", goals, *args, "--quiet"])
    extra = ", return_condition: false" if key == "dr-sweep" else ""
    return f"{{name: {domain}, path: {path}{extra}}}"


def train_arm(out: Path, name: str) -> Path:
    from lram.training.config import load_config
    from lram.training.trainer import train

    sources, overrides = ARMS[name]
    run = out / "runs" / name
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "cpu_tiny.yaml", [
        "data.domains=[" + ", ".join(source_path(out, k) for k in sources) + "]", f"logging.run_dir={run}",
        "logging.tensorboard=false", "train.eval_every=0", "train.checkpoint_every=500", *STUDY_BASE, *overrides])
    if not (run / "done").exists():
        t = time.perf_counter()
        train(cfg, resume=(run / "checkpoints").exists())
        (run / "done").write_text(f"{time.perf_counter() - t:.0f}\n")
    return run


def evaluate_arm(run: Path, episodes: int, decodes: list[str]) -> dict:
    from lram.evaluation.evaluate import evaluate_one
    from lram.models import LRAMPolicy

    policy = LRAMPolicy.from_pretrained(run)
    out = {}
    for decode in decodes:
        policy.config.continuous_decode = decode
        rows = {}
        for spec in policy.domains.values():
            if spec.discrete and decode != decodes[0]:
                continue  # discrete: decoding of continuous actions does not apply
            names = spec.task_names
            tasks = names if not spec.in_context else names[:: max(1, len(names) // 10)]
            for task in tasks:  # in-context domains: consecutive episodes on one recurrent state
                rows[f"{spec.name}/{task}"] = evaluate_one(
                    policy, spec, task, episodes=5 if spec.in_context else episodes,
                    num_envs=1 if spec.in_context else 5, seed=1000, max_steps=None, random_baseline=True)
        out[decode] = rows
    return out


def summary(rows: dict) -> dict:
    by_domain: dict[str, list] = {}
    for key, r in rows.items():
        by_domain.setdefault(key.split("/")[0], []).append(r)
    return {d: {"normalised": float(np.mean([r["normalised_score"] for r in rs])),
                "success": (float(np.mean([r["success_rate"] for r in rs]))
                            if all(r["success_rate"] is not None for r in rs) else None),
                "per_task_success": [r["success_rate"] for r in rs]} for d, rs in by_domain.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("study"))
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--decodes", default="argmax,mean")
    a = p.parse_args()
    if not (a.out / "demo" / "data").exists():
        from lram.demo import DemoBudget, make_data

        make_data(a.out / "demo", DemoBudget(), progress=False)
    path = a.out / "study.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in [x for x in a.arms.split(",") if x]:
        if name not in ARMS:
            p.error(f"--arms: unknown arm {name!r}; choose from {','.join(ARMS)}")
        run = train_arm(a.out, name)
        if name not in results:
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            valid = {k: v for m in metrics for k, v in m.items() if k.startswith("valid/")}
            evals = evaluate_arm(run, a.episodes, a.decodes.split(","))
            results[name] = {"train_seconds": float((run / "done").read_text()), "valid": valid,
                             "scores": {d: summary(rows) for d, rows in evals.items()}, "rows": evals}
            path.write_text(json.dumps(results, indent=1))
        s = results[name]["scores"]
        print(name, {d: {k: v for k, v in x.items() if k != "per_task_success"} for d, x in s.items()}, flush=True)
    lines = ["| arm | train s | decode | Meta-World success (per task) | Meta-World normalised | Dark-Room normalised |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        dr = r["scores"][a.decodes.split(",")[0]].get("darkroom", {}).get("normalised")
        for decode, s in r["scores"].items():
            mw = s.get("metaworld")
            mw_cells = (f"{mw['success']:.2f} ({', '.join(f'{x:.1f}' for x in mw['per_task_success'])}) | "
                        f"{mw['normalised']:.2f}") if mw else "- | -"
            dr_cell = f"{dr:.2f}" if dr is not None else "-"
            lines.append(f"| {name} | {r['train_seconds']:.0f} | {decode} | {mw_cells} | {dr_cell} |")
    (a.out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
