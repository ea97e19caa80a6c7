"""``lram data ...``: inspect, validate and convert stored trajectory data.

    lram data info PATH                       per task: layout, episodes, transitions, returns, obs, actions
    lram data check PATH                      validate every episode; lists every bad file; exit 1 if any
    lram data convert SRC DST --layout packed|paper [--format hdf5|npz] [--no-compress]
    lram data generate DOMAIN ...             run lram.data.generators.DOMAIN.main (e.g. darkroom, metaworld)
    lram data import FORMAT SRC DST [--layout paper|packed] ...
                                              import robomimic/mimicgen, composuite, dqn-replay or minari data

PATH / SRC may be one task folder or a root holding task folders (found recursively; layouts may mix).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from lram.data.episode import DataError


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def info_rows(path) -> list[dict]:
    """One summary dict per task under ``path`` (what ``lram data info`` prints)."""
    from lram.data.storage import open_dataset

    rows = []
    for name, td in open_dataset(path).items():
        row = {"task": name, "layout": td.layout, "episodes": td.num_episodes, "transitions": td.num_transitions}
        if td.num_episodes:
            row.update(return_min=float(td.returns.min()), return_mean=float(td.returns.mean()),
                       return_max=float(td.returns.max()), obs_shape=list(td.obs_shape), obs_dtype=str(td.obs_dtype),
                       actions="discrete" if td.discrete else f"continuous [{td.action_dim}]")
        rows.append(row)
    return rows


def _info(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="lram data info", description="Summarise every task under PATH.")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = p.parse_args(argv)
    rows = info_rows(args.path)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    head = ["task", "layout", "episodes", "transitions", "return min / mean / max", "observations", "actions"]
    table = [head]
    for r in rows:
        if r["episodes"]:
            ret = f"{_fmt(r['return_min'])} / {_fmt(r['return_mean'])} / {_fmt(r['return_max'])}"
            obs = f"{r['obs_shape']} {r['obs_dtype']}"
        else:
            ret = obs = "-"
        table.append([r["task"], r["layout"], str(r["episodes"]), str(r["transitions"]), ret, obs, r.get("actions", "-")])
    widths = [max(len(row[c]) for row in table) for c in range(len(head))]
    right = {2, 3}
    for row in table:
        print("  ".join(cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))).rstrip())
    total_e = sum(r["episodes"] for r in rows)
    total_t = sum(r["transitions"] for r in rows)
    print(f"{len(rows)} tasks, {total_e} episodes, {total_t} transitions")
    return 0


def _check(argv: Sequence[str]) -> int:
    from lram.data.integrity import check_tree

    p = argparse.ArgumentParser(prog="lram data check", description="Validate every episode under PATH.")
    p.add_argument("path")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    problems, counts = check_tree(args.path, progress=not args.no_progress)
    n_err = n_warn = 0
    bad_files = set()
    for probs in problems.values():
        for pr in probs:
            if pr.severity == "error":
                n_err += 1
                bad_files.add((pr.path, pr.episode))
                print(f"BAD   {pr}")
            else:
                n_warn += 1
                print(f"WARN  {pr}")
    print(f"checked {len(counts)} tasks, {sum(counts.values())} episodes: {len(bad_files)} bad files/episodes "
          f"({n_err} problems), {n_warn} warnings")
    return 1 if n_err else 0


def _convert(argv: Sequence[str]) -> int:
    from lram.data.storage import convert_dataset

    p = argparse.ArgumentParser(prog="lram data convert", description="Copy a task or a tree of tasks into another layout "
                                "(resumable: episodes already in DST are skipped).")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--layout", required=True, choices=["packed", "paper"])
    p.add_argument("--format", default="hdf5", choices=["hdf5", "npz"], help="paper layout: episode file format")
    p.add_argument("--no-compress", action="store_true", help="paper layout: write uncompressed files")
    p.add_argument("--compression-level", type=int, default=1, help="paper layout, hdf5: gzip level (paper: 1)")
    p.add_argument("--commit-every", type=int, default=100, help="rewrite the index every N episodes")
    args = p.parse_args(argv)
    opts = {"commit_every": args.commit_every}
    if args.layout == "paper":
        opts.update(fmt=args.format, compress=not args.no_compress, compression_level=args.compression_level)
    out = convert_dataset(args.src, args.dst, args.layout, **opts)
    n = sum(td.num_episodes for td in out.values())
    t = sum(td.num_transitions for td in out.values())
    print(f"wrote {len(out)} tasks ({n} episodes, {t} transitions) to {args.dst} in the {args.layout} layout")
    return 0


# domains whose generator module has another name (a module named procgen.py would shadow the procgen package)
GENERATOR_MODULES = {"procgen": "procgen_gen"}


def _generate(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lram data generate DOMAIN [options]   (DOMAIN: a module of lram.data.generators, e.g. darkroom)")
        return 0
    domain = argv[0]
    try:
        module = importlib.import_module(f"lram.data.generators.{GENERATOR_MODULES.get(domain, domain)}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("lram.data.generators"):
            print(f"lram data generate: unknown domain {domain!r} (no module lram.data.generators.{domain})", file=sys.stderr)
            return 2
        raise
    return int(module.main(list(argv[1:])) or 0)


def _import(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="lram data import", description="Import a published data set into lram task folders "
                                "DST/<task> (resumable: episodes already written are skipped).")
    p.add_argument("format", choices=["robomimic", "mimicgen", "composuite", "dqn-replay", "minari"])
    p.add_argument("src", help="robomimic/composuite: an HDF5 file or a folder of them; dqn-replay: a folder holding "
                   "<Game>/<run>/replay_logs/; minari: the dataset folder (holding data/metadata.json)")
    p.add_argument("dst", help="root folder: tasks are written to DST/<task>")
    p.add_argument("--layout", default="paper", choices=["paper", "packed"])
    p.add_argument("--format", dest="fmt", default="hdf5", choices=["hdf5", "npz"], help="paper layout: episode file format")
    p.add_argument("--no-compress", action="store_true", help="paper layout: write uncompressed files")
    p.add_argument("--compression-level", type=int, default=1, help="paper layout, hdf5: gzip level (paper: 1)")
    p.add_argument("--task", help="task folder name (a single source file / data set only)")
    p.add_argument("--low-dim-keys", help="robomimic: comma list of obs keys (default: every [T, d] key)")
    p.add_argument("--sparse-reward", action="store_true", help="robomimic: reward 1 at the last step of a successful demo")
    p.add_argument("--game", help="dqn-replay: game name (default: the folder above the run folder)")
    p.add_argument("--minimal-actions", help="dqn-replay: the game's minimal action set as full-set ids, a JSON or comma "
                   "list (default: from ale-py's bundled ROM)")
    p.add_argument("--checkpoints", help="dqn-replay: comma list of checkpoint numbers k to import (default: all)")
    p.add_argument("--clip-rewards", action="store_true", help="dqn-replay: clip rewards to [-1, 1] (DQN-Replay's are already)")
    p.add_argument("--clip-actions", action="store_true", help="minari: clip Box actions to [-1, 1]")
    p.add_argument("--dataset-id", help="minari: dataset id; SRC is then the datasets root (MINARI_DATASETS_PATH)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from lram.data import importers

    opts: dict = {"layout": args.layout, "progress": not args.no_progress}
    if args.layout == "paper":
        opts.update(fmt=args.fmt, compress=not args.no_compress, compression_level=args.compression_level)
    if args.format in ("robomimic", "mimicgen"):
        keys = [k.strip() for k in args.low_dim_keys.split(",") if k.strip()] if args.low_dim_keys else None
        res = importers.import_robomimic(args.src, args.dst, task=args.task, low_dim_keys=keys,
                                         sparse_reward=args.sparse_reward, **opts)
    elif args.format == "composuite":
        res = importers.import_composuite(args.src, args.dst, task=args.task, **opts)
    elif args.format == "dqn-replay":
        ckpts = [int(k) for k in args.checkpoints.split(",")] if args.checkpoints else None
        res = importers.import_dqn_replay(args.src, args.dst, game=args.game or args.task,
                                          minimal_actions=args.minimal_actions, checkpoints=ckpts,
                                          clip_rewards=args.clip_rewards, **opts)
    else:
        res = importers.import_minari(args.src, args.dst, dataset_id=args.dataset_id, task=args.task,
                                      clip_actions=args.clip_actions, **opts)
    for name, r in res.items():
        print(f"{name}: wrote {r['written']} episodes, skipped {r['skipped']} already in {r['task']}")
    return 0


COMMANDS = {
    "info": (_info, "per task: layout, episodes, transitions, return range, observation and action kinds"),
    "check": (_check, "validate every episode of a task or tree; lists every bad file; exit 1 if any"),
    "convert": (_convert, "copy tasks into the packed or the paper layout"),
    "generate": (_generate, "generate a data set (lram.data.generators.DOMAIN)"),
    "import": (_import, "import robomimic/mimicgen, composuite, dqn-replay or minari data into task folders"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lram data <command> [options]\n\ncommands:")
        for name, (_, helptext) in COMMANDS.items():
            print(f"  {name:<10}{helptext}")
        return 0
    cmd = argv[0]
    if cmd not in COMMANDS:
        print(f"lram data: unknown command {cmd!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd][0](argv[1:])
    except DataError as e:
        print(f"lram data {cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
