"""The ``paper`` scale: every stage's full config (loadable), a launch script of torchrun commands that skips
finished runs and resumes interrupted ones, nothing trained; ``--collect`` evaluates what the script trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lram.experiments import main
from lram.experiments.core import Arm, Experiment, Launch, Scale, run_experiment
from lram.training.config import load_config
from lram.training.trainer import train


def plan_of(tmp_path, name):
    assert main([name, "--scale", "paper", "--out", str(tmp_path), "--quiet"]) == 0
    root = tmp_path / name
    plan = json.loads((root / "plan.json").read_text())
    assert not (root / "runs").exists() and not (root / "reports").exists()  # nothing trained or evaluated
    configs = {k: load_config(v["config"]) for k, v in plan["stages"].items()}
    assert sorted(p.stem for p in (root / "configs").glob("*.yaml")) == sorted(configs)
    return root, plan, configs, (root / "launch.sh").read_text()


def test_backbones_paper_scale_writes_the_recipe_per_arm(tmp_path):
    root, plan, configs, script = plan_of(tmp_path, "backbones")
    assert len(configs) == 12  # 4 backbones x 3 seeds
    kinds = {"xlstm1-0": ("xlstm", []), "xlstm7-1": ("xlstm", None), "mamba": ("mamba", None),
             "transformer": ("transformer", None)}
    for name, cfg in configs.items():
        backbone, seed = name.rsplit("-seed", 1)
        assert cfg.model.size == "206M" and cfg.train.seed == int(seed) and cfg.train.steps == 33334
        assert cfg.model.build().backbone == kinds[backbone][0] and cfg.data.context == 50
        assert [d.name for d in cfg.data.domains] == ["metaworld", "dmcontrol", "procgen", "atari", "composuite",
                                                      "mimicgen"]
        assert cfg.logging.run_dir == str(root / "runs" / name)
    assert configs["xlstm7-1-seed0"].model.build().backbone_options["slstm_at"]  # [7:1] has sLSTM blocks
    assert configs["mamba-seed0"].train.compile is False  # the recipe's own per-backbone settings
    assert script.count("\nstage ") == 12 and "torchrun --nnodes" in script and "--nproc_per_node" in script
    assert "data/atari" in plan["datasets"] and "# Datasets that must be present" in script
    assert script.rstrip().endswith("--collect; fi")
    subprocess.run(["bash", "-n", str(root / "launch.sh")], check=True)


def test_finetune_paper_scale_pretrains_once_per_seed_then_fine_tunes(tmp_path):
    root, plan, configs, script = plan_of(tmp_path, "finetune")
    assert sorted(configs) == sorted(f"{k}-seed{s}" for k in ("pretrain", "fine-tuned", "scratch") for s in range(3))
    for s in range(3):
        pre, ft, sc = configs[f"pretrain-seed{s}"], configs[f"fine-tuned-seed{s}"], configs[f"scratch-seed{s}"]
        assert pre.train.steps == 33334 and ft.train.steps == sc.train.steps == 16667
        assert [d.path for d in pre.data.domains][0] == "data/metaworld"
        assert [d.path for d in ft.data.domains] == [d.path for d in sc.data.domains] and \
            ft.data.domains[0].path == "data/heldout/metaworld"
        assert ft.train.init_from == pre.logging.run_dir and sc.train.init_from == ""
        assert ft.model.build().backbone == "xlstm" and ft.model.size == pre.model.size == "206M"
    # the pretraining runs before the fine-tuning that starts from it
    order = [Path(line.split()[1]).stem for line in script.splitlines() if line.startswith("stage ")]
    assert order.index("pretrain-seed0") < order.index("fine-tuned-seed0")
    assert "data/heldout/procgen" in plan["datasets"]


def test_latency_paper_scale_only_measures(tmp_path):
    root, plan, configs, script = plan_of(tmp_path, "latency")
    assert not configs and "\nstage " not in script and "--collect" in script
    assert plan["settings"]["size"] == "206M" and plan["settings"]["data"]["contexts"][-1] == 25600


def _setting(name, cfg):
    """The experiment-specific setting of a stage's config that its arms vary (or share)."""
    model = cfg.model.build()
    if name == "actions-in-context":
        return cfg.model.action_condition
    if name == "context-length":
        return cfg.data.context
    if name == "slstm-ratio":
        return tuple(model.backbone_options.get("slstm_at", ()))
    return model.backbone


# name -> (arms, stages, the setting per stage (its distinct values))
PAPER_ABLATIONS = {
    "actions-in-context": (6, 6, {False, True}),
    "context-length": (30, 30, {1, 5, 10, 25, 50}),
    "slstm-ratio": (18, 18, {(), (1,), (0,), (1, 4), (1, 3, 5), (0, 1, 2, 3, 4, 5)}),
    "icl-darkroom": (12, 12, {"xlstm", "mamba", "transformer"}),
    "extrapolation": (18, 12, {"xlstm", "mamba", "transformer"}),  # the Transformer variants share its runs
}


@pytest.mark.parametrize("name", sorted(PAPER_ABLATIONS))
def test_ablations_paper_scale_write_loadable_configs(tmp_path, name):
    root, plan, configs, script = plan_of(tmp_path, name)
    arms, stages, settings = PAPER_ABLATIONS[name]
    assert len(plan["arms"]) == arms and len(configs) == stages and script.count("\nstage ") == stages
    assert {_setting(name, cfg) for cfg in configs.values()} == settings
    for stage, cfg in configs.items():
        assert cfg.logging.run_dir == str(root / "runs" / stage) and cfg.train.seed == int(stage.rsplit("seed", 1)[1])
        domains = {d.name: d for d in cfg.data.domains}
        if name == "actions-in-context":  # the paper's 8 action dims, the two continuous-control domains
            assert cfg.model.max_act_dim == 8 and cfg.model.size == "16M" and cfg.data.context == 50
            assert {k: d.path for k, d in domains.items()} == {"metaworld": "data/metaworld",
                                                               "dmcontrol": "data/dmcontrol"}
        elif name == "context-length":  # the recipe's six domains, its own per-backbone file
            assert len(domains) == 6 and cfg.model.size == "16M"
            assert plan["stages"][stage]["recipe"].endswith(("xlstm-1-0_16M.yaml", "transformer_16M.yaml"))
        else:  # Dark-Room in context, from configs/darkroom_icl.yaml
            assert list(domains) == ["darkroom"] and domains["darkroom"].path == "data/darkroom"
            assert domains["darkroom"].in_context and cfg.data.context == 400
            assert plan["stages"][stage]["recipe"].endswith("darkroom_icl.yaml")
    if name == "context-length":
        assert {stage.split("-C=")[0] for stage in configs} == {"xlstm1-0", "transformer"}
        assert all(cfg.data.context == int(stage.split("-C=")[1].split("-")[0]) for stage, cfg in configs.items())
    if name == "actions-in-context":
        assert all(cfg.model.action_condition == ("with-actions" in stage) for stage, cfg in configs.items())
    if name in ("icl-darkroom", "slstm-ratio", "extrapolation"):
        assert plan["settings"]["eval_episodes"] == 40 and list(plan["datasets"]) == ["data/darkroom"]
    assert script.rstrip().endswith("--collect; fi")
    subprocess.run(["bash", "-n", str(root / "launch.sh")], check=True)


def test_actions_in_context_collect_computes_or_skips_the_smoothness(tmp_path, monkeypatch):
    """At collect the data statistic comes from the launch's datasets, or is skipped with a note."""
    from lram.data.episode import Episode
    from lram.data.storage import PaperWriter
    from lram.experiments.actions_in_context import ActionsInContext

    monkeypatch.chdir(tmp_path)
    exp = ActionsInContext()
    scale = exp.scales["paper"]
    exp.launch_data(scale)
    results: dict = {}
    exp.summarise(results, {}, scale)
    assert "not found" in results["action_smoothness"]["note"] and "not computed" in exp.extra_table(results)
    rng = np.random.default_rng(0)
    for domain, task, dims in (("metaworld", "reach-v3", 4), ("dmcontrol", "cartpole-balance", 1)):
        with PaperWriter(Path("data") / domain / task, fmt="npz", compress=False, progress=False) as w:
            for _ in range(2):
                w.write(Episode(states=rng.normal(size=(10, 5)).astype(np.float32),
                                actions=rng.uniform(-1, 1, size=(10, dims)).astype(np.float32),
                                rewards=rng.random(10).astype(np.float32)))
    exp = ActionsInContext()
    exp.launch_data(scale)
    results = {}
    exp.summarise(results, {}, scale)
    assert sorted(results["action_smoothness"]["tasks"]) == ["dmcontrol/cartpole-balance", "metaworld/reach-v3"]
    assert "MSD consecutive" in exp.extra_table(results)


def test_launch_script_trains_pending_stages_and_resumes(tmp_path, monkeypatch):
    """The script as a cluster runs it, with a torchrun that only records its arguments (relative paths)."""
    monkeypatch.chdir(tmp_path)
    root, plan, configs, script = plan_of(Path("results"), "backbones")
    for p in plan["datasets"]:
        (tmp_path / p).mkdir(parents=True)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "torchrun").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls.txt"}\n')
    (fake / "torchrun").chmod(0o755)
    stages = plan["stages"]
    done, partial = stages["mamba-seed1"], stages["transformer-seed2"]
    for st, name in ((done, done["final"]), (partial, "step-00000100")):
        (Path(st["run"]) / "checkpoints").mkdir(parents=True)
        (Path(st["run"]) / "checkpoints" / "latest").write_text(name + "\n")
    env = {**os.environ, "PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}", "NPROC_PER_NODE": "8"}
    out = subprocess.run(["bash", str(root / "launch.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 11 and all("--nproc_per_node=8" in c and "-m lram train" in c for c in calls)
    assert sum("--config" in c for c in calls) == 10 and any(f"--resume {partial['run']}" in c for c in calls)
    assert f"finished: {done['run']}" in out.stdout
    # the fake trained nothing: the collect step refuses, naming the arms still to train
    assert out.returncode != 0 and "not trained yet" in out.stderr and "xlstm1-0-seed0" in out.stderr
    missing = subprocess.run(["bash", str(tmp_path / root / "launch.sh")], cwd=fake, env=env, capture_output=True,
                             text=True)
    assert missing.returncode == 1 and "run this from the directory" in missing.stderr


def test_collect_evaluates_what_the_launch_trained(tmp_path):
    """A tiny launch scale end to end: configs, each stage trained from its YAML (as torchrun would), collect."""
    from lram.data.episode import Episode
    from lram.data.storage import PaperWriter

    rng = np.random.default_rng(0)
    with PaperWriter(tmp_path / "data" / "reach-v3", fmt="npz", compress=False, progress=False) as w:
        for _ in range(4):
            s = rng.normal(size=(20, 39)).astype(np.float32)
            w.write(Episode(states=s, actions=np.tanh(s[:, :4]), rewards=rng.random(20).astype(np.float32)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{size: tiny}}\ndata: {{domains: [{{name: metaworld, path: {tmp_path / 'data'}}}], "
                      "context: 6, batch_size: 2, valid_fraction: 0}\ntrain: {steps: 2, checkpoint_every: 2, eval_batches: 0}\n"
                      "optim: {warmup_steps: 1}\nlogging: {tensorboard: false}\n")

    class Tiny(Experiment):
        name = "tiny-launch"
        scales = {"paper": Scale(size="tiny", eval_episodes=1, eval_max_steps=4, launch=Launch(recipe=str(recipe)))}

        def arms(self, scale):
            return [Arm(b, 0, (f"model.backbone={b}",)) for b in ("xlstm[1:0]", "mamba")]

    exp = Tiny()
    plan = run_experiment(exp, "paper", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match=r"not trained yet: xlstm1-0-seed0 \(xlstm1-0-seed0\); mamba-seed0"):
        run_experiment(exp, "paper", tmp_path / "out", progress=False, collect=True)
    train(load_config(plan["stages"]["mamba-seed0"]["config"]))
    with pytest.raises(FileNotFoundError, match=r"not trained yet: xlstm1-0-seed0 .*1 arm\(s\) evaluated"):
        run_experiment(exp, "paper", tmp_path / "out", progress=False, collect=True)
    train(load_config(plan["stages"]["xlstm1-0-seed0"]["config"]))
    res = run_experiment(exp, "paper", tmp_path / "out", progress=False, collect=True)
    assert list(res["groups"]) == ["xlstm[1:0]", "mamba"] and res["groups"]["mamba"]["tasks"] == ["metaworld/reach-v3"]
    with pytest.raises(ValueError, match="--collect: the smoke scale is run here"):
        run_experiment(EXPERIMENTS_BACKBONES(), "smoke", tmp_path / "x", collect=True)


def EXPERIMENTS_BACKBONES():
    from lram.experiments import EXPERIMENTS

    return EXPERIMENTS["backbones"]()
