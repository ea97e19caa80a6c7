"""Evaluate a checkpoint online in every task its domain registry lists (``lram eval RUN``).

Per task: ``episodes`` episodes (spec 5.1: 5), returns, lengths and success rates; optionally a
random-policy baseline in the same environments (same reset seeds), and then a **data-normalised score**
``(R - R_random) / (R_target - R_random)`` where ``R_target`` is the target return the policy was
conditioned on (by default the best return of the task in the training data).  This follows the paper's
D4RL-style convention (spec 5.2) with references measured here instead of the paper's tables, which are
not available (and Atari's human-normalised score needs DQN-Zoo's human scores, not shipped).
Aggregation: the mean over a domain's tasks, then the mean over domains.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lram.evaluation.envs import ENV_BUILDERS, make_eval_env
from lram.evaluation.rollout import EpisodeResult, evaluate_task, summarize
from lram.models.domain import DomainSpec
from lram.models.persistence import load_pretrained, resolve_checkpoint
from lram.utils.io import write_json_atomic


def random_policy_returns(domain: str, task: str, episodes: int, seed: int = 0,
                          max_steps: int | None = None) -> list[EpisodeResult]:
    """Episodes of a uniform random policy (action space samples seeded per episode), same reset seeds."""
    env = make_eval_env(domain, task, seed)
    out = []
    try:
        for i in range(episodes):
            env.reset(seed=seed + i)
            env.action_space.seed(seed + i)
            ret, t, success, done = 0.0, 0, None, False
            while not done:
                _, r, terminated, truncated, info = env.step(env.action_space.sample())
                ret += float(r)
                t += 1
                if "success" in info:
                    success = bool(success) or bool(info["success"])
                done = terminated or truncated or (max_steps is not None and t >= max_steps)
            out.append(EpisodeResult(i, ret, t, success))
    finally:
        env.close()
    return out


def normalised_score(value: float, low: float, high: float) -> float | None:
    """``(value - low) / (high - low)``; None when the references coincide (also both ~0, e.g. a failed expert)."""
    return None if abs(high - low) <= 1e-6 * max(1.0, abs(high), abs(low)) else (value - low) / (high - low)


def _check_domain(registry: dict[str, DomainSpec], domain: str, where: str) -> None:
    """ValueError (prefixed by ``where``) unless ``domain`` is in the checkpoint and has an environment."""
    if domain not in registry:
        raise ValueError(f"{where}: {domain!r} is not in the checkpoint (it has {', '.join(registry)})")
    if domain not in ENV_BUILDERS:
        raise ValueError(f"{where}: no evaluation environment for {domain!r}; known: {', '.join(ENV_BUILDERS)}")


def _task_plan(registry: dict, domains: Sequence[str], tasks: Sequence[str] | None) -> dict[str, list[str]]:
    """Tasks to evaluate per domain.  ``tasks`` entries are ``task`` (a task of the checkpoint's data) or
    ``domain/task`` (any task of that domain, e.g. a held-out one); none: every task of ``domains``."""
    if not tasks:
        return {d: registry[d].task_names for d in domains}
    plan: dict[str, list[str]] = {}
    for item in tasks:
        if "/" in item:
            d, task = item.split("/", 1)
            _check_domain(registry, d, f"tasks: {item!r}")
        else:
            owners = [d for d in domains if item in registry[d].tasks]
            if not owners:
                raise ValueError(f"tasks: {item!r} is not a task of the checkpoint's data in {', '.join(domains)}; "
                                 "write domain/task for other tasks of a domain (e.g. held-out ones)")
            d, task = owners[0], item
        plan.setdefault(d, [])
        if task not in plan[d]:
            plan[d].append(task)
    return plan


def evaluate_one(policy, domain: DomainSpec, task: str, target: float | None = None, *, episodes: int, num_envs: int,
                 seed: int, max_steps: int | None, random_baseline: bool, progress: bool = False,
                 in_context_envs: int = 1, window: int | None = None) -> dict:
    """One task of a domain: the report row (summary, episodes, baseline); the evaluation core of ``lram eval``
    and of rollouts during training.  ``target``: the return to condition on (default the task's best in the
    data, a held-out task the domain's best).  In-context domains run ``in_context_envs`` environments (default
    1), each through consecutive episodes on one recurrent state, so that the policy can use what it found in
    earlier episodes.  ``window``: act on the last ``window`` timesteps (see :func:`evaluate_task`)."""
    d = domain.name
    if domain.in_context:
        num_envs = max(1, in_context_envs)
    target = float(domain.default_target(task) if target is None else target)
    t0 = time.perf_counter()
    results = evaluate_task(policy, lambda i: make_eval_env(d, task, seed + i), domain, task,
                            episodes=episodes, target_return=target, num_envs=num_envs, seed=seed, max_steps=max_steps,
                            progress=progress, desc=f"{d}/{task}", window=window)
    rand = random_policy_returns(d, task, episodes, seed, max_steps) if random_baseline else None
    return task_row(results, target, rand, task in domain.tasks, time.perf_counter() - t0)


def task_row(results: Sequence[EpisodeResult], target: float, random_results: Sequence[EpisodeResult] | None,
             in_training_data: bool, seconds: float = 0.0) -> dict:
    """A task's report row: the episodes' summary and details, and with a random baseline the normalised score."""
    row = {"target_return": target, **summarize(results), "seconds": seconds,
           "episodes_detail": [r.to_dict() for r in results]}
    if random_results is not None:
        rand = summarize(random_results)
        row["random_return_mean"] = rand["return_mean"]
        row["random_success_rate"] = rand["success_rate"]
        row["normalised_score"] = normalised_score(row["return_mean"], rand["return_mean"], target)
    row["in_training_data"] = in_training_data
    return row


_worker_policy = None


def _init_worker(path: str, device: str, threads: int) -> None:
    global _worker_policy
    torch.set_num_threads(threads)
    _worker_policy = load_pretrained(path, device)


def _worker_job(job):
    entry, task, target, options = job
    return (entry.name, task), evaluate_one(_worker_policy, entry, task, target, **options)


def evaluate_checkpoint(path: str | Path, *, domains: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                        episodes: int = 5, num_envs: int = 5, in_context_envs: int = 1, seed: int = 0,
                        target_return: float | None = None,
                        random_baseline: bool = False, max_steps: int | None = None, device: str = "cpu",
                        workers: int = 1, out: str | Path | None = None, progress: bool = True,
                        window: int | None = None) -> dict:
    """Evaluate the checkpoint at ``path`` (a run or checkpoint folder); returns (and writes to ``out``) a
    report: per task the episodes and their summary, per domain and overall the mean normalised score.
    ``workers > 1`` spreads the tasks over that many processes (same results: seeds are per episode).
    ``window``: act on the last ``window`` timesteps, re-processed every step (the paper's protocol), instead
    of carrying the whole history in the recurrent state."""
    policy = load_pretrained(path, device)
    registry = policy.domains
    if not registry:
        raise ValueError(f"{path}: the checkpoint has no domain registry (policy.json 'domains'), nothing to evaluate")
    chosen = list(domains) if domains else [d for d in registry if d in ENV_BUILDERS]
    for d in chosen:
        _check_domain(registry, d, "domains")
    plan = _task_plan(registry, chosen, tasks)
    jobs = []
    for d, names in plan.items():
        entry = registry[d]
        for task in names:
            target = float(target_return if target_return is not None else entry.default_target(task))
            jobs.append((entry, task, target))
    options = {"episodes": episodes, "num_envs": num_envs, "in_context_envs": in_context_envs, "seed": seed,
               "max_steps": max_steps, "window": window,
               "random_baseline": random_baseline}
    rows: dict[tuple[str, str], dict] = {}
    if workers <= 1 or len(jobs) <= 1:
        for entry, task, target in jobs:
            rows[entry.name, task] = evaluate_one(policy, entry, task, target, progress=progress, **options)
    else:  # tasks spread over processes, each with its own copy of the policy (simulators are the slow part)
        import multiprocessing as mp

        from tqdm.auto import tqdm

        ctx = mp.get_context("spawn")
        threads = max(1, torch.get_num_threads() // workers)
        with ctx.Pool(workers, initializer=_init_worker, initargs=(str(path), device, threads)) as pool, \
                tqdm(total=len(jobs), desc="eval tasks", disable=not progress) as bar:
            args = [(entry, task, target, options) for entry, task, target in jobs]
            for (d, task), row in pool.imap_unordered(_worker_job, args):
                rows[d, task] = row
                bar.update(1)
    report = assemble_report(policy.checkpoint["path"], policy.checkpoint["step"], episodes, seed,
                             {d: (registry[d].in_context, {t: rows[d, t] for t in names})
                              for d, names in plan.items()})
    if out is not None:
        write_json_atomic(out, report)
    return report


def assemble_report(checkpoint: str, step: int, episodes: int, seed: int,
                    domains: dict[str, tuple[bool, dict[str, dict]]]) -> dict:
    """The report from its task rows (``domains``: name -> (in_context, {task: row})): means per domain of
    the normalised scores and success rates, and the mean over domains of the normalised scores."""
    report: dict = {"checkpoint": checkpoint, "step": step, "episodes": episodes, "seed": seed, "domains": {}}
    for d, (in_context, task_rows) in domains.items():
        dom: dict = {"in_context": in_context, "tasks": dict(task_rows)}
        scores = [r["normalised_score"] for r in dom["tasks"].values() if r.get("normalised_score") is not None]
        dom["normalised_score"] = float(np.mean(scores)) if scores else None
        succ = [r["success_rate"] for r in dom["tasks"].values() if r["success_rate"] is not None]
        dom["success_rate"] = float(np.mean(succ)) if succ else None
        report["domains"][d] = dom
    report["normalised_score"] = overall_score(report["domains"])
    return report


def overall_score(domains: dict) -> float | None:
    """The mean over domains of their normalised scores (None when no domain has one)."""
    means = [v["normalised_score"] for v in domains.values() if v["normalised_score"] is not None]
    return float(np.mean(means)) if means else None


def merge_reports(reports: Sequence[dict]) -> dict:
    """One report from reports of the same checkpoint over different domains (e.g. evaluated with different
    episode counts): the first one's header, every domain, and the overall score over all of them."""
    merged = {**reports[0], "domains": {d: dom for r in reports for d, dom in r["domains"].items()}}
    merged["normalised_score"] = overall_score(merged["domains"])
    return merged


def format_report(report: dict) -> str:
    """A plain-text table: per task mean return (target), success rate and normalised score."""
    lines = [f"{'domain/task':<36}{'return':>10}{'target':>10}{'random':>10}{'success':>9}{'score':>8}"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for d, dom in report["domains"].items():
        for task, r in dom["tasks"].items():
            lines.append(f"{d + '/' + task:<36}{r['return_mean']:>10.2f}{r['target_return']:>10.2f}"
                         f"{fmt(r.get('random_return_mean'), '.2f'):>10}{fmt(r['success_rate'], '.2f'):>9}"
                         f"{fmt(r.get('normalised_score'), '.2f'):>8}")
        lines.append(f"{d + ' (mean over tasks)':<36}{'':>39}{fmt(dom['success_rate'], '.2f'):>9}"
                     f"{fmt(dom['normalised_score'], '.2f'):>8}")
    lines.append(f"overall normalised score (mean over domains): {fmt(report['normalised_score'], '.3f')}")
    return "\n".join(lines)


def plot_report(report: dict, path: str | Path, *, tasks_per_page: int = 60, reps: int = 2000,
                seed: int = 0) -> list[Path]:
    """PNGs of the report: ``path`` (per-domain summary with 95% CIs, in-context view) and per-task pages
    ``<stem>-tasks-<k>.png``; returns the paths, the summary first (:func:`lram.evaluation.plots.plot_report`).
    Needs matplotlib (and rliable for the CIs)."""
    from lram.evaluation.plots import plot_report as plot

    return plot(report, path, tasks_per_page=tasks_per_page, reps=reps, seed=seed)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="lram eval", description="Evaluate a checkpoint online in its tasks' environments.")
    p.add_argument("run", type=Path, help="a run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--domains", default="", help="comma-separated domains (default: every domain with an environment)")
    p.add_argument("--tasks", default="", help="comma-separated task folder names of the data, or domain/task for "
                   "any task of a domain (held-out ones); default: all tasks of the domains")
    p.add_argument("--episodes", type=int, default=5, help="episodes per task (default: 5, as the paper)")
    p.add_argument("--envs", type=int, default=5, help="environments stepped together per task (default: 5)")
    p.add_argument("--envs-in-context", type=int, default=1,
                   help="in-context domains (Dark-Room): environments per task, each playing consecutive episodes on "
                        "one recurrent state (default: 1, all episodes in one context)")
    p.add_argument("--seed", type=int, default=0, help="episode i resets its environment with seed + i")
    p.add_argument("--target-return", type=float, default=None,
                   help="default: the task's best return in the data (a held-out task: the domain's best)")
    p.add_argument("--random-baseline", action="store_true", help="also run a random policy and report normalised scores")
    p.add_argument("--max-steps", type=int, default=None, help="cut episodes after this many steps")
    p.add_argument("--workers", type=int, default=1, help="processes the tasks are spread over (default: 1)")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: RUN/eval/step-<N>.json)")
    p.add_argument("--plot", action="store_true", help="also write PNGs beside the JSON report: NAME.png (per-domain "
                   "mean and IQM with 95%% stratified-bootstrap CIs, in-context view) and NAME-tasks-K.png (per-task bars, "
                   "60 a page); needs lram[plots] (matplotlib, rliable).  Learning curves: lram plot RUN")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    try:
        ckpt = resolve_checkpoint(a.run)
        out = a.out
        if out is None:
            out = (a.run if a.run != ckpt else ckpt.parent.parent) / "eval" / f"{ckpt.name}.json"
        report = evaluate_checkpoint(a.run, domains=split(a.domains), tasks=split(a.tasks), episodes=a.episodes,
                                     num_envs=a.envs, in_context_envs=a.envs_in_context, seed=a.seed,
                                     target_return=a.target_return,
                                     random_baseline=a.random_baseline, max_steps=a.max_steps, workers=a.workers, out=out,
                                     progress=not a.quiet)
    except (ValueError, FileNotFoundError, ImportError) as e:
        p.exit(2, f"lram eval: error: {e}\n")
    print(format_report(report))
    print(f"wrote {out}")
    if a.plot:
        try:
            for png in plot_report(report, Path(out).with_suffix(".png")):
                print(f"wrote {png}")
        except ImportError as e:
            p.exit(2, f"lram eval: error: {e}\n")
    return 0
