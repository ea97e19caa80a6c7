"""ONNX export of the recurrent step: ONNX Runtime acts like the PyTorch agent, step after step, any batch size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lram.models import LRAMPolicy
from lram.serving.onnx_export import export_onnx, initial_state, read_sidecar

ort = pytest.importorskip("onnxruntime", reason="ONNX export is tested with the onnx extra (pip install -e '.[dev]')")


def _policy(backbone, use_images=False):
    torch.manual_seed(0)
    policy = LRAMPolicy.from_preset("tiny", backbone, use_images=use_images).eval()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return policy


@pytest.mark.parametrize("backbone,discrete,normalised", [("xlstm[1:0]", False, False), ("xlstm[7:1]", True, False),
                                                           ("mamba", False, False), ("xlstm[1:0]", False, True)])
def test_onnx_step_acts_like_the_agent(tmp_path, backbone, discrete, normalised):
    """... also with the domain's state normalisation baked into the graph (raw observations in)."""
    policy = _policy(backbone)
    stats = dict(state_mean=np.linspace(-1, 1, 11).tolist(), state_std=np.linspace(0.5, 2, 11).tolist()) if normalised else {}
    path = export_onnx(policy, tmp_path / "step.onnx", discrete=discrete, **stats)
    meta = read_sidecar(path)
    sess = ort.InferenceSession(str(path))
    for B in (1, 3):  # the batch dimension is dynamic
        limit = np.array([5, 3, 18][:B]) if discrete else np.array([4, 6, 2][:B])
        agent = policy.make_agent(B, discrete=discrete, num_actions=torch.as_tensor(limit) if discrete else None,
                                  action_dims=None if discrete else torch.as_tensor(limit), reward_scale=10.0, **stats)
        state = initial_state(meta["state"], B)
        rng = np.random.default_rng(B)
        prev = np.zeros(B, dtype=np.float32)
        rtg = np.full(B, 50.0, dtype=np.float32)
        for _ in range(6):
            obs = rng.normal(size=(B, 11)).astype(np.float32)
            with torch.inference_mode():
                ref = agent.act(torch.from_numpy(obs), torch.from_numpy(prev), torch.from_numpy(rtg)).numpy()
            obs_padded = np.zeros((B, policy.config.state_dim), dtype=np.float32)
            obs_padded[:, :11] = obs
            feed = {"obs": obs_padded, "prev_reward": prev, "rtg": rtg, "reward_scale": np.full(B, 10.0, np.float32),
                    "limit": limit.astype(np.int64), **state}
            action, logits, *new_state = sess.run(None, feed)
            assert np.abs(logits - agent.last_logits.numpy()).max() <= 1e-4 * np.abs(logits).max()
            np.testing.assert_array_equal(action, ref)
            state = dict(zip(meta["state"], new_state))
            r = rng.random(B).astype(np.float32)
            prev, rtg = r, rtg - r


def test_export_refuses_what_it_cannot_trace(tmp_path):
    with pytest.raises(ValueError, match="Transformer"):
        export_onnx(_policy("transformer"), tmp_path / "t.onnx", discrete=True)
    with pytest.raises(FileNotFoundError, match="sidecar"):
        read_sidecar(tmp_path / "missing.onnx")


def test_export_command(tmp_path, capsys):
    from lram.serving.onnx_export import main
    from lram.training.checkpoint import save_checkpoint

    task = "darkroom_1_1"
    domains = [{"name": "darkroom", "reward_scale": 1.0, "discrete": True, "num_actions": 5, "in_context": True,
                "obs_shape": [2], "action_dim": 1, "tasks": [task], "max_returns": {task: 90.0}}]
    save_checkpoint(tmp_path / "run", 3, _policy("xlstm[1:0]"), {}, domains)
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "step.onnx")]) == 0
    side = read_sidecar(tmp_path / "step.onnx")
    assert side["discrete"] is True and side["domain"]["tasks"][0]["num_actions"] == 5 and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), "--out", str(tmp_path / "x.onnx"), "--domain", "atari"])
    assert "not in the checkpoint" in capsys.readouterr().err
