"""``lram train``: train from a YAML config with dotted overrides, or resume a run folder exactly."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="lram train",
        description="Train an LRAM policy. Overrides: KEY=VALUE with dotted keys, e.g. optim.lr=3e-4 train.steps=500. "
                    "Multi-GPU / multi-node: torchrun --nproc_per_node=N -m lram train ...")
    p.add_argument("--config", help="YAML config file (configs/...)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides")
    args = p.parse_args(argv)
    from lram.training.config import ConfigError, load_config
    from lram.training.trainer import resume_config, train

    try:
        if args.resume:
            if args.config:
                p.error("--resume takes the config of the run; pass overrides instead of --config")
            cfg = resume_config(args.resume, args.overrides)
            cfg.logging.run_dir = args.resume
        else:
            cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        p.error(str(e))
    if not cfg.data.domains:
        p.error("data.domains: no training domains configured (see configs/*.yaml)")
    result = train(cfg, resume=bool(args.resume))
    print({k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()})
    return 0
