"""Export a policy's recurrent environment step to ONNX (``lram export``), for runtimes without PyTorch.

The exported graph is one :meth:`LRAMPolicy.step` plus greedy decoding (what :meth:`RecurrentAgent.act`
runs), without the Python around it::

    inputs : obs [B, *obs]            float32 vectors (zero-padded to the model's state_dim inside) or uint8 images
             prev_reward [B]          the reward of the previous step (0 at an episode start), raw
             rtg [B]                  the current return-to-go, raw
             reward_scale [B]         the domain's reward scale (rewards and returns are divided by it)
             limit [B] int64          valid discrete actions per row, or real continuous action dims per row
             <state tensors>          the recurrent state (names as in ``RecurrentState``), batch first
    outputs: action                   [B] int64 ids (discrete) or [B, max_act_dim] float32 values (continuous)
             logits [B, A, V]         the read-out logits
             <state tensors>.out      the state after the step (feed it to the next call)

The batch dimension is dynamic: one session per row, each with its own state.  A new episode starts from
the initial state rows described in the sidecar ``<file>.json`` (shape per row and fill value of every
state tensor), with prev_reward 0.  The PyTorch ops of the step are exported (not lram's CPU kernels, which
are PyTorch-only); ONNX Runtime runs the same function (the export test checks it step by step).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lram.data.normalization import standardize
from lram.models.layers import export_mode
from lram.models.state import RecurrentState
from lram.utils.checks import validation
from lram.utils.io import atomic_path, write_json_atomic

ONNX_INSTALL = "pip install 'lram[onnx]'  (onnx, onnxscript, onnxruntime)"


class ExportedStep(nn.Module):
    """The step as a module of plain tensors (what the exporter traces)."""

    def __init__(self, policy, discrete: bool, state_mean=None, state_std=None):
        super().__init__()
        if policy.config.backbone == "transformer":
            raise ValueError("export: the Transformer's KV-cache step indexes its cache by the (data-dependent) "
                             "history length, which ONNX export cannot trace; export an xLSTM or Mamba policy")
        if policy.config.action_condition:
            raise ValueError("export: policies with action_condition=True are not supported yet (previous action tokens)")
        self.policy = policy
        self.discrete = discrete
        self.names = list(policy.backbone.init_state(1).tensors)
        self.signature = policy.backbone.state_signature()
        # the domain's state normalisation, padded to state_dim (padding stays 0); baked into the graph
        self.normalise = state_mean is not None and not policy.config.use_images
        if self.normalise:
            d, D = len(state_mean), policy.config.state_dim
            mean, std = torch.zeros(D), torch.ones(D)
            mean[:d], std[:d] = torch.as_tensor(state_mean), torch.as_tensor(state_std)
            self.register_buffer("state_mean", mean)
            self.register_buffer("state_std", std)

    def forward(self, obs, prev_reward, rtg, reward_scale, limit, *state):
        p = self.policy
        if self.normalise:
            obs = standardize(obs, self.state_mean, self.state_std)
        state = RecurrentState(dict(zip(self.names, state)), self.signature)  # the graph's inputs: plain tensors
        logits, state = p.step(obs, prev_reward, rtg, reward_scale, state)
        if self.discrete:
            action = p.decode(logits, True, num_actions=limit)
        else:
            action = p.decode(logits, False, action_dims=limit)
        return (action, logits, *[state[n] for n in self.names])


def state_layout(policy) -> dict:
    """Per state tensor: its shape without the batch dimension and the value of a fresh row."""
    init = policy.backbone.init_state(1).tensors
    out = {}
    for name, t in init.items():
        values = t.unique()
        out[name] = {"shape": list(t.shape[1:]), "dtype": str(t.dtype).replace("torch.", ""),
                     "init": float(values[0]) if values.numel() == 1 else None}
    return out


def export_onnx(policy, path: str | Path, *, discrete: bool, example_batch: int = 2, opset: int | None = None,
                state_mean=None, state_std=None, domain=None) -> Path:
    """Write the step of ``policy`` to ``path`` (ONNX, dynamic batch) and its sidecar ``path.json``; with the
    domain's ``state_mean`` / ``state_std`` the graph standardises raw observations as training did."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxscript: {ONNX_INSTALL}") from e
    policy = policy.eval()
    step = ExportedStep(policy, discrete, state_mean, state_std).eval()
    cfg = policy.config
    B = example_batch
    if cfg.use_images:
        obs = torch.zeros(B, *cfg.image_shape, dtype=torch.uint8)
    else:
        obs = torch.zeros(B, cfg.state_dim)
    limit = torch.full((B,), cfg.num_discrete if discrete else cfg.max_act_dim, dtype=torch.int64)
    state = [t.clone() for t in policy.backbone.init_state(B).tensors.values()]
    inputs = (obs, torch.zeros(B), torch.zeros(B), torch.ones(B), limit, *state)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = (*({0: batch} for _ in range(5)), tuple({0: batch} for _ in state))  # the signature's structure
    names = ["obs", "prev_reward", "rtg", "reward_scale", "limit", *step.names]
    path = Path(path)
    with torch.no_grad(), export_mode(), validation("off"), atomic_path(path) as tmp:
        program = torch.onnx.export(step, inputs, dynamo=True, input_names=names,
                                    output_names=["action", "logits", *[n + ".out" for n in step.names]],
                                    dynamic_shapes=dynamic, opset_version=opset, verbose=False)
        program.save(str(tmp))
    write_json_atomic(path.with_suffix(path.suffix + ".json"), {
        "format": "lram-onnx-step", "version": 1, "discrete": discrete, "inputs": names,
        "state": state_layout(policy), "obs": {"shape": list(obs.shape[1:]), "dtype": str(obs.dtype).replace("torch.", "")},
        "config": cfg.to_dict(), "state_normalised_inside": step.normalise,
        "domain": None if domain is None else domain.to_dict(),  # per task: the `limit` to feed, best return
    })
    return path


def initial_state(layout: dict, batch: int) -> dict:
    """Fresh state rows (numpy) for ``batch`` sessions from a sidecar's ``state`` layout."""
    import numpy as np

    return {name: np.full((batch, *spec["shape"]), spec["init"], dtype=spec["dtype"]) for name, spec in layout.items()}


def read_sidecar(path: str | Path) -> dict:
    path = Path(path)
    side = path.with_suffix(path.suffix + ".json")
    if not side.exists():
        raise FileNotFoundError(f"{path}: missing the sidecar {side.name} written by lram export")
    return json.loads(side.read_text())


def main(argv=None) -> int:
    """``lram export RUN --out step.onnx``: the checkpoint's step as ONNX (+ sidecar JSON)."""
    import argparse

    from lram.models.persistence import load_pretrained

    p = argparse.ArgumentParser(prog="lram export", description="Export a checkpoint's recurrent step to ONNX.")
    p.add_argument("run", type=Path, help="a run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write (and <out>.json beside it)")
    p.add_argument("--domain", default=None, help="the domain to act in (its action kind); needed if the model has several")
    a = p.parse_args(argv)
    try:
        policy = load_pretrained(a.run)
        domains = policy.domains
        if a.domain is None and len(domains) != 1:
            raise ValueError(f"--domain: the checkpoint has domains {sorted(domains)}; say which one to act in")
        name = a.domain or next(iter(domains))
        if name not in domains:
            raise ValueError(f"--domain: {name!r} is not in the checkpoint (it has {', '.join(sorted(domains))})")
        spec = domains[name]
        path = export_onnx(policy, a.out, discrete=spec.discrete, state_mean=spec.state_mean, state_std=spec.state_std,
                           domain=spec)
    except (ValueError, FileNotFoundError, ImportError) as e:
        p.exit(2, f"lram export: error: {e}\n")
    print(f"wrote {path} and {path.name}.json (domain {name}; reward_scale {domains[name].reward_scale}; action limits "
          "per row: each task's action_dim / num_actions, listed in the sidecar's 'domain')")
    return 0
