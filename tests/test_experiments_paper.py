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
