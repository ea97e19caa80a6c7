"""The paper's experiments as rerunnable scripts (``lram experiment NAME --scale smoke|cpu|paper``).

Each experiment makes its data, trains every arm, evaluates online and writes ``results/NAME/`` (see
:mod:`lram.experiments.core`); ``--scale paper`` writes the paper's runs as configs and a torchrun script instead.
The experiments are registered in ``EXPERIMENTS``.
"""

from __future__ import annotations

from lram.experiments.actions_in_context import ActionsInContext
from lram.experiments.backbones import Backbones
from lram.experiments.context_length import ContextLength
from lram.experiments.core import Arm, Experiment, Scale, run_experiment
from lram.experiments.extrapolation import Extrapolation
from lram.experiments.finetune import Finetune
from lram.experiments.icl import ICLDarkRoom
from lram.experiments.latency import Latency
from lram.experiments.slstm_ratio import SLSTMRatio

EXPERIMENTS: dict[str, type[Experiment]] = {Backbones.name: Backbones}
EXPERIMENTS[Finetune.name] = Finetune
EXPERIMENTS[Latency.name] = Latency
EXPERIMENTS[ICLDarkRoom.name] = ICLDarkRoom
EXPERIMENTS[SLSTMRatio.name] = SLSTMRatio
EXPERIMENTS[Extrapolation.name] = Extrapolation
EXPERIMENTS[ActionsInContext.name] = ActionsInContext
EXPERIMENTS[ContextLength.name] = ContextLength


def main(argv=None) -> int:
    """``lram experiment NAME --scale smoke|cpu|paper [--out results] [--collect]`` or ``lram experiment report``."""
    import argparse
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return _report(argv[1:])
    p = argparse.ArgumentParser(prog="lram experiment", description="Run one of the paper's experiments (resumable); "
                                "`lram experiment report` writes docs/results.md from results/.")
    p.add_argument("name", choices=sorted(EXPERIMENTS))
    p.add_argument("--scale", default="smoke", help="smoke (seconds), cpu (under an hour on 2 cores), paper (the "
                   "paper's recipe for GPU nodes: writes every run's config and a torchrun launch script, trains nothing)")
    p.add_argument("--out", default="results", help="results folder (default: results/)")
    p.add_argument("--collect", action="store_true", help="paper scale: evaluate the runs its launch script trained "
                   "and aggregate them (the script's last step)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    exp = EXPERIMENTS[a.name]()
    try:
        results = run_experiment(exp, a.scale, a.out, progress=not a.quiet, collect=a.collect)
    except (ValueError, FileNotFoundError, ImportError) as e:
        p.exit(2, f"lram experiment: error: {e}\n")
    if "launch" in results:  # a launch scale: nothing was run here
        print(f"wrote {len(results['stages'])} training config(s) under {a.out}/{a.name}/configs/, {results['launch']} "
              f"and plan.json; nothing was trained.")
        if results["datasets"]:
            print("datasets the script needs (relative to this directory):")
            for path, what in results["datasets"].items():
                print(f"  {path}  {what}")
        print(f"run: bash {results['launch']}   (its last step: {results['collect']})")
        return 0
    from lram.experiments.core import format_table

    print(format_table(results, exp))
    print(f"wrote {a.out}/{a.name}/ (results.json, table.md, {a.name}.png)")
    return 0


def _report(argv) -> int:
    import argparse

    from lram.experiments.report import write_results_doc

    p = argparse.ArgumentParser(prog="lram experiment report", description="docs/results.md from results/*/results.json.")
    p.add_argument("--results", default="results")
    p.add_argument("--out", default="docs/results.md")
    a = p.parse_args(argv)
    print(f"wrote {write_results_doc(a.results, a.out)}")
    return 0


__all__ = ["EXPERIMENTS", "Arm", "Experiment", "Scale", "main", "run_experiment"]
