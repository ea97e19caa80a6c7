"""The ``lram`` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def _bench(argv: Sequence[str]) -> int:
    from lram.bench.latency import main

    return main(argv)


def _data(argv: Sequence[str]) -> int:
    from lram.data.cli import main

    return main(argv)


def _models(argv: Sequence[str]) -> int:
    """Print the size presets and their parameter counts next to the paper's."""
    import argparse

    from lram.models.presets import SIZE_PRESETS, VARIANTS
    from lram.models.report import parameter_table

    p = argparse.ArgumentParser(prog="lram models", description=_models.__doc__)
    p.add_argument("--sizes", default=",".join(SIZE_PRESETS), help="comma-separated size presets")
    p.add_argument("--backbones", default=",".join(VARIANTS))
    args = p.parse_args(argv)
    print(parameter_table(args.sizes.split(","), args.backbones.split(",")))
    return 0


def _demo(argv: Sequence[str]) -> int:
    from lram.demo import main

    return main(argv)


def _eval(argv: Sequence[str]) -> int:
    from lram.evaluation.evaluate import main

    return main(argv)


def _experiment(argv: Sequence[str]) -> int:
    from lram.experiments import main

    return main(argv)


def _export(argv: Sequence[str]) -> int:
    from lram.serving.onnx_export import main

    return main(argv)


def _plot(argv: Sequence[str]) -> int:
    from lram.evaluation.plots import main

    return main(argv)


def _serve(argv: Sequence[str]) -> int:
    from lram.serving.server import main

    return main(argv)


def _train(argv: Sequence[str]) -> int:
    from lram.training.cli import main

    return main(argv)


COMMANDS = {
    "demo": (_demo, "the main job on a CPU in minutes: data, training, scores, latency (writes demo/REPORT.md)"),
    "train": (_train, "train a policy from a YAML config (torchrun for DDP), or --resume a run"),
    "eval": (_eval, "evaluate a checkpoint online in its tasks' environments (returns, success, normalised scores)"),
    "plot": (_plot, "plot a run's learning curves (RUN/metrics.jsonl) or an eval report again (summary + task pages)"),
    "experiment": (_experiment, "run one of the paper's experiments (arms trained, evaluated, IQM with CIs; resumable)"),
    "export": (_export, "export a checkpoint's recurrent step to ONNX (dynamic batch, explicit state)"),
    "serve": (_serve, "serve a checkpoint over gRPC: sessions with their own recurrent state, one Act per step"),
    "bench": (_bench, "latency per environment step vs context length and the memory-bound floor"),
    "models": (_models, "size presets and parameter counts beside the paper's"),
    "data": (_data, "trajectory data: info, check, convert (paper and packed layouts), generate"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lram <command> [options]\n\ncommands:")
        for name, (_, helptext) in COMMANDS.items():
            print(f"  {name:<10}{helptext}")
        return 0
    if argv[0] in ("-V", "--version"):
        from lram import __version__

        print(__version__)
        return 0
    cmd = argv[0]
    if cmd not in COMMANDS:
        print(f"lram: unknown command {cmd!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[cmd][0](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
