"""The model's own persistence: typed domain specs, verified weights, older checkpoints, damaged checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lram.data.sampler import DomainData
from lram.models import LRAMPolicy
from lram.models.domain import DomainSpec, TaskSpec
from lram.models.persistence import CheckpointError, load_pretrained, verify_checkpoint
from lram.models.policy import RecurrentAgent, TrajectoryBatch
from lram.models.state import RecurrentState
from lram.training.checkpoint import resumable_checkpoint, save_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v1"  # written by lram at commit 8aad813


def small_policy(seed=0) -> LRAMPolicy:
    torch.manual_seed(seed)
    return LRAMPolicy.from_preset("tiny", "mamba", use_images=False).eval()


def mixed_domain() -> DomainSpec:
    return DomainSpec("dmcontrol", False, 100.0, tasks={
        "cartpole-swingup": TaskSpec("cartpole-swingup", 1, None, (5,), 800.0),
        "walker-stand": TaskSpec("walker-stand", 6, None, (24,), 950.0)},
        state_mean=[0.0] * 24, state_std=[1.0] * 24)


def test_format_1_checkpoint_loads_and_acts_as_it_did():
    """A checkpoint written by an earlier lram (untyped domain registry, no checksum) loads with typed specs
    and its agents act exactly as they did when it was written."""
    policy = LRAMPolicy.from_pretrained(FIXTURE)
    assert policy.checkpoint["step"] == 7 and not policy.training
    dmc, room = policy.domains["dmcontrol"], policy.domains["darkroom"]
    assert dmc.tasks["cartpole-swingup"] == TaskSpec("cartpole-swingup", 1, None, (5,), 812.5)
    assert room.discrete and room.in_context and not room.return_condition and room.num_actions == 5
    assert room.default_target("goal-7-1") == 77.0 and room.default_target("held-out") == 81.0
    rec = json.loads((FIXTURE / "expected_actions.json").read_text())
    obs = torch.tensor(rec["obs"])
    a = RecurrentAgent.for_task(policy, dmc, dmc.tasks["cartpole-swingup"], 2)
    b = RecurrentAgent.for_task(policy, room, room.tasks["goal-3-4"], 2)
    with torch.inference_mode():
        for t in range(6):
            act = a.act(obs[t], torch.full((2,), 0.5 * t), torch.full((2,), 800.0 - t))
            torch.testing.assert_close(a.last_logits[:, 0], torch.tensor(rec["continuous_logits"][t]), atol=1e-5, rtol=0)
            torch.testing.assert_close(act, torch.tensor(rec["continuous"][t]))
            assert b.act(obs[t, :, :2], torch.full((2,), float(t % 2)), torch.zeros(2)).tolist() == rec["discrete"][t]


def test_domain_spec_keeps_each_tasks_action_layout():
    tasks = [SimpleNamespace(task="cartpole-swingup", discrete=False, action_dim=1, obs_shape=(5,),
                             returns=np.array([3.0, 812.5])),
             SimpleNamespace(task="walker-stand", discrete=False, action_dim=6, obs_shape=(24,), returns=np.array([950.0]))]
    spec = DomainSpec.from_data(DomainData("dmcontrol", tasks, reward_scale=100.0, state_mean=np.zeros(24),
                                           state_std=np.ones(24)))
    assert [t.action_dim for t in spec.tasks.values()] == [1, 6]
    assert spec.default_target("cartpole-swingup") == 812.5 and spec.default_target("other") == 950.0
    assert DomainSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="malformed"):
        DomainSpec.from_dict({"name": "x"})
    held_out = spec.task_for("hopper-stand", SimpleNamespace(shape=(4,)))
    assert held_out.action_dim == 4 and held_out.best_return == 950.0


def test_save_and_load_pretrained(tmp_path):
    policy = small_policy()
    folder = policy.save_pretrained(tmp_path / "policy", [mixed_domain()], step=12)
    meta = verify_checkpoint(folder)
    assert meta["format"] == 2 and len(meta["weights"]["sha256"]) == 64
    loaded = LRAMPolicy.from_pretrained(folder)
    assert loaded.domains == {"dmcontrol": mixed_domain()} and loaded.checkpoint["step"] == 12
    ref, new = policy.state_dict(), loaded.state_dict()
    assert ref.keys() == new.keys() and all(torch.equal(ref[k], new[k]) for k in ref)
    # saving again replaces the folder whole
    loaded.save_pretrained(folder)
    assert LRAMPolicy.from_pretrained(folder).domains == loaded.domains


def test_damaged_checkpoints_are_reported_with_path_and_cause(tmp_path, capsys):
    from lram.evaluation.evaluate import main as eval_main

    folder = small_policy().save_pretrained(tmp_path / "p", [mixed_domain()])
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"p/model.safetensors: \d+ bytes, but \d+ were written \(truncated"):
        load_pretrained(folder)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_pretrained(folder)
    with pytest.raises(SystemExit) as e:  # the command line: a message, no traceback
        eval_main([str(folder), "--quiet"])
    assert e.value.code == 2 and "SHA-256 differs" in capsys.readouterr().err
    (folder / "policy.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="policy.json: unreadable"):
        load_pretrained(folder)
    # a format-1 checkpoint (no checksum) whose weights are truncated: the safetensors error, named
    old = tmp_path / "old"
    import shutil

    shutil.copytree(FIXTURE, old)
    w = next(old.glob("checkpoints/step-*/model.safetensors"))
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_pretrained(old)


def test_resume_skips_a_damaged_latest_checkpoint(tmp_path):
    policy = small_policy()
    for step in (2, 4):
        save_checkpoint(tmp_path, step, policy, {"step": step}, [mixed_domain()])
    latest = tmp_path / "checkpoints" / "step-00000004" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=r"skipping a damaged checkpoint: .*step-00000004/model.safetensors"):
        folder, state = resumable_checkpoint(tmp_path)
    assert folder.name == "step-00000002" and state["step"] == 2
    (folder / "trainer.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="trainer.pt: unreadable"):
        assert resumable_checkpoint(tmp_path) is None


def test_train_resume_falls_back_to_the_last_intact_checkpoint(tmp_path):
    """`lram train --resume` on a run whose newest checkpoint was truncated resumes from the one before."""
    from lram.data.episode import Episode
    from lram.data.storage import PaperWriter
    from lram.training.config import load_config
    from lram.training.trainer import Trainer, train

    rng = np.random.default_rng(0)
    with PaperWriter(tmp_path / "data" / "toy" / "reach", fmt="npz", compress=False, progress=False) as w:
        for _ in range(6):
            s = rng.normal(size=(30, 5)).astype(np.float32)
            w.write(Episode(states=s, actions=np.tanh(s[:, :2]), rewards=rng.random(30).astype(np.float32)))
    cfg = load_config(None, [f"data.domains=[{{name: toy, path: {tmp_path / 'data' / 'toy'}}}]", "data.context=8",
                             "data.batch_size=4", "model.size=tiny", "model.use_images=false", "train.steps=4",
                             "train.checkpoint_every=2", "train.eval_batches=0", "data.valid_fraction=0",
                             "logging.tensorboard=false", f"logging.run_dir={tmp_path / 'run'}"])
    train(cfg)
    latest = tmp_path / "run" / "checkpoints" / "step-00000004" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:-7])
    with pytest.warns(UserWarning, match="step-00000004"):
        trainer = Trainer(cfg, resume=True)
    assert trainer.step == 2
    assert trainer.specs[0].tasks["reach"].action_dim == 2


def test_policy_step_is_the_mirror_of_forward():
    """Stepping the policy through a window gives the logits its parallel forward gives at every timestep."""
    policy = small_policy(3)
    B, C = 2, 6
    g = torch.Generator().manual_seed(0)
    batch = TrajectoryBatch(states=torch.randn(B, C, 7, generator=g), returns_to_go=torch.rand(B, C, generator=g) * 50,
                            rewards=torch.rand(B, C, generator=g), reward_scale=10.0)
    with torch.no_grad():
        ref = policy(batch).logits
        state = policy.init_state(B)
        prev = torch.zeros(B)
        for t in range(C):
            logits, state = policy.step(batch.states[:, t], prev, batch.returns_to_go[:, t], torch.full((B,), 10.0), state)
            torch.testing.assert_close(logits, ref[:, t], atol=1e-4, rtol=1e-4)
            prev = batch.rewards[:, t]
    assert isinstance(state, RecurrentState)
    leaves, spec = torch.utils._pytree.tree_flatten(state)  # a pytree: compile / export take it as it is
    again = torch.utils._pytree.tree_unflatten(leaves, spec)
    assert again.signature == state.signature and list(again) == list(state)
