"""Plots of evaluation reports and of training runs (``lram eval --plot``, ``lram plot``), legible at hundreds
of tasks: every PNG has a bounded size (at most ``MAX_WIDTH_IN`` x ``MAX_HEIGHT_IN`` inches at ``DPI``).

* :func:`plot_report` writes ``NAME.png``, a summary: per domain the mean and the interquartile mean (IQM)
  of its score with 95% stratified-bootstrap confidence intervals (rliable; episodes resampled within each
  task), and for in-context domains the score per episode index (mean over tasks, 95% CI); then
  ``NAME-tasks-1.png``, ``NAME-tasks-2.png``, ...: one horizontal bar per task, sorted by score within its
  domain, at most ``tasks_per_page`` tasks a page.
* :func:`plot_learning_curves` draws a run's ``metrics.jsonl``: training loss (raw and smoothed), learning
  rate, gradient norm, and per domain (one row each) training/validation loss, validation accuracy and
  rollout scores.

The score of a domain is the data-normalised score ``(R - R_random) / (R_target - R_random)`` when the
report has random baselines, else the success rate when the environments report success, else the return.
Figures are built on :class:`matplotlib.figure.Figure` (no pyplot, no global backend change).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lram.utils.io import atomic_path

DPI = 110
MAX_WIDTH_IN = 12.0  # 1320 px
MAX_HEIGHT_IN = 18.0  # 1980 px
TASKS_PER_PAGE = 60
KIND_LABEL = {"normalised": "normalised score", "success": "success rate", "return": "return"}
KIND_AXIS = {"normalised": "(R - R_random) / (R_target - R_random)", "success": "success rate", "return": "episode return"}


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'lram[plots]'") from e
    return Figure(figsize=(min(width, MAX_WIDTH_IN), min(height, MAX_HEIGHT_IN)), dpi=DPI)


def _save(fig, path: Path, metadata: dict | None = None) -> Path:
    """Write ``fig`` as a PNG atomically (``metadata``: extra PNG text chunks)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", metadata={"Software": "lram", **(metadata or {})})
    return path


def _load_rliable():
    """(library, metrics, None), or (None, None, why) when rliable cannot be imported."""
    try:
        from rliable import library, metrics
    except Exception as e:  # not installed, or broken: arch 7 fails to import under pandas 3 (TypeError)
        return None, None, f"{type(e).__name__}: {e}".splitlines()[0][:120]
    return library, metrics, None


# ----------------------------------------------------------------------------- scores of a report
@dataclass
class DomainScores:
    """A domain's tasks under one score ``kind``: per-task scores and the per-episode score matrix."""

    domain: str
    kind: str  # "normalised" | "success" | "return"
    tasks: list[str]  # tasks that have a score of this kind, in report order
    task_scores: np.ndarray  # (tasks,) the report's value per task
    episodes: list[np.ndarray]  # per task, the score of each episode
    in_context: bool | None  # None: the report does not say (older reports)

    def matrix(self) -> np.ndarray:
        """(episodes, tasks): rliable's (runs x tasks) layout; tasks with more episodes are cut to the fewest."""
        n = min(len(e) for e in self.episodes)
        return np.stack([e[:n] for e in self.episodes], axis=1)


def domain_kind(dom: dict) -> str:
    rows = dom["tasks"].values()
    if any(r.get("normalised_score") is not None for r in rows):
        return "normalised"
    if any(r.get("success_rate") is not None for r in rows):
        return "success"
    return "return"


def episode_scores(row: dict, kind: str) -> np.ndarray | None:
    """The score of each episode of a task row (None when the task has no score of this kind)."""
    eps = sorted(row["episodes_detail"], key=lambda e: e["episode"])
    if kind == "normalised":
        if row.get("normalised_score") is None:
            return None
        low, high = row["random_return_mean"], row["target_return"]
        return np.array([(e["total_return"] - low) / (high - low) for e in eps], dtype=np.float64)
    if kind == "success":
        if row.get("success_rate") is None:
            return None
        return np.array([float(bool(e["success"])) for e in eps if e["success"] is not None], dtype=np.float64)
    return np.array([e["total_return"] for e in eps], dtype=np.float64)


def task_score(row: dict, kind: str) -> float | None:
    return {"normalised": row.get("normalised_score"), "success": row.get("success_rate"), "return": row["return_mean"]}[kind]


def report_scores(report: dict) -> dict[str, DomainScores]:
    """Per domain of the report, its score kind and the scores of its tasks and episodes."""
    out = {}
    for d, dom in report["domains"].items():
        kind = domain_kind(dom)
        tasks, scores, eps = [], [], []
        for t, r in dom["tasks"].items():
            e = episode_scores(r, kind)
            if e is not None and len(e):
                tasks.append(t)
                scores.append(task_score(r, kind))
                eps.append(e)
        out[d] = DomainScores(d, kind, tasks, np.array(scores, dtype=np.float64), eps, dom.get("in_context"))
    return out


def interval_estimates(matrix: np.ndarray, reps: int = 2000, seed: int = 0, library=None, metrics=None):
    """Mean and IQM of an (episodes x tasks) matrix with 95% stratified-bootstrap CIs (rliable, percentile):
    ``(point[mean, iqm], ci)`` with ``ci[0]`` the lower and ``ci[1]`` the upper bounds.  rliable draws the
    resampling indices from numpy's global generator: it is seeded with ``seed`` and restored afterwards."""
    if library is None:
        library, metrics, why = _load_rliable()
        if library is None:
            raise ImportError(f"rliable is needed for confidence intervals ({why}): pip install 'lram[plots]'")

    def func(x):
        return np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])

    state = np.random.get_state()
    try:
        np.random.seed(seed)
        point, ci = library.get_interval_estimates({"x": matrix}, func, reps=reps)
    finally:
        np.random.set_state(state)
    return np.asarray(point["x"], dtype=np.float64), np.asarray(ci["x"], dtype=np.float64)


def iqm(matrix: np.ndarray) -> float:
    """Interquartile mean of all entries: the mean of the middle ones after cutting ``int(n / 4)`` from each
    end (as rliable's ``aggregate_iqm``, ``scipy.stats.trim_mean(x, 0.25)``; used when rliable is missing)."""
    x = np.sort(np.asarray(matrix, dtype=np.float64).ravel())
    cut = int(0.25 * len(x))
    return float(x[cut : len(x) - cut].mean())


POOLED = "all tasks (pooled)"


def summary_statistics(report: dict, reps: int = 2000, seed: int = 0) -> dict:
    """The numbers the summary page shows: per domain (and, when several domains share the normalised score
    or the success rate, ``"all tasks (pooled)/<kind>"``) the kind, task and episode counts, mean and IQM, and
    their 95% CIs (None without rliable).  ``"ci"`` says how the CIs were made or why there are none."""
    library, metrics, why = _load_rliable()
    scores = report_scores(report)
    groups: dict[str, list[DomainScores]] = {}
    for s in scores.values():
        if s.tasks:
            groups.setdefault(s.kind, []).append(s)
    rows: dict[str, dict] = {}

    def add(name, kind, mats):
        n = min(m.shape[0] for m in mats)
        mat = np.concatenate([m[:n] for m in mats], axis=1)
        row = {"kind": kind, "tasks": int(mat.shape[1]), "episodes": int(n),
               "mean": float(np.mean(mat.mean(axis=0))), "iqm": iqm(mat), "mean_ci": None, "iqm_ci": None}
        if library is not None:
            point, ci = interval_estimates(mat, reps, seed, library, metrics)
            row.update(mean=float(point[0]), iqm=float(point[1]), mean_ci=[float(ci[0, 0]), float(ci[1, 0])],
                       iqm_ci=[float(ci[0, 1]), float(ci[1, 1])])
        rows[name] = row

    for s in scores.values():
        if s.tasks:
            add(s.domain, s.kind, [s.matrix()])
    for kind, members in groups.items():
        if kind != "return" and len(members) > 1:
            add(f"{POOLED}/{kind}", kind, [m.matrix() for m in members])
    ci = (f"95% stratified bootstrap CIs (rliable, {reps} reps, episodes resampled within tasks)" if library is not None
          else f"no confidence intervals: rliable unavailable ({why})")
    return {"ci": ci, "rliable": library is not None, "domains": rows}


# ----------------------------------------------------------------------------- report figures
def _colors(names: Sequence[str]) -> dict[str, str]:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
               "tab:gray", "tab:red"]
    return {n: palette[i % len(palette)] for i, n in enumerate(names)}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _short(name: str, n: int = 38) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _fmt(v) -> str:
    """A number in at most ~5 characters' precision: 1234, 123, 12.3, 1.23 (None: '-')."""
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _bootstrap_mean_ci(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile bootstrap CI of the mean over rows (tasks) of a (tasks, k) array, per column."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    means = values[idx].mean(axis=1)  # (reps, k)
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def _in_context_domains(scores: dict[str, DomainScores]) -> list[DomainScores]:
    """Domains whose return per episode index is worth a look: in-context ones (all, if the report does not say)."""
    known = [s for s in scores.values() if s.in_context is not None]
    chosen = [s for s in scores.values() if s.in_context] if known else list(scores.values())
    return [s for s in chosen if s.tasks and min(len(e) for e in s.episodes) > 1]


def summary_figure(report: dict, stats: dict):
    """Per-domain mean and IQM with CIs (one panel per score kind, one per return domain), then the score
    per episode index of in-context domains (small multiples)."""
    scores = report_scores(report)
    colors = _colors(list(report["domains"]))
    rows = stats["domains"]
    # panels: the normalised-score domains together, the success-rate domains together, each return domain alone
    panels: list[tuple[str, list[str]]] = []
    for kind in ("normalised", "success"):
        names = [n for n, r in rows.items() if r["kind"] == kind]
        if names:
            panels.append((kind, names))
    panels += [("return", [n]) for n, r in rows.items() if r["kind"] == "return"]
    icl = _in_context_domains(scores)[:8]  # the first 8 (two rows of small multiples)
    icl_rows = math.ceil(len(icl) / 4)
    n_bars = sum(len(names) for _, names in panels)
    bar_h, head = 0.42, 0.75

    def panel_h(n, bar_h):
        return max(bar_h * n, 0.7)

    def needed(bar_h):
        return (head + 0.85 * len(panels) + sum(panel_h(len(names), bar_h) for _, names in panels) + 2.7 * icl_rows
                + (0.5 if icl else 0) + 0.1)

    height = needed(bar_h)
    if height > MAX_HEIGHT_IN:  # many domains: thinner bars
        bar_h = max(0.16, bar_h - (height - MAX_HEIGHT_IN) / max(n_bars, 1))
        height = needed(bar_h)
    width = MAX_WIDTH_IN
    fig = _figure(width, height)
    height = fig.get_figheight()
    overall = report.get("normalised_score")
    n_tasks = sum(len(dom["tasks"]) for dom in report["domains"].values())
    n_scored = sum(len(s.tasks) for s in scores.values())
    fig.suptitle(f"{report.get('checkpoint', '?')} (step {report.get('step', '?')}): {_count(n_tasks, 'task')}"
                 + ("" if n_scored == n_tasks else f" ({n_scored} with a score)") + f", {_count(len(scores), 'domain')}"
                 + ("" if overall is None else f"; normalised score, mean over domains: {overall:.3f}")
                 + f"\n{stats['ci']}", fontsize=9, y=1 - 0.12 / height, va="top")
    left, right, gap = 2.3 / width, 0.25 / width, 0.5 / width
    col_w = (1 - left - right - gap) / 2
    y = height - head  # inches from the bottom, top of the next panel
    for kind, names in panels:
        h = panel_h(len(names), bar_h)
        y -= 0.3  # the panel's title
        for col, (stat, label) in enumerate((("mean", "mean"), ("iqm", "IQM"))):
            ax = fig.add_axes([left + col * (col_w + gap), (y - h) / height, col_w, h / height])
            vals = np.array([rows[n][stat] for n in names])
            cis = [rows[n][f"{stat}_ci"] for n in names]
            pos = np.arange(len(names))
            bar_colors = ["0.25" if n.startswith(POOLED) else colors.get(n, "tab:blue") for n in names]
            ax.barh(pos, vals, height=0.62, color=bar_colors, alpha=0.85)
            lo_hi = np.array([c if c is not None else [v, v] for c, v in zip(cis, vals)])
            if any(c is not None for c in cis):
                ax.errorbar(vals, pos, xerr=[vals - lo_hi[:, 0], lo_hi[:, 1] - vals], fmt="none", ecolor="black",
                            capsize=3, lw=1)
            lo, hi = float(min(lo_hi.min(), 0.0)), float(lo_hi.max())
            if kind == "normalised":
                hi = max(hi, 1.0)
                ax.axvline(0.0, color="tab:red", ls="--", lw=1)
                ax.axvline(1.0, color="black", ls="--", lw=1)
            elif kind == "success":
                hi = 1.0
            span = (hi - lo) or 1.0
            ax.set_xlim(lo - 0.03 * span, hi + 0.45 * span)  # room for the numbers right of the bars
            for p, v, c in zip(pos, vals, cis):
                text = _fmt(v) + ("" if c is None else f"  [{_fmt(c[0])}, {_fmt(c[1])}]")
                ax.text(max(v, lo_hi[p, 1], 0.0) + 0.02 * span, p, text, va="center", fontsize=8)  # right of bar and CI
            ax.set_ylim(len(names) - 0.5, -0.5)
            ax.set_yticks(pos)
            labels = [f"{'all tasks, pooled' if n.startswith(POOLED) else _short(n, 26)} ({_count(rows[n]['tasks'], 'task')})"
                      for n in names]
            ax.set_yticklabels([] if col else labels, fontsize=8)
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="x", alpha=0.3)
            title = f"{label}: {KIND_LABEL[kind]}" + (f" ({names[0]})" if kind == "return" else "")
            if kind == "normalised":
                title += "  (red: random = 0, black: target = 1)"
            ax.set_title(title, fontsize=9, loc="left")
        y -= h + 0.55  # x tick labels
    if icl:
        from matplotlib.ticker import MaxNLocator

        y -= 0.1
        fig.text(0.01, y / height, "score per episode index (in-context domains: does it rise from episode to "
                 "episode?): mean over tasks, 95% bootstrap CI over tasks" + ("" if all(s.in_context is not None
                 for s in scores.values()) else "; the report does not say which domains are in-context"), fontsize=9,
                 va="top", fontweight="bold")
        y -= 0.7
        cell_w, cell_gap = (1 - 0.07 - 0.02 - 3 * 0.05) / 4, 0.05
        for i, s in enumerate(icl):
            r, c = divmod(i, 4)
            top = y - r * 2.7
            ax = fig.add_axes([0.07 + c * (cell_w + cell_gap), (top - 2.0) / height, cell_w, 2.0 / height])
            n = min(len(e) for e in s.episodes)
            vals = np.stack([e[:n] for e in s.episodes])  # (tasks, episode index)
            x = np.arange(n)
            color = colors.get(s.domain, "tab:blue")
            if len(vals) <= 8:
                for row in vals:
                    ax.plot(x, row, color=color, alpha=0.3, lw=0.8)
            if len(vals) > 1:
                lo, hi = _bootstrap_mean_ci(vals)
                ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0)
            ax.plot(x, vals.mean(axis=0), color=color, marker="o", ms=3, lw=1.8)
            ax.set_title(f"{s.domain} ({_count(len(vals), 'task')})", fontsize=9)
            ax.set_xlabel("episode index", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(KIND_LABEL[s.kind], fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    return fig


@dataclass
class _Segment:
    domain: str
    kind: str
    rows: list[tuple[str, dict, float | None, np.ndarray | None]]  # task, report row, score, episode scores
    first: int  # index of the segment's first task within the domain (1-based)
    total: int  # tasks in the domain


def task_pages(report: dict, per_page: int = TASKS_PER_PAGE) -> list[list[_Segment]]:
    """Tasks sorted by score within their domain (best first, unscored last), cut into pages."""
    flat = []
    for d, dom in report["domains"].items():
        kind = domain_kind(dom)
        items = [(t, r, task_score(r, kind), episode_scores(r, kind)) for t, r in dom["tasks"].items()]
        items.sort(key=lambda it: (it[2] is None, -(it[2] if it[2] is not None else 0.0)))
        flat += [(d, kind, i, len(items), it) for i, it in enumerate(items)]
    pages = []
    for start in range(0, len(flat), per_page):
        segs: list[_Segment] = []
        for d, kind, i, total, it in flat[start : start + per_page]:
            if not segs or segs[-1].domain != d:
                segs.append(_Segment(d, kind, [], i + 1, total))
            segs[-1].rows.append(it)
        pages.append(segs)
    return pages


def _x_limits(report: dict) -> dict[str, tuple[float, float]]:
    """Shared x range per score kind (per domain for returns), the same on every page; robust to outliers."""
    vals: dict[str, list[float]] = {}
    for d, dom in report["domains"].items():
        kind = domain_kind(dom)
        key = d if kind == "return" else kind
        for r in dom["tasks"].values():
            e = episode_scores(r, kind)
            if e is not None:
                vals.setdefault(key, []).extend(e.tolist())
            if kind == "return":
                vals[key] += [r["target_return"]] + ([r["random_return_mean"]] if "random_return_mean" in r else [])
    out = {}
    for key, v in vals.items():
        v = np.asarray(v, dtype=np.float64)
        v = v[np.isfinite(v)]
        lo, hi = (np.percentile(v, 1), np.percentile(v, 99)) if len(v) else (0.0, 1.0)
        lo, hi = min(lo, 0.0), max(hi, 1.0 if key in ("normalised", "success") else hi)
        if key == "success":
            lo, hi = 0.0, 1.0
        span = (hi - lo) or 1.0
        out[key] = (lo - 0.03 * span, hi + 0.03 * span)
    return out


def task_figures(report: dict, tasks_per_page: int = TASKS_PER_PAGE) -> list:
    """One figure per page of at most ``tasks_per_page`` tasks: a horizontal bar per task (its score), the
    score of each episode (dots), random baseline and target marked, raw numbers at the right."""
    pages = task_pages(report, tasks_per_page)
    limits = _x_limits(report)
    colors = _colors(list(report["domains"]))
    row_h, seg_pad, top, bottom = 0.2, 0.75, 0.85, 0.15
    width = MAX_WIDTH_IN
    figs = []
    for p, segs in enumerate(pages):
        n_rows = sum(len(s.rows) for s in segs)
        height = top + bottom + row_h * n_rows + seg_pad * len(segs)
        scale = min(1.0, (MAX_HEIGHT_IN - top - bottom - seg_pad * len(segs)) / (row_h * n_rows))
        rh = row_h * scale  # only shrinks when a page would be taller than MAX_HEIGHT_IN (huge tasks_per_page)
        height = min(height, MAX_HEIGHT_IN)
        fig = _figure(width, height)
        fig.suptitle(f"{report.get('checkpoint', '?')} (step {report.get('step', '?')}): tasks, page {p + 1} of {len(pages)}"
                     "; bar: mean over episodes, dots: episodes; sorted by score within each domain",
                     fontsize=9, y=1 - 0.12 / height, va="top")
        handles = {}
        left, text_w = 2.7 / width, 3.1 / width
        y = height - top
        fontsize = 8 if scale > 0.8 else 6
        for s in segs:
            h = rh * len(s.rows)
            y -= 0.3
            ax = fig.add_axes([left, (y - h) / height, 1 - left - text_w, h / height])
            pos = np.arange(len(s.rows))
            vals = np.array([np.nan if sc is None else sc for _, _, sc, _ in s.rows])
            held = np.array([not r.get("in_training_data", True) for _, r, _, _ in s.rows])
            color = colors.get(s.domain, "tab:blue")
            b = ax.barh(pos[~held], np.nan_to_num(vals[~held]), height=0.7, color=color, alpha=0.8)
            handles.setdefault("policy: mean over episodes", b)
            if held.any():
                handles.setdefault("held-out task (not in the training data)",
                                   ax.barh(pos[held], np.nan_to_num(vals[held]), height=0.7, color=color, alpha=0.45,
                                           hatch="///", edgecolor="black", lw=0))
            ex = [(i, v) for i, (_, _, _, e) in enumerate(s.rows) if e is not None for v in e]
            if ex:
                ei, ev = np.array(ex).T
                handles.setdefault("episodes", ax.scatter(ev, ei, s=8, color="black", alpha=0.5, lw=0, zorder=3))
            if s.kind == "normalised":
                handles.setdefault("random baseline (0)", ax.axvline(0.0, color="tab:red", ls="--", lw=1))
                handles.setdefault("target return (1)", ax.axvline(1.0, color="black", ls="--", lw=1))
            elif s.kind == "return":
                tgt = [r["target_return"] for _, r, _, _ in s.rows]
                handles.setdefault("target return", ax.scatter(tgt, pos, marker="|", s=90, color="black", zorder=4))
                rnd = [r.get("random_return_mean", np.nan) for _, r, _, _ in s.rows]
                if np.isfinite(rnd).any():
                    handles.setdefault("random baseline", ax.scatter(rnd, pos, marker="|", s=90, color="tab:red", zorder=4))
            ax.set_xlim(*limits.get(s.domain if s.kind == "return" else s.kind, (0.0, 1.0)))
            ax.set_ylim(len(s.rows) - 0.5, -0.5)
            ax.set_yticks(pos)
            ax.set_yticklabels([_short(t) for t, _, _, _ in s.rows], fontsize=fontsize)
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="x", alpha=0.3)
            last = s.first + len(s.rows) - 1
            part = "" if len(s.rows) == s.total else f", tasks {s.first}-{last} of {s.total}"
            ax.set_title(f"{s.domain}: {KIND_AXIS[s.kind]}{part}", fontsize=9, loc="left")
            with_success = s.kind != "success" and any(r.get("success_rate") is not None for _, r, _, _ in s.rows)
            ax.text(1.01, 1.0, "score  return (random, target)" + ("  success" if with_success else ""),
                    transform=ax.transAxes, fontsize=7, va="bottom", color="0.3", family="monospace")
            for i, (_, r, sc, _) in enumerate(s.rows):
                text = f"{_fmt(sc):>5}  {_fmt(r['return_mean'])} ({_fmt(r.get('random_return_mean'))}, " \
                       f"{_fmt(r['target_return'])})"
                if s.kind != "success" and r.get("success_rate") is not None:
                    text += f"  {r['success_rate']:.2f}"
                ax.annotate(text, (1.01, i), xycoords=("axes fraction", "data"), va="center", fontsize=fontsize - 1,
                            family="monospace")
            y -= h + seg_pad - 0.3
        fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 6), fontsize=8,
                   frameon=False, bbox_to_anchor=(0.5, 1 - 0.4 / height))
        figs.append(fig)
    return figs


def task_page_path(path: str | Path, page: int) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}-tasks-{page}{path.suffix or '.png'}")


def plot_report(report: dict, path: str | Path, *, tasks_per_page: int = TASKS_PER_PAGE, reps: int = 2000,
                seed: int = 0) -> list[Path]:
    """Write the report's plots: ``path`` (summary: per-domain mean and IQM with 95% stratified-bootstrap CIs,
    the in-context view) and ``<stem>-tasks-<k>.png`` (per-task bars, ``tasks_per_page`` a page); stale task
    pages of an earlier, longer report are removed.  Returns the paths written, the summary first.
    Needs matplotlib; without rliable the summary is drawn without CIs (its title says so)."""
    if tasks_per_page < 1:
        raise ValueError(f"tasks_per_page: expected >= 1, got {tasks_per_page}")
    path = Path(path)
    stats = summary_statistics(report, reps=reps, seed=seed)
    written = [_save(summary_figure(report, stats), path, {"lram:summary": json.dumps(stats)})]
    for k, fig in enumerate(task_figures(report, tasks_per_page), start=1):
        written.append(_save(fig, task_page_path(path, k)))
    pattern = re.compile(re.escape(path.stem) + r"-tasks-(\d+)" + re.escape(path.suffix or ".png") + "$")
    for old in path.parent.glob(f"{path.stem}-tasks-*"):
        m = pattern.match(old.name)
        if m and int(m.group(1)) > len(written) - 1:
            old.unlink()
    return written


# ----------------------------------------------------------------------------- learning curves
def read_metrics(run: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``RUN/metrics.jsonl`` as ``{key: (steps, values)}``, sorted by step; a step logged twice (a resumed
    run redoes the steps after its last checkpoint) keeps its last value."""
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics log (is {run} an lram run folder?)")
    series: dict[str, dict[int, float]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        step = row.get("step")
        if not isinstance(step, int):
            continue
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                series.setdefault(k, {})[step] = float(v)
    return {k: (np.array(sorted(s), dtype=np.int64), np.array([s[i] for i in sorted(s)])) for k, s in series.items()}


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing)."""
    out, m = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        m = weight * m + (1 - weight) * v
        out[i] = m / (1 - weight ** (i + 1))
    return out


def _smoothing_weight(n: int) -> float:
    """EMA weight for ``n`` points: a memory of ~1% of the run (at least 2 points, at most 50; 0: too few points)."""
    return 0.0 if n < 10 else float(np.clip(1 - 1 / max(2.0, n / 100), 0.5, 0.98))


def curve_domains(metrics: dict) -> list[str]:
    """Domains with per-domain series (train/<d>/loss, valid/<d>/..., rollout/<d>/...), in first-seen order."""
    names: dict[str, None] = {}
    for k in metrics:
        parts = k.split("/")
        if len(parts) >= 3 and parts[0] in ("train", "valid", "rollout"):
            names.setdefault(parts[1], None)
    return list(names)


def curve_figures(metrics: dict, title: str = "", domains_per_page: int = 8) -> list:
    """Small multiples: a top row (training loss, learning rate, gradient norm), then one row per domain
    (loss: training raw + smoothed and validation; validation accuracy; rollout score), ``domains_per_page``
    domain rows a page."""
    domains = curve_domains(metrics)
    cols = [("loss", "loss (train: raw, smoothed; valid: dots)")]
    if any(k.startswith("valid/") and k.endswith("/accuracy") for k in metrics):
        cols.append(("accuracy", "validation action accuracy"))
    if any(k.startswith("rollout/") for k in metrics):
        cols.append(("rollout", "rollout score (mean over tasks; band: tasks' IQR)"))
    pages = [domains[i : i + domains_per_page] for i in range(0, len(domains), domains_per_page)] or [[]]
    last = max((int(s[-1]) for s, _ in metrics.values() if len(s)), default=1)
    xlim = (0, last * 1.02)  # every panel on the same step axis
    figs = []
    for p, names in enumerate(pages):
        top_row = p == 0
        n_rows = len(names) + top_row
        height = min(MAX_HEIGHT_IN, 0.8 + 2.0 * n_rows)
        fig = _figure(MAX_WIDTH_IN, height)
        fig.suptitle(f"{title}: learning curves" + (f" (page {p + 1} of {len(pages)})" if len(pages) > 1 else ""),
                     fontsize=10)
        grid = fig.add_gridspec(max(n_rows, 1), 3, left=0.07, right=0.98, top=1 - 0.6 / height, bottom=0.4 / height,
                                hspace=0.55, wspace=0.25)
        r = 0
        if top_row:
            for c, (key, label, log) in enumerate((("train/loss", "training loss", False), ("train/lr", "learning rate", False),
                                                  ("train/grad_norm", "gradient norm (before clipping)", True))):
                ax = fig.add_subplot(grid[0, c])
                ax.set_title(label, fontsize=9)
                if key in metrics:
                    s, v = metrics[key]
                    w = _smoothing_weight(len(v))
                    if key == "train/loss" and w > 0:
                        ax.plot(s, v, color="tab:blue", alpha=0.3, lw=0.8, label="raw")
                        ax.plot(s, smooth(v, w), color="tab:blue", lw=1.8, label=f"smoothed (EMA {w:.2f})")
                        ax.legend(fontsize=7)
                    elif key == "train/loss":
                        ax.plot(s, v, color="tab:blue", lw=1.5, marker="o", ms=3)
                    else:
                        ax.plot(s, v, color="tab:gray", lw=1.2)
                    if log and (v > 0).all() and v.max() > 20 * v.min():
                        ax.set_yscale("log")
                else:
                    _not_logged(ax)
                _style(ax, xlim)
            r = 1
        for i, d in enumerate(names):
            for c, (col, label) in enumerate(cols):
                ax = fig.add_subplot(grid[r + i, c])
                if i == 0:
                    ax.set_title(label, fontsize=9)
                if c == 0:
                    ax.set_ylabel(_short(d, 20), fontsize=9, fontweight="bold")
                if not _domain_cell(ax, metrics, d, col):
                    _not_logged(ax)
                _style(ax, xlim)
        for ax in fig.axes:
            if ax.get_subplotspec().is_last_row():
                ax.set_xlabel("optimizer step", fontsize=8)
        figs.append(fig)
    return figs


def _style(ax, xlim) -> None:
    ax.set_xlim(*xlim)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _not_logged(ax) -> None:
    ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_yticks([])


def _domain_cell(ax, metrics: dict, d: str, col: str) -> bool:
    if col == "loss":
        drawn = False
        if f"train/{d}/loss" in metrics:
            s, v = metrics[f"train/{d}/loss"]
            w = _smoothing_weight(len(v))
            if w > 0:
                ax.plot(s, v, color="tab:blue", alpha=0.25, lw=0.7)
            ax.plot(s, smooth(v, w), color="tab:blue", lw=1.5, label="train")
            drawn = True
        if f"valid/{d}/loss" in metrics:
            s, v = metrics[f"valid/{d}/loss"]
            ax.plot(s, v, color="tab:orange", marker="o", ms=3, lw=1.2, label="valid")
            drawn = True
        if drawn:
            ax.legend(fontsize=7, loc="upper right")
        return drawn
    if col == "accuracy":
        if f"valid/{d}/accuracy" not in metrics:
            return False
        s, v = metrics[f"valid/{d}/accuracy"]
        ax.plot(s, v, color="tab:green", marker="o", ms=3, lw=1.2)
        return True
    key, suffix, label = ((f"rollout/{d}/success_rate", "/success", "success rate")
                          if f"rollout/{d}/success_rate" in metrics else (f"rollout/{d}/return_mean", "/return", "return"))
    if key not in metrics:
        return False
    s, v = metrics[key]
    per_task = [metrics[k] for k in metrics if k.startswith(f"rollout/{d}/") and k.endswith(suffix) and k.count("/") == 3]
    if len(per_task) > 1:  # spread over tasks at each step where all tasks were logged
        steps = sorted(set.intersection(*[set(ts.tolist()) for ts, _ in per_task]))
        if steps:
            table = np.array([[dict(zip(ts.tolist(), tv))[x] for ts, tv in per_task] for x in steps])
            ax.fill_between(steps, np.percentile(table, 25, axis=1), np.percentile(table, 75, axis=1), color="tab:purple",
                            alpha=0.2, lw=0)
    ax.plot(s, v, color="tab:purple", marker="o", ms=3, lw=1.4)
    ax.set_ylabel(label, fontsize=8)
    return True


def curves_page_path(path: str | Path, page: int) -> Path:
    path = Path(path)
    return path if page == 1 else path.with_name(f"{path.stem}-{page}{path.suffix or '.png'}")


def plot_learning_curves(run_dir: str | Path, path: str | Path | None = None, *, domains_per_page: int = 8) -> list[Path]:
    """Plot ``RUN/metrics.jsonl`` to ``path`` (default ``RUN/curves.png``; with more than ``domains_per_page``
    domains also ``<stem>-2.png``, ...).  Returns the paths written."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    path = Path(path) if path is not None else (run_dir if run_dir.is_dir() else run_dir.parent) / "curves.png"
    figs = curve_figures(metrics, title=str(run_dir), domains_per_page=domains_per_page)
    return [_save(fig, curves_page_path(path, k)) for k, fig in enumerate(figs, start=1)]


# ----------------------------------------------------------------------------- lram plot
def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="lram plot", description="Plot a training run's learning curves, or an evaluation "
                                "report again (without re-running it).")
    p.add_argument("path", type=Path, help="a run folder (its metrics.jsonl: learning curves) or an `lram eval` JSON report "
                   "(summary with 95%% stratified-bootstrap CIs + per-task pages)")
    p.add_argument("--out", type=Path, default=None, help="PNG to write (default: RUN/curves.png, or the report's path "
                   "with .png); more pages go beside it: NAME-2.png... (curves), NAME-tasks-1.png... (report)")
    p.add_argument("--tasks-per-page", type=int, default=TASKS_PER_PAGE,
                   help=f"report: tasks per page (default {TASKS_PER_PAGE})")
    p.add_argument("--domains-per-page", type=int, default=8, help="curves: domain rows per page (default 8)")
    p.add_argument("--reps", type=int, default=2000, help="report: bootstrap resamples of the CIs (default 2000)")
    a = p.parse_args(argv)
    try:
        if a.path.is_file() and a.path.suffix == ".json":
            report = json.loads(a.path.read_text())
            paths = plot_report(report, a.out or a.path.with_suffix(".png"), tasks_per_page=a.tasks_per_page, reps=a.reps)
        else:
            paths = plot_learning_curves(a.path, a.out, domains_per_page=a.domains_per_page)
    except (ValueError, FileNotFoundError, ImportError, KeyError, json.JSONDecodeError) as e:
        p.exit(2, f"lram plot: error: {e}\n")
    for path in paths:
        print(f"wrote {path}")
    return 0
