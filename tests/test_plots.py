"""Plots of evaluation reports at the scale users run (hundreds of tasks) and of a run's learning curves: PNG
sizes stay bounded, pages are counted right, and the summary's numbers are the ones computed independently."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402
from PIL import Image  # noqa: E402

from lram.evaluation import EpisodeResult  # noqa: E402
from lram.evaluation.evaluate import assemble_report, plot_report, task_row  # noqa: E402
from lram.evaluation.plots import (  # noqa: E402
    DPI,
    MAX_HEIGHT_IN,
    MAX_WIDTH_IN,
    curve_domains,
    curve_figures,
    curves_page_path,
    plot_learning_curves,
    read_metrics,
    smooth,
    summary_figure,
    summary_statistics,
    task_figures,
    task_pages,
)

# domain -> (tasks, has success, in-context, random baseline, skill: Beta(a, b) over tasks)
DOMAINS = {"metaworld": (120, True, False, True, (4, 2)), "atari": (100, False, False, True, (1, 3)),
           "dmcontrol": (40, False, False, True, (2, 2)), "darkroom": (40, False, True, True, (2, 3))}
EPISODES = 5


def synthetic_report(domains=DOMAINS, episodes=EPISODES, seed=0):
    """A report built as ``evaluate_checkpoint`` builds it (``task_row``, ``assemble_report``) from synthetic
    episodes; one task per domain is held out, one Atari task has target == random (no normalised score)."""
    rng = np.random.default_rng(seed)
    out = {}
    for d, (n, has_success, in_context, baseline, (a, b)) in domains.items():
        rows = {}
        for i in range(n):
            scale = 10 ** rng.uniform(0, 3)
            target, rand_mean = scale, scale * rng.uniform(0, 0.3)
            if d == "atari" and i == 3:
                target = rand_mean = 7.0
            skill = rng.beta(a, b)
            eps, rand = [], []
            for e in range(episodes):
                lift = (e / max(episodes - 1, 1) - 0.5) * 0.4 if in_context else 0.0
                ret = rand_mean + (target - rand_mean) * (skill + lift + rng.normal(0, 0.15))
                succ = bool(rng.random() < skill) if has_success else None
                eps.append(EpisodeResult(e, float(ret), 100, succ))
                noise = 0.0 if target == rand_mean else rng.normal(0, 0.01) * scale
                rand.append(EpisodeResult(e, float(rand_mean + noise), 100, False if has_success else None))
            task = f"{d}-{i:03d}" + ("-with-a-name-longer-than-a-page-can-show" if i % 20 == 7 else "")
            rows[task] = task_row(eps, target, rand if baseline else None, in_training_data=i != n - 1)
        out[d] = (in_context, rows)
    return assemble_report("runs/synthetic/checkpoints/step-00001000", 1000, episodes, 0, out)


def normalised_matrix(dom):
    """(episodes, tasks) per-episode normalised scores, written out independently of lram.evaluation.plots."""
    cols = []
    for r in dom["tasks"].values():
        if not math.isclose(r["target_return"], r["random_return_mean"]):
            cols.append([(e["total_return"] - r["random_return_mean"]) / (r["target_return"] - r["random_return_mean"])
                         for e in r["episodes_detail"]])
    return np.array(cols).T


def png_size(path):
    h, w = imread(path).shape[:2]
    return w, h


@pytest.fixture(scope="module")
def report():
    return synthetic_report()


REPS, SEED = 300, 3


@pytest.fixture(scope="module")
def rendered(report, tmp_path_factory):
    """The 300-task report plotted once (a stale page of an earlier, longer report lies in the folder)."""
    folder = tmp_path_factory.mktemp("plots")
    (folder / "scores-tasks-9.png").write_bytes(b"stale")
    return folder, plot_report(report, folder / "scores.png", reps=REPS, seed=SEED)


def test_report_plots_stay_bounded_and_paginated(report, rendered):
    folder, paths = rendered
    assert paths[0] == folder / "scores.png"
    assert [p.name for p in paths[1:]] == [f"scores-tasks-{k}.png" for k in range(1, 6)]  # 300 tasks, 60 a page
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)  # stale page and temporaries gone
    for p in paths:
        w, h = png_size(p)
        assert w <= MAX_WIDTH_IN * DPI and 500 <= h <= MAX_HEIGHT_IN * DPI, (p.name, w, h)
    # pages: at most 60 tasks, every task once, sorted by score (best first) within each domain
    pages = task_pages(report)
    assert [sum(len(seg.rows) for seg in page) for page in pages] == [60] * 5
    seen = [(seg.domain, task, score) for page in pages for seg in page for task, _, score, _ in seg.rows]
    assert sorted((d, t) for d, t, _ in seen) == sorted((d, t) for d, dom in report["domains"].items() for t in dom["tasks"])
    for d in DOMAINS:
        scores = [sc for dom, _, sc in seen if dom == d]
        scored = [sc for sc in scores if sc is not None]
        assert scored == sorted(scored, reverse=True) and scores[: len(scored)] == scored  # unscored tasks last
    assert len(task_pages(report, 25)) == math.ceil(300 / 25) and len(task_pages(report, 1000)) == 1
    with pytest.raises(ValueError, match="tasks_per_page"):
        plot_report(report, folder / "x.png", tasks_per_page=0)


def test_summary_numbers_equal_an_independent_computation(report, rendered):
    from rliable import library as rly
    from rliable import metrics
    from scipy.stats import trim_mean

    stats = summary_statistics(report, reps=REPS, seed=SEED)
    assert stats["rliable"] and set(stats["domains"]) == {*DOMAINS, "all tasks (pooled)/normalised"}
    for d, dom in report["domains"].items():
        row, mat = stats["domains"][d], normalised_matrix(dom)
        assert row["kind"] == "normalised" and row["tasks"] == mat.shape[1] and row["episodes"] == EPISODES
        assert row["mean"] == pytest.approx(mat.mean()) and row["mean"] == pytest.approx(dom["normalised_score"])
        assert row["iqm"] == pytest.approx(trim_mean(mat.ravel(), 0.25))
        np.random.seed(SEED)  # rliable's stratified bootstrap draws from numpy's global generator
        _, ci = rly.get_interval_estimates(
            {"x": mat}, lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]), reps=REPS)
        assert row["mean_ci"] == pytest.approx(ci["x"][:, 0]) and row["iqm_ci"] == pytest.approx(ci["x"][:, 1])
        assert row["mean_ci"][0] < row["mean"] < row["mean_ci"][1] and row["iqm_ci"][0] < row["iqm"] < row["iqm_ci"][1]
    assert report["domains"]["atari"]["tasks"]["atari-003"]["normalised_score"] is None
    assert stats["domains"]["atari"]["tasks"] == 99
    pooled = np.concatenate([normalised_matrix(dom) for dom in report["domains"].values()], axis=1)
    assert stats["domains"]["all tasks (pooled)/normalised"]["mean"] == pytest.approx(pooled.mean())
    # the summary PNG carries the numbers it shows
    folder, paths = rendered
    assert json.loads(Image.open(paths[0]).text["lram:summary"]) == stats
    state = np.random.get_state()[1].copy()
    summary_statistics(report, reps=50)
    assert (np.random.get_state()[1] == state).all()  # numpy's global generator is left as it was


def test_success_rate_and_return_domains_without_baselines(tmp_path):
    rep = synthetic_report({"metaworld": (12, True, False, False, (2, 2)), "dmcontrol": (6, False, False, False, (2, 2))},
                           episodes=4)
    stats = summary_statistics(rep, reps=200)
    mw = np.array([[float(e["success"]) for e in r["episodes_detail"]] for r in rep["domains"]["metaworld"]["tasks"].values()])
    assert stats["domains"]["metaworld"]["kind"] == "success"
    assert stats["domains"]["metaworld"]["mean"] == pytest.approx(mw.mean())
    assert stats["domains"]["metaworld"]["mean"] == pytest.approx(rep["domains"]["metaworld"]["success_rate"])
    assert stats["domains"]["dmcontrol"]["kind"] == "return"
    returns = [r["return_mean"] for r in rep["domains"]["dmcontrol"]["tasks"].values()]
    assert stats["domains"]["dmcontrol"]["mean"] == pytest.approx(np.mean(returns))
    assert "all tasks (pooled)/success" not in stats["domains"]  # one success domain: nothing to pool
    assert len(task_figures(rep)) == 1 and summary_figure(rep, stats).get_figwidth() <= MAX_WIDTH_IN


def test_without_rliable_the_summary_has_no_intervals(report, monkeypatch):
    monkeypatch.setitem(sys.modules, "rliable", None)  # import rliable -> ImportError
    stats = summary_statistics(report)
    assert not stats["rliable"] and "no confidence intervals" in stats["ci"]
    from scipy.stats import trim_mean

    row, mat = stats["domains"]["dmcontrol"], normalised_matrix(report["domains"]["dmcontrol"])
    assert row["mean_ci"] is None and row["mean"] == pytest.approx(mat.mean())
    assert row["iqm"] == pytest.approx(trim_mean(mat.ravel(), 0.25))  # lram's own IQM (rliable's is not there)
    fig = summary_figure(report, stats)
    assert "no confidence intervals: rliable unavailable" in fig.get_suptitle()


def write_metrics(path, domains=("metaworld", "darkroom", "atari"), steps=300):
    """A metrics.jsonl as MetricsLog writes it: train rows every 10 steps, valid and rollout rows every 100; the
    run was resumed at step 200 after logging up to 250 (steps 210-250 are logged twice, the last ones count)."""
    rng = np.random.default_rng(0)
    rows = []
    for step in list(range(10, 251, 10)) + list(range(210, steps + 1, 10)):
        resumed = len(rows) >= 25
        loss = {f"train/{d}/loss": 2.0 * math.exp(-step / 100) + 0.1 * rng.random() + (9.0 if not resumed and step > 200 else 0)
                for d in domains}
        rows.append({"step": step, "train/loss": float(np.mean(list(loss.values()))), "train/lr": 1e-3 * step / steps,
                     "train/grad_norm": 1.0 + rng.random(), "train/step_time_s": 0.1, **loss})
        if step % 100 == 0:
            valid = (("loss", 2.0 - step / 300), ("perplexity", 3.0), ("accuracy", step / 400))
            rows.append({"step": step, **{f"valid/{d}/{k}": v for d in domains for k, v in valid}})
            roll = {}
            for d in domains[:2]:
                for t in range(3):
                    roll[f"rollout/{d}/task{t}/return"] = step / 10 + t
                    if d == "metaworld":
                        roll[f"rollout/{d}/task{t}/success"] = step / 300
                roll[f"rollout/{d}/return_mean"] = step / 10 + 1
            if "metaworld" in domains[:2]:
                roll["rollout/metaworld/success_rate"] = step / 300
            rows.append({"step": step, **roll})
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"step\": 3")  # last line cut
    return rows


def test_learning_curves_of_a_run(tmp_path):
    run = tmp_path / "run"
    write_metrics(run)
    m = read_metrics(run)
    steps, loss = m["train/loss"]
    assert steps.tolist() == list(range(10, 301, 10))  # each step once, sorted
    assert loss[steps.tolist().index(250)] < 3.0  # the resumed run's value, not the first one (+9)
    assert curve_domains(m) == ["metaworld", "darkroom", "atari"]
    assert m["rollout/metaworld/success_rate"][1].tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert smooth(np.array([1.0, 1.0, 1.0]), 0.9) == pytest.approx([1.0, 1.0, 1.0])  # debiased: no ramp from 0
    paths = plot_learning_curves(run)
    assert paths == [run / "curves.png"]
    w, h = png_size(paths[0])
    assert w == MAX_WIDTH_IN * DPI and 800 <= h <= MAX_HEIGHT_IN * DPI
    # many domains: pages of at most domains_per_page domain rows (figure size in inches x DPI = the PNG's size)
    many = tmp_path / "many"
    write_metrics(many, domains=tuple(f"dom{i}" for i in range(5)), steps=220)
    figs = curve_figures(read_metrics(many), domains_per_page=2)
    assert [len(f.axes) for f in figs] == [3 + 2 * 3, 2 * 3, 1 * 3]
    assert all(f.get_figwidth() <= MAX_WIDTH_IN and f.get_figheight() <= MAX_HEIGHT_IN for f in figs)
    assert [curves_page_path(tmp_path / "c.png", k).name for k in (1, 2, 3)] == ["c.png", "c-2.png", "c-3.png"]
    with pytest.raises(FileNotFoundError, match="no metrics log"):
        read_metrics(tmp_path / "nothing")


def test_plot_command(tmp_path, report, capsys):
    from lram.cli import main

    run = tmp_path / "run"
    write_metrics(run, domains=("darkroom",), steps=100)
    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").exists() and "curves.png" in capsys.readouterr().out
    tasks = dict(list(report["domains"]["darkroom"]["tasks"].items())[:6])
    small = {**report, "domains": {"darkroom": {**report["domains"]["darkroom"], "tasks": tasks}}}
    (tmp_path / "r.json").write_text(json.dumps(small))
    assert main(["plot", str(tmp_path / "r.json"), "--reps", "100", "--tasks-per-page", "4"]) == 0
    assert [p.name for p in sorted(tmp_path.glob("r*.png"))] == ["r-tasks-1.png", "r-tasks-2.png", "r.png"]
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path / "missing")])
    assert e.value.code == 2 and "no metrics log" in capsys.readouterr().err
