"""`train.init_from` (weights only, fresh optimizer, checked architecture, the pretrained state standardisation)
and the `finetune` experiment: pretraining once per seed, the fine-tuned arm starting from its weights, every
arm scored on the held-out task with one target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lram.data.episode import Episode
from lram.experiments import main
from lram.models.persistence import resolve_checkpoint
from lram.training.config import ConfigError, load_config
from lram.training.trainer import Trainer, resume_config, train


def write_tasks(root: Path, tasks: dict[str, int], shift: float, seed: int) -> str:
    """Paper-layout Meta-World-shaped tasks (39-d states, 4-d actions that depend on them)."""
    from lram.data.storage import PaperWriter

    rng = np.random.default_rng(seed)
    for task, n in tasks.items():
        with PaperWriter(root / task, fmt="npz", compress=False, progress=False) as w:
            for _ in range(n):
                s = (rng.normal(size=(30, 39)) + shift).astype(np.float32)
                w.write(Episode(states=s, actions=np.tanh(s[:, :4] - shift).astype(np.float32),
                                rewards=rng.random(30).astype(np.float32)))
    return str(root)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 3-step run on two tasks and a second data set (another task, other state statistics)."""
    root = tmp_path_factory.mktemp("init")
    pre = write_tasks(root / "pre", {"reach-v3": 6, "push-v3": 6}, shift=0.0, seed=0)
    new = write_tasks(root / "new", {"door-lock-v3": 4}, shift=3.0, seed=1)
    run = root / "pre-run"
    train(cfg(pre, run))
    return root, new, run


def cfg(data: str, run: Path, *extra: str):
    return load_config(None, [f"data.domains=[{{name: metaworld, path: {data}}}]", "data.context=8",
                              "data.batch_size=4", "model.size=tiny", "optim.warmup_steps=1", "train.steps=3",
                              "train.checkpoint_every=3", "train.eval_batches=0", "data.valid_fraction=0",
                              "logging.tensorboard=false", f"logging.run_dir={run}", *extra])


def test_init_from_copies_the_weights_with_a_fresh_optimizer(pretrained, tmp_path):
    root, new, pre_run = pretrained
    ckpt = resolve_checkpoint(pre_run)
    weights = load_file(str(ckpt / "model.safetensors"))
    t = Trainer(cfg(new, tmp_path / "ft", f"train.init_from={pre_run}", "train.seed=5"))
    assert t.step == 0 and not t.optimizer.state  # a new run: step 0, no Adam moments
    state = t.model.state_dict()
    assert set(state) == set(weights) and all(torch.equal(state[k], weights[k]) for k in weights)
    # a random initialisation differs (so the equality above is the copy, not a seed coincidence)
    fresh = Trainer(cfg(new, tmp_path / "scratch", "train.seed=5")).model.state_dict()
    assert any(not torch.equal(fresh[k], weights[k]) for k in weights)
    # the pretrained state standardisation is kept (the new data's mean is ~3 higher)
    meta = json.loads((ckpt / "policy.json").read_text())["domains"][0]
    assert np.allclose(t.domains[0].state_mean, meta["state_mean"]) and np.allclose(t.specs[0].state_std, meta["state_std"])
    own = Trainer(cfg(new, tmp_path / "scratch2")).domains[0].state_mean
    assert own.mean() > np.mean(meta["state_mean"]) + 2
    # a checkpoint trained on raw states: its fine-tuning feeds raw states too
    train(cfg(str(root / "pre"), tmp_path / "raw", "data.normalize_states=false"))
    assert Trainer(cfg(new, tmp_path / "ft-raw", f"train.init_from={tmp_path / 'raw'}")).domains[0].state_mean is None


def test_init_from_errors(pretrained, tmp_path):
    root, new, pre_run = pretrained
    with pytest.raises(ConfigError, match=r"train.init_from: .*no checkpoint found"):
        Trainer(cfg(new, tmp_path / "a", f"train.init_from={root / 'nowhere'}"))
    with pytest.raises(ConfigError, match=r"another architecture: backbone 'xlstm' there, 'mamba' here"):
        Trainer(cfg(new, tmp_path / "b", f"train.init_from={pre_run}", "model.backbone=mamba"))
    with pytest.raises(ConfigError, match=r"d_model 128 there, 256 here"):
        Trainer(cfg(new, tmp_path / "c", f"train.init_from={pre_run}", "model.size=small"))
    # a decoding option is no architecture: allowed
    Trainer(cfg(new, tmp_path / "d", f"train.init_from={pre_run}", "model.continuous_decode=mean"))


def test_init_from_an_image_policy_keeps_its_encoder_on_vector_data(pretrained, tmp_path):
    from lram.models import LRAMConfig, LRAMPolicy
    from lram.models.persistence import save_pretrained

    root, new, _ = pretrained
    torch.manual_seed(1)
    save_pretrained(tmp_path / "img", LRAMPolicy(LRAMConfig.from_preset("tiny", "xlstm[1:0]", use_images=True)))
    t = Trainer(cfg(new, tmp_path / "ft", f"train.init_from={tmp_path / 'img'}"))
    weights = load_file(str(tmp_path / "img" / "model.safetensors"))
    assert t.model.image_encoder is not None and all(torch.equal(t.model.state_dict()[k], weights[k]) for k in weights)
    assert Trainer(cfg(new, tmp_path / "plain")).model.image_encoder is None  # without init_from: none


def test_a_resumed_fine_tuning_continues_from_its_own_checkpoint(pretrained, tmp_path):
    root, new, pre_run = pretrained
    run = tmp_path / "ft"
    train(cfg(new, run, f"train.init_from={pre_run}"))
    own = load_file(str(resolve_checkpoint(run) / "model.safetensors"))
    pre = load_file(str(resolve_checkpoint(pre_run) / "model.safetensors"))
    t = Trainer(cfg(new, run, f"train.init_from={pre_run}", "train.steps=5"), resume=True)
    assert t.step == 3 and t.optimizer.state
    state = t.model.state_dict()
    assert all(torch.equal(state[k], own[k]) for k in own) and any(not torch.equal(own[k], pre[k]) for k in own)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    assert main(["finetune", "--scale", "smoke", "--out", str(out), "--quiet"]) == 0
    return out / "finetune"


def test_finetune_smoke_trains_both_stages_and_scores_the_held_out_task(smoke):
    results = json.loads((smoke / "results.json").read_text())
    assert list(results["groups"]) == ["fine-tuned", "scratch", "zero-shot"]
    for g in results["groups"].values():
        assert g["tasks"] == ["metaworld/door-lock-v3"] and "iqm_ci" in g  # held-out task only
    runs = sorted(p.name for p in (smoke / "runs").iterdir())
    assert runs == ["fine-tuned-seed0", "pretrain-seed0", "scratch-seed0"]  # one pretraining, shared
    reports = {p.stem: json.loads(p.read_text()) for p in (smoke / "reports").glob("*.json")}
    rows = {k: r["domains"]["metaworld"]["tasks"]["door-lock-v3"] for k, r in reports.items()}
    assert len({r["target_return"] for r in rows.values()}) == 1  # one target for every arm
    assert not rows["zero-shot-seed0"]["in_training_data"] and rows["fine-tuned-seed0"]["in_training_data"]
    assert Path(reports["zero-shot-seed0"]["checkpoint"]).parent.parent.name == "pretrain-seed0"
    assert "Held-out tasks" in (smoke / "table.md").read_text()


def test_the_fine_tuned_arm_starts_from_the_pretrained_weights(smoke):
    ft_cfg = resume_config(smoke / "runs" / "fine-tuned-seed0")
    assert Path(ft_cfg.train.init_from) == smoke / "runs" / "pretrain-seed0"
    assert resume_config(smoke / "runs" / "scratch-seed0").train.init_from == ""
    pre = load_file(str(resolve_checkpoint(smoke / "runs" / "pretrain-seed0") / "model.safetensors"))
    assert json.loads((resolve_checkpoint(smoke / "runs" / "pretrain-seed0") / "policy.json").read_text())["step"] == 4
    ft_cfg.logging.run_dir = str(smoke / "rebuilt")  # the arm's own config, built afresh: its initial weights
    start = Trainer(ft_cfg).model.state_dict()
    assert all(torch.equal(start[k], pre[k]) for k in pre)
    done = load_file(str(resolve_checkpoint(smoke / "runs" / "fine-tuned-seed0") / "model.safetensors"))
    assert any(not torch.equal(done[k], pre[k]) for k in pre)  # and it trained from there
    # a second invocation trains and evaluates nothing (every arm has its report)
    stamp = (smoke / "runs" / "pretrain-seed0" / "checkpoints" / "latest").stat().st_mtime_ns
    assert main(["finetune", "--scale", "smoke", "--out", str(smoke.parent), "--quiet"]) == 0
    assert (smoke / "runs" / "pretrain-seed0" / "checkpoints" / "latest").stat().st_mtime_ns == stamp


def test_finetune_verdict_is_computed_from_the_figures():
    from lram.experiments.finetune import Finetune

    def res(ft, sc):
        g = lambda m, lo, hi: {"iqm": m, "iqm_ci": [lo, hi], "domains": {"metaworld": m}}  # noqa: E731
        return {"scale": "cpu", "groups": {"fine-tuned": g(*ft), "scratch": g(*sc)}}

    exp = Finetune()
    assert exp.verdict(res((0.8, 0.7, 0.9), (0.4, 0.3, 0.5))).startswith("agrees")
    assert exp.verdict(res((0.2, 0.1, 0.3), (0.6, 0.5, 0.7))).startswith("disagrees")
    assert exp.verdict(res((0.5, 0.3, 0.7), (0.45, 0.3, 0.6))).startswith("inconclusive")


def test_finetune_scales_hold_out_ml45_test_tasks():
    from lram.envs.metaworld import ML45_TEST_TASKS, ML45_TRAIN_TASKS
    from lram.experiments.finetune import Finetune

    for name in ("smoke", "cpu"):
        d = Finetune.scales[name].data
        assert set(d["pretrain_tasks"]) <= set(ML45_TRAIN_TASKS) and set(d["heldout_tasks"]) <= set(ML45_TEST_TASKS)
    assert len(Finetune.scales["cpu"].seeds) >= 3
