"""The experiment runner: data once, every arm trained and evaluated (resumable), aggregates as the field reports
them (per-domain normalised scores, IQM with 95% stratified-bootstrap CIs over tasks x seeds, performance
profiles; rliable), a Markdown table and a PNG.

    results/NAME/
        data/                 the experiment's datasets (made once, kept)
        runs/ARM/             each arm's training run (checkpoints; an interrupted arm resumes)
        reports/ARM.json      each arm's evaluation report (every episode); an arm with a report is done
        results.json          scale, arms, per-group aggregates
        table.md              the table of results.json
        NAME.png              IQM with CIs per group, and the performance profiles
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lram.utils.io import write_json_atomic


@dataclass(frozen=True)
class Arm:
    """One training run of an experiment: ``group`` is what the table compares (e.g. a backbone)."""

    group: str
    seed: int
    overrides: tuple[str, ...] = ()  # training-config overrides (lram.training.config dotted keys)

    @property
    def name(self) -> str:
        safe = self.group.replace("[", "").replace("]", "").replace(":", "-").replace("/", "-")
        return f"{safe}-seed{self.seed}"


@dataclass
class Scale:
    """How much of an experiment to run (``smoke``: seconds, in the tests; ``cpu``: about an hour on 2 cores)."""

    size: str = "tiny"
    train_steps: int = 10
    batch_size: int = 4
    context: int = 8
    seeds: tuple[int, ...] = (0,)
    eval_episodes: int = 1
    eval_max_steps: int | None = None  # cut evaluation episodes (None: the environments' own limits)
    data: dict = field(default_factory=dict)  # the experiment's data settings


class Experiment:
    """Base class: subclasses say what data they need, which arms they train and (optionally) how to evaluate."""

    name = ""
    claim = ""  # the paper's statement this experiment tests
    notes = ""  # how to read the figures (what the scale leaves out, confounds), printed under the table
    scales: dict[str, Scale] = {}

    def make_data(self, root: Path, scale: Scale, progress: bool) -> list[str]:
        """Make (or find) the datasets under ``root``; returns the training-config overrides that use them."""
        raise NotImplementedError

    def arms(self, scale: Scale) -> list[Arm]:
        raise NotImplementedError

    def train_overrides(self, scale: Scale) -> list[str]:
        """Overrides every arm shares (the recipe at this scale)."""
        return [f"model.size={scale.size}", f"train.steps={scale.train_steps}", f"data.batch_size={scale.batch_size}",
                f"data.context={scale.context}", f"optim.warmup_steps={max(1, scale.train_steps // 20)}",
                "optim.lr=1e-3", "optim.accumulation=1", "data.domain_order=weighted", "data.valid_fraction=0",
                "train.eval_batches=0", f"train.checkpoint_every={max(1, scale.train_steps // 4)}",
                "logging.tensorboard=false", "model.use_images=false", "model.continuous_decode=mean"]

    def verdict(self, results: dict) -> str:
        """One line: does the figure agree with the claim (computed from results.json, never typed)."""
        return "no verdict rule"

    def train_arm(self, arm: Arm, overrides: list[str], run: Path, scale: Scale, progress: bool) -> None:
        """Train one arm into ``run`` (resuming an interrupted run); ``overrides`` = shared + data + arm +
        seed + run dir.  Experiments with several stages (e.g. pretrain, then fine-tune) override this."""
        from lram.training.config import load_config
        from lram.training.trainer import train

        train(load_config(None, overrides), resume=(run / "checkpoints").exists())

    def evaluate(self, arm: Arm, run: Path, scale: Scale, progress: bool) -> dict:
        """The arm's evaluation report (kept as reports/ARM.json; every episode in it)."""
        from lram.evaluation.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(run, episodes=scale.eval_episodes, random_baseline=True,
                                   max_steps=scale.eval_max_steps, progress=progress)

    def summarise(self, results: dict, reports: dict[str, dict], scale: Scale) -> None:
        """Add experiment-specific figures to ``results`` (in place), e.g. return per episode or a dataset
        statistic; kept in results.json.  Default: nothing beyond the per-group aggregates."""

    def extra_table(self, results: dict) -> str:
        """Markdown printed under the main table (from results.json only)."""
        return ""

    def plot_extra(self, results: dict, root: Path) -> list[Path]:
        """Further PNGs under ``root`` (named ``NAME-*.png``) drawn from results.json."""
        return []


def run_experiment(exp: Experiment, scale_name: str, out: str | Path, progress: bool = True) -> dict:
    """Run (or resume) every arm of ``exp`` at ``scale_name`` under ``out/NAME``; returns results.json's content."""
    if scale_name not in exp.scales:
        raise ValueError(f"--scale: {exp.name} has scales {sorted(exp.scales)}, got {scale_name!r}")
    scale = exp.scales[scale_name]
    root = Path(out) / exp.name
    data_overrides = exp.make_data(root / "data", scale, progress)
    reports: dict[str, dict] = {}
    arms = exp.arms(scale)
    for i, arm in enumerate(arms):
        report_path = root / "reports" / f"{arm.name}.json"
        if report_path.exists():  # done in an earlier invocation
            reports[arm.name] = json.loads(report_path.read_text())
            continue
        if progress:
            print(f"[{exp.name}] arm {i + 1}/{len(arms)}: {arm.name}", flush=True)
        run = root / "runs" / arm.name
        exp.train_arm(arm, [*exp.train_overrides(scale), *data_overrides, *arm.overrides, f"train.seed={arm.seed}",
                            f"logging.run_dir={run}"], run, scale, progress)
        report = exp.evaluate(arm, run, scale, progress)
        write_json_atomic(report_path, report)
        reports[arm.name] = report
    results = aggregate(exp, scale_name, scale, arms, reports)
    exp.summarise(results, reports, scale)
    write_json_atomic(root / "results.json", results)
    (root / "table.md").write_text(format_table(results, exp))
    try:
        results["plot"] = str(plot_results(results, root / f"{exp.name}.png"))
        results["plots"] = [str(p) for p in exp.plot_extra(results, root)]
    except ImportError as e:  # matplotlib / rliable missing: the numbers stand without the figure
        results["plot"] = f"not drawn: {e}"
    write_json_atomic(root / "results.json", results)
    return results


def score_matrix(reports: Sequence[dict]) -> tuple[np.ndarray, list[str]]:
    """(seeds x tasks) normalised scores of one group's reports and the task names (``domain/task``); tasks
    without a normalised score in every report (an expert no better than random) are left out."""
    keys = None
    for rep in reports:
        have = {f"{d}/{t}" for d, dom in rep["domains"].items() for t, row in dom["tasks"].items()
                if row.get("normalised_score") is not None}
        keys = have if keys is None else keys & have
    names = sorted(keys or [])
    matrix = np.array([[rep["domains"][n.split("/", 1)[0]]["tasks"][n.split("/", 1)[1]]["normalised_score"]
                        for n in names] for rep in reports], dtype=np.float64)
    return matrix.reshape(len(reports), len(names)), names


def aggregate(exp: Experiment, scale_name: str, scale: Scale, arms: Sequence[Arm], reports: dict[str, dict],
              reps: int = 2000) -> dict:
    """Per group: per-domain mean normalised score, IQM and mean with 95% stratified-bootstrap CIs over
    tasks x seeds (rliable), and the score matrix (for the performance profiles)."""
    from lram.evaluation.plots import interval_estimates

    groups: dict[str, list[Arm]] = {}
    for arm in arms:
        groups.setdefault(arm.group, []).append(arm)
    rows = {}
    for group, members in groups.items():
        reps_ = [reports[a.name] for a in members]
        matrix, tasks = score_matrix(reps_)
        per_domain = {}
        for d in sorted({t.split("/", 1)[0] for t in tasks}):
            cols = [i for i, t in enumerate(tasks) if t.startswith(d + "/")]
            per_domain[d] = float(matrix[:, cols].mean())
        row = {"seeds": [a.seed for a in members], "tasks": tasks, "scores": matrix.tolist(), "domains": per_domain}
        if matrix.size:
            point, ci = interval_estimates(matrix, reps=reps)
            row.update(mean=float(point[0]), iqm=float(point[1]), mean_ci=[float(ci[0][0]), float(ci[1][0])],
                       iqm_ci=[float(ci[0][1]), float(ci[1][1])])
        rows[group] = row
    return {"experiment": exp.name, "claim": exp.claim, "scale": scale_name, "settings": asdict(scale),
            "arms": [a.name for a in arms], "groups": rows,
            "ci": f"95% stratified bootstrap over tasks x seeds (rliable, {reps} reps)"}


def format_table(results: dict, exp: Experiment | None = None) -> str:
    """The Markdown table of results.json: one row per group (and the experiment's extra table under it)."""
    groups = results["groups"]
    domains = sorted({d for g in groups.values() for d in g["domains"]})
    lines = [f"# {results['experiment']} ({results['scale']} scale)", "", f"Claim: {results['claim']}", "",
             "| arm | seeds | " + " | ".join(f"{d} (norm.)" for d in domains) + " | IQM [95% CI] | mean [95% CI] |",
             "|---" * (len(domains) + 4) + "|"]
    for name, g in groups.items():
        cells = [f"{g['domains'][d]:.3f}" if d in g["domains"] else "-" for d in domains]
        iqm = f"{g['iqm']:.3f} [{g['iqm_ci'][0]:.3f}, {g['iqm_ci'][1]:.3f}]" if "iqm" in g else "-"
        mean = f"{g['mean']:.3f} [{g['mean_ci'][0]:.3f}, {g['mean_ci'][1]:.3f}]" if "mean" in g else "-"
        lines.append(f"| {name} | {len(g['seeds'])} | " + " | ".join(cells) + f" | {iqm} | {mean} |")
    lines += ["", f"Normalised score: (R - R_random) / (R_target - R_random) per task; {results['ci']}."]
    extra = exp.extra_table(results) if exp is not None else ""
    if extra:
        lines += ["", extra.strip()]
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path: Path) -> Path:
    """IQM with 95% CIs per group (left) and the performance profiles over tasks x seeds (right; rliable)."""
    from lram.evaluation.plots import _colors, _figure, _load_rliable, _save

    library, metrics, why = _load_rliable()
    if library is None:
        raise ImportError(f"rliable is needed for performance profiles ({why}): pip install 'lram[plots]'")
    groups = {k: g for k, g in results["groups"].items() if g["scores"] and g["tasks"]}
    names = list(groups)
    colors = _colors(names)
    fig = _figure(12.0, max(3.5, 0.45 * len(names) + 2.0))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, n in enumerate(names):
        g = groups[n]
        left.errorbar(g["iqm"], i, xerr=[[g["iqm"] - g["iqm_ci"][0]], [g["iqm_ci"][1] - g["iqm"]]], fmt="o",
                      color=colors[n], capsize=4)
    left.set_yticks(range(len(names)), names)
    left.set_xlabel("IQM normalised score (95% CI)")
    left.set_title(f"{results['experiment']} ({results['scale']})")
    scores = {n: np.asarray(groups[n]["scores"]) for n in names}
    top = max(1.0, max(float(s.max()) for s in scores.values()))
    taus = np.linspace(min(0.0, min(float(s.min()) for s in scores.values())), top, 81)
    profiles, _ = library.create_performance_profile(scores, taus)
    for n in names:
        right.plot(taus, profiles[n], color=colors[n], label=n)
    right.set_xlabel("normalised score tau")
    right.set_ylabel("fraction of runs with score > tau")
    right.legend(fontsize=8, loc="upper right")
    right.set_title("performance profiles (tasks x seeds)")
    return _save(fig, path, {"experiment": results["experiment"], "scale": results["scale"]})
