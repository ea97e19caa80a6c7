"""`lram train`: configs, schedule, end-to-end runs on data the test writes, exact resume, DDP equivalence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lram
from lram.data.episode import Episode
from lram.training.config import ConfigError, load_config
from lram.training.trainer import Trainer, lr_at, param_groups, train

ROOT = Path(__file__).resolve().parents[1]


def write_domain(root: Path, name: str, tasks: dict, discrete: bool, obs_dim: int = 6, act_dim: int = 3, seed=0):
    """Paper-layout task folders with episodes whose actions depend on the states (learnable)."""
    from lram.data.storage import PaperWriter

    rng = np.random.default_rng(seed)
    for task, n_eps in tasks.items():
        with PaperWriter(root / name / task, fmt="npz", compress=False, progress=False) as w:
            for _ in range(n_eps):
                L = int(rng.integers(20, 60))
                s = rng.normal(size=(L, obs_dim)).astype(np.float32)
                a = (s[:, 0] > 0).astype(np.int64) * 2 if discrete else np.tanh(s[:, :act_dim]).astype(np.float32)
                r = rng.random(L).astype(np.float32)
                w.write(Episode(states=s, actions=a, rewards=r))
    return str(root / name)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_domain(root, "metaworld", {"reach-v3": 40, "push-v3": 40}, discrete=False, obs_dim=39, act_dim=4)
    write_domain(root, "atari", {"pong": 40}, discrete=True, seed=1)
    return root


def make_cfg(data_root: Path, run_dir: Path, *overrides: str):
    base = [
        f"data.domains=[{{name: metaworld, path: {data_root / 'metaworld'}}}, {{name: atari, path: {data_root / 'atari'}}}]",
        "data.context=10", "data.batch_size=8", "model.size=tiny", "model.backbone=xlstm[1:0]",
        "optim.warmup_steps=5", "optim.lr=1e-3", "train.steps=20", "train.log_every=5", "train.checkpoint_every=10",
        "train.eval_batches=2", "logging.tensorboard=false", f"logging.run_dir={run_dir}", "data.valid_fraction=0.05",
    ]
    return load_config(None, base + list(overrides))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"optim: unknown key\(s\) \['lrr'\]; valid keys: \['lr', 'min_lr'"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="train.steps: expected an integer, got 'many'"):
        load_config(None, ["train.steps=many"])
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 3.0e-4\nmodel:\n  size: small\n")
    cfg = load_config(p, ["optim.betas=[0.9, 0.95]"])
    assert cfg.optim.lr == 3e-4 and cfg.model.size == "small" and cfg.optim.betas == [0.9, 0.95]


def test_shipped_configs_load():
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(configs) >= 10
    for c in configs:
        cfg = load_config(c)
        assert cfg.data.domains, c


def test_schedule_and_weight_decay_groups(tmp_path, data_root):
    cfg = make_cfg(data_root, tmp_path / "r", "train.steps=100", "optim.warmup_steps=10", "optim.min_lr=1e-5")
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx((1e-3 + 1e-5) / 2) and lr_at(100, cfg) == pytest.approx(1e-5)
    from lram.models import LRAMPolicy

    model = LRAMPolicy.from_preset("tiny", "xlstm[7:1]")
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert all(n.endswith("bias") or "norm" in n or "embed_ln" in n or n.endswith("skip") for n in nd), nd
    assert "action_head.weight" in {names[id(p)] for p in decay["params"]}


def test_end_to_end_training_checkpoint_and_load(tmp_path, data_root):
    run = tmp_path / "run"
    result = train(make_cfg(data_root, run, "train.steps=30", "logging.tensorboard=true"))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard event file written
    assert (run / "metrics.csv").read_text().startswith("step,key,value")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0]  # it learns
    assert "valid/metaworld/loss" in result and "valid/atari/accuracy" in result
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000010", "step-00000020", "step-00000030"]
    policy = lram.load(run)
    meta = json.loads((ckpts[-1] / "policy.json").read_text())
    assert {d["name"]: d["reward_scale"] for d in meta["domains"]} == {"metaworld": 200.0, "atari": 20.0}
    agent = policy.make_agent(2, discrete=False, action_dims=3, reward_scale=200.0)
    a = agent.act(torch.randn(2, 6), torch.zeros(2), torch.ones(2))
    assert a.shape == (2, 8) and torch.all(a[:, 3:] == 0)


def test_resume_is_exact(tmp_path, data_root):
    straight = tmp_path / "straight"
    train(make_cfg(data_root, straight))
    split = tmp_path / "split"
    train(make_cfg(data_root, split, "train.stop_after=10"))
    from lram.training.trainer import resume_config

    cfg = resume_config(split, ["train.stop_after=0"])
    Trainer(cfg, resume=True).train()
    a = load_file(str(straight / "checkpoints" / "step-00000020" / "model.safetensors"))
    b = load_file(str(split / "checkpoints" / "step-00000020" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_crash_during_checkpoint_keeps_previous(tmp_path, data_root):
    run = tmp_path / "run"
    train(make_cfg(data_root, run, "train.steps=10"))
    (run / "checkpoints" / ".tmp-step-00000020-999").mkdir()  # a half-written checkpoint of a killed run
    (run / "checkpoints" / ".tmp-step-00000020-999" / "model.safetensors").write_bytes(b"garbage")
    assert lram.load(run) is not None
    cfg = make_cfg(data_root, run, "train.steps=12")
    t = Trainer(cfg, resume=True)
    assert t.step == 10


@pytest.mark.slow
def test_ddp_and_fsdp_two_processes_match_one(tmp_path, data_root):
    """torchrun with 2 gloo processes x batch 4 (DDP, and FSDP) gives the loss curve of 1 process x batch 8;
    the FSDP run's checkpoint is a full one that loads as a policy."""
    losses, rollouts = {}, {}
    for name, n, bs, mode in (("one", 1, 8, "auto"), ("ddp", 2, 4, "ddp"), ("fsdp", 2, 4, "fsdp")):
        run = tmp_path / name
        args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_port",
                str(29500 + len(losses)), "-m", "lram", "train", *make_cfg_args(data_root, run), f"data.batch_size={bs}",
                f"train.distributed={mode}", "train.steps=6", "train.checkpoint_every=3", "train.log_every=1",
                "train.eval_batches=0", "train.rollout_episodes=1", "train.rollout_envs=1", "train.rollout_max_steps=3",
                "train.rollout_domains=[metaworld]"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["train/loss"] for r in rows if "train/loss" in r]
        rollouts[name] = {k: v for r in rows for k, v in r.items() if k.startswith("rollout/")}
    assert len(losses["one"]) == 6
    # online rollouts: the two tasks split over the DDP ranks and gathered equal the one-process ones; skipped by FSDP
    assert set(rollouts["one"]) >= {"rollout/metaworld/reach-v3/return", "rollout/metaworld/push-v3/return"}
    assert rollouts["one"].keys() == rollouts["ddp"].keys() and not rollouts["fsdp"]
    assert all(np.isclose(rollouts["one"][k], rollouts["ddp"][k], rtol=1e-3, atol=1e-4) for k in rollouts["one"])
    assert np.allclose(losses["one"], losses["ddp"], rtol=1e-4, atol=1e-5), losses
    assert np.allclose(losses["one"], losses["fsdp"], rtol=1e-4, atol=1e-5), losses
    a = load_file(str(tmp_path / "one" / "checkpoints" / "step-00000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert lram.load(tmp_path / "fsdp") is not None


def make_cfg_args(data_root: Path, run_dir: Path) -> list[str]:
    return [
        f"data.domains=[{{name: metaworld, path: {data_root / 'metaworld'}}}, {{name: atari, path: {data_root / 'atari'}}}]",
        "data.context=10", "model.size=tiny", "optim.warmup_steps=5", "optim.lr=1e-3", "logging.tensorboard=false",
        f"logging.run_dir={run_dir}", "data.valid_fraction=0.05",
    ]


@pytest.mark.slow
def test_sigkill_loses_only_steps_since_last_checkpoint(tmp_path, data_root):
    """A run killed with SIGKILL resumes from its last complete checkpoint."""
    import signal
    import time

    run = tmp_path / "killed"
    args = [sys.executable, "-m", "lram", "train", *make_cfg_args(data_root, run), "data.batch_size=4",
            "train.steps=400", "train.checkpoint_every=5", "train.eval_batches=0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "step-00000010").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "step-00000010").exists(), "no checkpoint written before the kill"
    from lram.models.persistence import resolve_checkpoint
    from lram.training.trainer import resume_config

    last = resolve_checkpoint(run)
    done = int(last.name.split("-")[1])
    assert done >= 10 and (last / "model.safetensors").exists()
    t = Trainer(resume_config(run, ["train.stop_after=" + str(done + 2)]), resume=True)
    assert t.step == done
    t.train()
    assert resolve_checkpoint(run).name == f"step-{done + 2:08d}"


def test_bf16_autocast_trains(tmp_path, data_root):
    """The GPU recipe's bf16 autocast path runs on the CPU too (train.compile=true is checked by hand: its
    compilation takes minutes on 2 cores)."""
    result = train(make_cfg(data_root, tmp_path / "bf16", "train.steps=6", "train.checkpoint_every=0",
                            "train.precision=bf16"))
    assert np.isfinite(result["train/loss"]) and "valid/atari/loss" in result


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, data_root):
    """train.compile=true (torch.compile of the model) trains to the same losses as eager (a few minutes on 2 cores)."""
    runs = {}
    for compile_ in ("false", "true"):
        run = tmp_path / f"compile-{compile_}"
        train(make_cfg(data_root, run, "train.steps=3", "train.checkpoint_every=0", "train.log_every=1",
                       "train.eval_batches=0", f"train.compile={compile_}"))
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        runs[compile_] = [r["train/loss"] for r in rows if "train/loss" in r]
    assert np.allclose(runs["false"], runs["true"], rtol=1e-3), runs
