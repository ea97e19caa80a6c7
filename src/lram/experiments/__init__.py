"""The paper's experiments as rerunnable scripts (``lram experiment NAME --scale smoke|cpu``).

Each experiment makes its data, trains every arm, evaluates online and writes ``results/NAME/`` (see
:mod:`lram.experiments.core`).  Registered so far: ``backbones``.
"""

from __future__ import annotations

from lram.experiments.backbones import Backbones
from lram.experiments.core import Arm, Experiment, Scale, run_experiment

EXPERIMENTS: dict[str, type[Experiment]] = {Backbones.name: Backbones}


def main(argv=None) -> int:
    """``lram experiment NAME --scale smoke|cpu [--out results]`` or ``lram experiment report``."""
    import argparse
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return _report(argv[1:])
    p = argparse.ArgumentParser(prog="lram experiment", description="Run one of the paper's experiments (resumable); "
                                "`lram experiment report` writes docs/results.md from results/.")
    p.add_argument("name", choices=sorted(EXPERIMENTS))
    p.add_argument("--scale", default="smoke", help="smoke (seconds), cpu (about an hour on 2 cores)")
    p.add_argument("--out", default="results", help="results folder (default: results/)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    exp = EXPERIMENTS[a.name]()
    try:
        results = run_experiment(exp, a.scale, a.out, progress=not a.quiet)
    except (ValueError, FileNotFoundError, ImportError) as e:
        p.exit(2, f"lram experiment: error: {e}\n")
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
