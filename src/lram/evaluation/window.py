"""Sliding-window acting: the paper's evaluation protocol (spec 5.1), for comparisons across context lengths.

The paper's policies act on the last C timesteps only, re-processed in parallel mode at every environment
step (``use_inference_cache=False``).  :class:`WindowAgent` does the same for any backbone: each row keeps
the inputs of its last ``window`` timesteps (a_{t-1}, r_{t-1}, s_t, R_t, as one recurrent step would take
them), and every step runs the model's parallel forward over them and reads the action at the newest one.
The oldest timestep's previous action is always padding, as in training windows (the sampler does not
read the action before a window).
A model trained on windows of C timesteps and acting with ``window = C`` never sees a longer history than
in training (the Transformer never needs positions beyond its training window); lram's default agent,
:class:`lram.models.policy.RecurrentAgent`, instead carries the whole episode in its recurrent state.
"""

from __future__ import annotations

import torch

from lram.models.policy import RecurrentAgent
from lram.utils.checks import check_positive_int


class WindowAgent(RecurrentAgent):
    """A :class:`RecurrentAgent` whose step re-processes each row's last ``window`` timesteps (no state
    beyond them).  In-context resets (``keep_context``) keep the window, as the paper's persisted context."""

    def __init__(self, model, num_envs: int, *, window: int, **kwargs):
        check_positive_int("window", window)
        super().__init__(model, num_envs, **kwargs)
        self.window = int(window)
        self.count = torch.zeros(num_envs, dtype=torch.long, device=self.device)  # real timesteps per row
        self._inputs: dict[str, torch.Tensor] | None = None  # [B, window, ...] per input, oldest first
        self._step_fn = self._window_step

    def reset(self, mask: torch.Tensor | None = None, keep_context: bool = False) -> None:
        """Start new episodes in the rows of ``mask``: their window empties unless ``keep_context``."""
        super().reset(mask, keep_context=True)  # previous reward / action dropped; no recurrent state to clear
        if not keep_context:
            rows = torch.ones(self.num_envs, dtype=torch.bool, device=self.device) if mask is None else \
                torch.as_tensor(mask, device=self.device)
            self.count = self.count.masked_fill(rows, 0)

    def _window_step(self, obs, prev_reward, rtg, reward_scale, state, tokens):
        """Append this step's inputs to each row's window and run the parallel forward over the windows."""
        model, B, W = self.model, self.num_envs, self.window
        new = {"obs": obs, "prev_reward": prev_reward, "rtg": rtg}
        if tokens is not None:
            new["tokens"] = tokens
        if self._inputs is None:
            self._inputs = {k: torch.zeros((B, W, *v.shape[1:]), dtype=v.dtype, device=self.device)
                            for k, v in new.items()}
        full = self.count >= W
        if bool(full.any()):  # the oldest timestep of a full window drops out
            for buf in self._inputs.values():
                buf[full] = buf[full].roll(-1, dims=1)
        pos = self.count.clamp(max=W - 1)
        rows = torch.arange(B, device=self.device)
        for k, v in new.items():
            self._inputs[k][rows, pos] = v.to(self._inputs[k].dtype)
        self.count = (self.count + 1).clamp(max=W)
        if "tokens" in self._inputs:  # training windows never see the action before their first step
            self._inputs["tokens"][:, 0] = model.config.action_pad_id
        n = int(self.count.max())  # positions after a row's newest timestep do not reach it (causal)
        x = {k: v[:, :n] for k, v in self._inputs.items()}
        groups = model.embed_groups(x["obs"], x["rtg"], x["prev_reward"], x.get("tokens"), reward_scale, batch_dims=2)
        G = groups.shape[2]
        y, _ = model.backbone(groups.reshape(B, n * G, -1), None, return_state=False)
        hidden = y[:, G - 1 :: G][rows, self.count - 1]  # read-out at each row's newest group
        return model.action_head(hidden).reshape(B, model.config.max_act_dim, -1), state
