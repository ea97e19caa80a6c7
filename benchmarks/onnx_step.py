"""Latency of the exported ONNX step (ONNX Runtime, CPU) vs lram's PyTorch agent, batch 1, 16M preset.

Usage: python benchmarks/onnx_step.py [--size 16M] [--backbone xlstm[1:0]] [--repeats 100] [--threads 2]
Prints median milliseconds per environment step for both, from one run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from lram.bench.latency import time_call
from lram.models import LRAMPolicy
from lram.serving.onnx_export import export_onnx, initial_state, read_sidecar


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="16M")
    p.add_argument("--backbone", default="xlstm[1:0]")
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    policy = LRAMPolicy.from_preset(a.size, a.backbone, use_images=False).eval()
    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(policy, Path(d) / "step.onnx", discrete=False)
        meta = read_sidecar(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle ORT threads must not steal the cores
        sess = ort.InferenceSession(str(path), opts)
        state = initial_state(meta["state"], 1)
        feed = {"obs": np.random.default_rng(0).normal(size=(1, policy.config.state_dim)).astype(np.float32),
                "prev_reward": np.zeros(1, np.float32), "rtg": np.ones(1, np.float32),
                "reward_scale": np.full(1, 100.0, np.float32), "limit": np.array([6]), **state}
        names = list(meta["state"])

        def ort_step():
            out = sess.run(None, feed)
            feed.update(zip(names, out[2:]))

        ort_ms = time_call(ort_step, a.repeats, 10)["median_ms"]
    agent = policy.make_agent(1, discrete=False, action_dims=6, reward_scale=100.0)
    obs = torch.from_numpy(feed["obs"])
    with torch.inference_mode():
        torch_ms = time_call(lambda: agent.act(obs, torch.zeros(1), torch.ones(1)), a.repeats, 10)["median_ms"]
    print(f"{a.size} {a.backbone}, batch 1, {a.threads} threads: ONNX Runtime {ort_ms:.2f} ms, "
          f"lram PyTorch agent {torch_ms:.2f} ms per environment step (ratio {ort_ms / torch_ms:.2f})")


if __name__ == "__main__":
    main()
