"""The experiment runner: data once, every arm trained and evaluated (resumable), aggregates as the field reports
them (per-domain normalised scores, IQM with 95% stratified-bootstrap CIs over tasks x seeds, performance
profiles; rliable), a Markdown table and a PNG.

    results/NAME/
        data/                 the experiment's datasets (made once, kept)
        runs/STAGE/           each training stage's run (checkpoints; an interrupted run resumes, a finished one
                              is kept); one stage per arm unless the experiment declares more (pretrain, fine-tune)
        reports/ARM.json      each arm's evaluation report (every episode); an arm with a report is done
        results.json          scale, arms, per-group aggregates
        table.md              the table of results.json
        NAME.png              IQM with CIs per group, and the performance profiles

A scale with a :class:`Launch` (``paper``: GPU clusters) is not run here: ``run_experiment`` writes every
stage's full training config and a launch script of torchrun commands (:func:`write_launch`), and with
``collect=True`` (``lram experiment NAME --scale paper --collect``, the script's last line) evaluates the
trained arms and aggregates as above.

    results/NAME/configs/STAGE.yaml   the full config of each stage (loads with lram.training.config.load_config)
    results/NAME/launch.sh            torchrun per stage (skips finished ones, resumes interrupted ones), then --collect
    results/NAME/plan.json            the stages, their configs and the datasets they need
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lram.utils.io import atomic_path, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[3]  # where configs/ lives in a source checkout

# What the paper's training data is and where it comes from (spec 4.1), by domain name.
PAPER_DATASETS = {
    "metaworld": "Meta-World ML45 training tasks, 2M transitions each (SAC replay, HF ml-jku/meta-world); "
                 "stand-in: lram data generate metaworld DIR --tasks ml45-train (scripted experts)",
    "dmcontrol": "11 DMControl tasks, 10M transitions each (SAC, HF ml-jku/dm_control_10M); "
                 "stand-in: lram data generate dmcontrol",
    "procgen": "12 Procgen games, easy mode, levels 0-199 (PPO data of RA-DT); stand-in: lram data generate procgen",
    "atari": "41 Atari games, DQN-Replay expert slices (lram data import dqn-replay)",
    "composuite": "240 CompoSuite expert datasets (Dryad; lram data import composuite)",
    "mimicgen": "83 MimicGen datasets (24 core + HF ml-jku/mimicgen59; lram data import mimicgen)",
    "darkroom": "Dark-Room learning histories (lram data generate darkroom)",
}


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
class Launch:
    """How a scale too large for this machine is run elsewhere (the ``paper`` scale: GPU nodes via torchrun).
    Each stage's config is ``recipe`` (``{backbone}``: the stage's ``model.backbone`` written as the
    configs/paper files name it, e.g. xlstm-1-0; ``{size}``: the scale's size) plus the stage's overrides."""

    recipe: str = "configs/paper/{backbone}_{size}.yaml"
    nproc_per_node: int = 4  # the paper: one node of 4 A100s
    nnodes: int = 1
    datasets: dict[str, str] = field(default_factory=dict)  # dataset path -> what it is (default: PAPER_DATASETS)


@dataclass
class Scale:
    """How much of an experiment to run (``smoke``: seconds, in the tests; ``cpu``: under an hour on 2 cores;
    ``paper``: a :class:`Launch`, whose recipe file sets the training settings: train_steps, batch_size and
    context are then unused unless the experiment's overrides use them)."""

    size: str = "tiny"
    train_steps: int = 10
    batch_size: int = 4
    context: int = 8
    seeds: tuple[int, ...] = (0,)
    eval_episodes: int = 1
    eval_max_steps: int | None = None  # cut evaluation episodes (None: the environments' own limits)
    data: dict = field(default_factory=dict)  # the experiment's data settings
    eval_workers: int = 1  # processes the evaluation's tasks are spread over
    launch: Launch | None = None  # not run here: configs and a launch script are written (see write_launch)


@dataclass(frozen=True)
class Stage:
    """One training run of an arm: the full overrides (``logging.run_dir`` among them) and its folder."""

    name: str
    overrides: tuple[str, ...]
    run: Path


class Experiment:
    """Base class: subclasses say what data they need, which arms they train and (optionally) how to evaluate."""

    name = ""
    claim = ""  # the paper's statement this experiment tests
    notes = ""  # how to read the figures (what the scale leaves out, confounds), printed under the table
    scales: dict[str, Scale] = {}
    # False: the reports are not episode scores (e.g. timings): no per-group score aggregates, score table or
    # profile plot; summarise / extra_table / plot_extra carry the results
    scored = True

    def make_data(self, root: Path, scale: Scale, progress: bool) -> list[str]:
        """Make (or find) the datasets under ``root``; returns the training-config overrides that use them."""
        raise NotImplementedError

    def launch_data(self, scale: Scale) -> list[str]:
        """At a launch scale (instead of make_data): the overrides naming the datasets that must be present
        where the launch script runs.  Default: none (the recipe's own domains)."""
        return []

    def arms(self, scale: Scale) -> list[Arm]:
        raise NotImplementedError

    def train_overrides(self, scale: Scale) -> list[str]:
        """Overrides every arm shares (the recipe at this scale; none at a launch scale: its recipe file)."""
        if scale.launch is not None:
            return []
        return [f"model.size={scale.size}", f"train.steps={scale.train_steps}", f"data.batch_size={scale.batch_size}",
                f"data.context={scale.context}", f"optim.warmup_steps={max(1, scale.train_steps // 20)}",
                "optim.lr=1e-3", "optim.accumulation=1", "data.domain_order=weighted", "data.valid_fraction=0",
                "train.eval_batches=0", f"train.checkpoint_every={max(1, scale.train_steps // 4)}",
                "logging.tensorboard=false", "model.use_images=false", "model.continuous_decode=mean"]

    def verdict(self, results: dict) -> str:
        """One line: does the figure agree with the claim (computed from results.json, never typed)."""
        return "no verdict rule"

    def stages(self, arm: Arm, overrides: list[str], run: Path, scale: Scale) -> list[Stage]:
        """The training runs of an arm, in order; ``overrides`` = shared + data + arm + seed + run dir.  Default:
        one, into ``run``.  Several stages (pretrain, then fine-tune from its weights with ``train.init_from``)
        serve the local run and the launch script alike; a stage shared by arms (one pretraining per seed)
        keeps its name and folder, and is trained once."""
        return [Stage(arm.name, tuple(overrides), run)]

    def train_arm(self, arm: Arm, overrides: list[str], run: Path, scale: Scale, progress: bool) -> None:
        """Train the arm's stages (each resumed if interrupted, skipped if finished)."""
        for stage in self.stages(arm, overrides, run, scale):
            train_stage(stage)

    def evaluate(self, arm: Arm, run: Path, scale: Scale, progress: bool) -> dict:
        """The arm's evaluation report (kept as reports/ARM.json; every episode in it)."""
        from lram.evaluation.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(run, episodes=scale.eval_episodes, random_baseline=True,
                                   max_steps=scale.eval_max_steps, workers=scale.eval_workers, progress=progress)

    def summarise(self, results: dict, reports: dict[str, dict], scale: Scale) -> None:
        """Add experiment-specific figures to ``results`` (in place), e.g. return per episode or a dataset
        statistic; kept in results.json.  Default: nothing beyond the per-group aggregates."""

    def extra_table(self, results: dict) -> str:
        """Markdown printed under the main table (from results.json only)."""
        return ""

    def plot_extra(self, results: dict, root: Path) -> list[Path]:
        """Further PNGs under ``root`` (named ``NAME-*.png``) drawn from results.json."""
        return []


def separated(a: dict, b: dict) -> str:
    """'above' when group ``a``'s IQM CI lies wholly above ``b``'s, 'below' when wholly below, else 'overlap'."""
    if a["iqm_ci"][0] > b["iqm_ci"][1]:
        return "above"
    if a["iqm_ci"][1] < b["iqm_ci"][0]:
        return "below"
    return "overlap"


def ci_verdict(a: dict, b: dict, fig: str, higher: str, no_gain: str, worse: str) -> str:
    """The verdict on a claim that group ``a`` beats group ``b``: agrees when a's IQM CI lies above b's, partly
    when they overlap with a's IQM higher, disagrees otherwise (the reasons named by the caller)."""
    side = separated(a, b)
    if side == "above":
        return f"agrees: {fig}"
    if side == "overlap" and a["iqm"] > b["iqm"]:
        return f"partly: {fig} ({higher}, CIs overlap)"
    if side == "overlap":
        return f"disagrees: {fig} ({no_gain}; CIs overlap)"
    return f"disagrees: {fig} ({worse})"


def final_step(run: Path) -> int | None:
    """The step of a run's newest checkpoint (None: no checkpoint)."""
    from lram.models.persistence import CheckpointError, checkpoint_folders, read_metadata

    for folder in checkpoint_folders(run):
        try:
            return int(read_metadata(folder).get("step") or 0)
        except CheckpointError:
            continue
    return None


def stage_config(stage: Stage, base: Path | None = None):
    """The stage's :class:`lram.training.config.Config` (``base``: the recipe file at a launch scale)."""
    from lram.training.config import load_config

    return load_config(base, list(stage.overrides))


def stage_finished(stage: Stage, base: Path | None = None) -> bool:
    step = final_step(stage.run)
    return step is not None and step >= stage_config(stage, base).train.steps


def launched_stage_finished(stage: Stage, root: Path, scale: Scale) -> bool:
    """Whether a launch scale's stage reached the steps of its written config (as edited, if it was)."""
    from lram.training.config import load_config

    written = root / "configs" / f"{stage.name}.yaml"
    if not written.exists():
        return stage_finished(stage, recipe_path(scale.launch, stage, scale.size))
    step = final_step(stage.run)
    return step is not None and step >= load_config(written).train.steps


def train_stage(stage: Stage) -> None:
    """Train one stage here, unless its run already holds its final checkpoint; an interrupted run resumes."""
    from lram.training.trainer import train

    if not stage_finished(stage):
        train(stage_config(stage), resume=(stage.run / "checkpoints").exists())


def recipe_path(launch: Launch, stage: Stage, size: str) -> Path:
    """The recipe file of a stage at a launch scale (FileNotFoundError naming it when missing): relative to
    the working directory, else to the source checkout; a backbone without its own file takes xLSTM [1:0]'s
    (the stage's overrides set its backbone)."""
    backbone = "xlstm[1:0]"
    for o in stage.overrides:
        if o.startswith("model.backbone="):
            backbone = o.split("=", 1)[1]
    tried = []
    for b in (backbone, "xlstm[1:0]"):
        name = launch.recipe.format(backbone=b.replace("[", "-").replace("]", "").replace(":", "-"), size=size)
        for path in (Path(name), REPO_ROOT / name):
            if path.exists():
                return path
            tried.append(str(path))
    raise FileNotFoundError(f"the recipe of stage {stage.name}: none of {tried} exists")


def _stage_plan(exp: Experiment, scale: Scale, root: Path, data_overrides: list[str]) -> dict[str, list]:
    """Per arm: its run folder, overrides and stages."""
    plan = {}
    for arm in exp.arms(scale):
        run = root / "runs" / arm.name
        overrides = [*exp.train_overrides(scale), *data_overrides, *arm.overrides, f"train.seed={arm.seed}",
                     f"logging.run_dir={run}"]
        plan[arm.name] = [arm, run, overrides, exp.stages(arm, overrides, run, scale)]
    return plan


def write_launch(exp: Experiment, scale_name: str, scale: Scale, root: Path) -> dict:
    """Write every stage's full training config, ``launch.sh`` and ``plan.json`` under ``root``; trains nothing.
    Returns the plan (stages, configs, datasets)."""
    import yaml

    launch = scale.launch
    stages: dict[str, tuple[Stage, Path, object]] = {}
    for _, _, _, arm_stages in _stage_plan(exp, scale, root, exp.launch_data(scale)).values():
        for st in arm_stages:
            if st.name not in stages:  # a stage shared by arms (one pretraining per seed) is trained once
                base = recipe_path(launch, st, scale.size)
                stages[st.name] = (st, base, stage_config(st, base))
    datasets: dict[str, str] = {}
    for *_, cfg in stages.values():
        for d in cfg.data.domains:
            datasets.setdefault(d.path, launch.datasets.get(d.path) or f"{d.name}: {PAPER_DATASETS.get(d.name, '')}")
    command = f"python -m lram experiment {exp.name} --scale {scale_name} --out {shlex.quote(str(root.parent))}"
    configs = {}
    for name, (st, base, cfg) in stages.items():
        path = root / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False)
        with atomic_path(path) as tmp:
            tmp.write_text(f"# lram experiment {exp.name}, {scale_name} scale: stage {name} ({base} + the "
                           f"experiment's overrides); written by `{command}`.\n{body}")
        configs[name] = {"config": str(path), "run": str(st.run), "final": f"step-{cfg.train.steps:08d}",
                         "recipe": str(base), "init_from": cfg.train.init_from or None}
    lines = ["#!/usr/bin/env bash",
             f"# lram experiment {exp.name} at the {scale_name} scale: {len(stages)} training run(s) of "
             f"{len(exp.arms(scale))} arm(s), then evaluation and aggregates.",
             f"# Written by `{command}`; run it from the directory that command ran in (paths are relative to it).",
             "# Datasets that must be present there:" if datasets else "# No datasets needed.",
             *[f"#   {p}  {what}" for p, what in datasets.items()],
             f"# Hardware: NNODES={launch.nnodes} node(s) x NPROC_PER_NODE={launch.nproc_per_node} GPUs (torchrun). Several "
             "nodes: run this on each with NODE_RANK and MASTER_ADDR set, on a shared file system.",
             "# Re-running resumes: a finished run is skipped, an interrupted one continues from its latest checkpoint.",
             "set -euo pipefail",
             f"[ -f {shlex.quote(str(root / 'launch.sh'))} ] || {{ echo 'run this from the directory where "
             f"`lram experiment` wrote it (cd there first)' >&2; exit 1; }}",
             f'NNODES="${{NNODES:-{launch.nnodes}}}" NODE_RANK="${{NODE_RANK:-0}}"',
             f'NPROC_PER_NODE="${{NPROC_PER_NODE:-{launch.nproc_per_node}}}"',
             'MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}" MASTER_PORT="${MASTER_PORT:-29500}"',
             *([f"for d in {' '.join(shlex.quote(p) for p in datasets)}; do",
                '  [ -e "$d" ] || { echo "missing dataset: $d (see the list at the top of this script)" >&2; exit 1; }',
                "done"] if datasets else []),
             "stage() {  # stage CONFIG RUN_DIR FINAL_CHECKPOINT",
             '  if [ "$(cat "$2/checkpoints/latest" 2>/dev/null)" = "$3" ]; then echo "finished: $2"; return; fi',
             '  local how=(--config "$1"); [ -e "$2/checkpoints/latest" ] && how=(--resume "$2")',
             '  torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \\',
             '    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" -m lram train "${how[@]}"',
             "}",
             *[f"stage {shlex.quote(c['config'])} {shlex.quote(c['run'])} {c['final']}" for c in configs.values()],
             "# evaluation of every trained arm and the aggregates (one process, on the first node)",
             f'if [ "$NODE_RANK" = 0 ]; then {command} --collect; fi', ""]
    script = root / "launch.sh"
    with atomic_path(script) as tmp:
        tmp.write_text("\n".join(lines))
    script.chmod(0o755)
    plan = {"experiment": exp.name, "scale": scale_name, "settings": json.loads(json.dumps(asdict(scale))),
            "arms": [a.name for a in exp.arms(scale)], "stages": configs, "datasets": datasets,
            "launch": str(script), "collect": f"{command} --collect"}
    write_json_atomic(root / "plan.json", plan)
    return plan


def run_experiment(exp: Experiment, scale_name: str, out: str | Path, progress: bool = True,
                   collect: bool = False) -> dict:
    """Run (or resume) every arm of ``exp`` at ``scale_name`` under ``out/NAME``; returns results.json's content.
    A launch scale writes its configs and launch script instead (returns the plan), and with ``collect``
    evaluates the arms trained by that script and aggregates them (FileNotFoundError naming the others)."""
    if scale_name not in exp.scales:
        raise ValueError(f"--scale: {exp.name} has scales {sorted(exp.scales)}, got {scale_name!r}")
    scale = exp.scales[scale_name]
    root = Path(out) / exp.name
    if collect and scale.launch is None:
        raise ValueError(f"--collect: the {scale_name} scale is run here, not launched; run it without --collect")
    if scale.launch is not None and not collect:
        return write_launch(exp, scale_name, scale, root)
    data_overrides = exp.launch_data(scale) if collect else exp.make_data(root / "data", scale, progress)
    reports: dict[str, dict] = {}
    plan = _stage_plan(exp, scale, root, data_overrides)
    arms = [p[0] for p in plan.values()]
    untrained = []
    for i, (arm, run, overrides, stages) in enumerate(plan.values()):
        report_path = root / "reports" / f"{arm.name}.json"
        if report_path.exists():  # done in an earlier invocation
            reports[arm.name] = json.loads(report_path.read_text())
            continue
        if collect:
            pending = [s.name for s in stages if not launched_stage_finished(s, root, scale)]
            if pending:
                untrained.append(f"{arm.name} ({', '.join(pending)})")
                continue
        if progress:
            print(f"[{exp.name}] arm {i + 1}/{len(arms)}: {arm.name}", flush=True)
        if not collect:
            exp.train_arm(arm, overrides, run, scale, progress)
        report = exp.evaluate(arm, run, scale, progress)
        write_json_atomic(report_path, report)
        reports[arm.name] = report
    if untrained:
        raise FileNotFoundError(f"--collect: not trained yet: {'; '.join(untrained)} (run {root / 'launch.sh'}); "
                                f"{len(reports)} arm(s) evaluated")
    results = aggregate(exp, scale_name, scale, arms, reports)
    exp.summarise(results, reports, scale)
    write_json_atomic(root / "results.json", results)
    (root / "table.md").write_text(format_table(results, exp))
    try:
        results["plot"] = str(plot_results(results, root / f"{exp.name}.png")) if exp.scored else "none (not scored)"
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
        if not exp.scored:
            rows[group] = {"seeds": [a.seed for a in members]}
            continue
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
    return {"experiment": exp.name, "claim": exp.claim, "notes": exp.notes, "scale": scale_name, "settings": asdict(scale),
            "arms": [a.name for a in arms], "groups": rows, "scored": exp.scored,
            "ci": f"95% stratified bootstrap over tasks x seeds (rliable, {reps} reps)"}


def format_table(results: dict, exp: Experiment | None = None) -> str:
    """The Markdown table of results.json: one row per group (and the experiment's extra table under it)."""
    groups = results["groups"]
    lines = [f"# {results['experiment']} ({results['scale']} scale)", "", f"Claim: {results['claim']}", ""]
    extra = exp.extra_table(results) if exp is not None else ""
    if not results.get("scored", True):  # e.g. timings: the experiment's own table is the result
        return "\n".join([*lines, extra.strip()]) + "\n"
    domains = sorted({d for g in groups.values() for d in g["domains"]})
    lines += ["| arm | seeds | " + " | ".join(f"{d} (norm.)" for d in domains) + " | IQM [95% CI] | mean [95% CI] |",
             "|---" * (len(domains) + 4) + "|"]
    for name, g in groups.items():
        cells = [f"{g['domains'][d]:.3f}" if d in g["domains"] else "-" for d in domains]
        iqm = f"{g['iqm']:.3f} [{g['iqm_ci'][0]:.3f}, {g['iqm_ci'][1]:.3f}]" if "iqm" in g else "-"
        mean = f"{g['mean']:.3f} [{g['mean_ci'][0]:.3f}, {g['mean_ci'][1]:.3f}]" if "mean" in g else "-"
        lines.append(f"| {name} | {len(g['seeds'])} | " + " | ".join(cells) + f" | {iqm} | {mean} |")
    lines += ["", f"Normalised score: (R - R_random) / (R_target - R_random) per task; {results['ci']}."]
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
    fig.tight_layout()  # keep the axis labels inside the figure
    return _save(fig, path, {"experiment": results["experiment"], "scale": results["scale"]})
