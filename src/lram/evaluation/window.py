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
        self._groups: torch.Tensor | None = None  # [B, window, G, H] their token groups
        self._step_fn = self._window_step

    def reset(self, mask: torch.Tensor | None = None, keep_context: bool = False) -> None:
        """Start new episodes in the rows of ``mask``: their window empties unless ``keep_context``."""
        super().reset(mask, keep_context=True)  # previous reward / action dropped; no recurrent state to clear
        if not keep_context:
            rows = torch.ones(self.num_envs, dtype=torch.bool, device=self.device) if mask is None else \
                torch.as_tensor(mask, device=self.device)
            self.count = self.count.masked_fill(rows, 0)

    def _window_step(self, obs, prev_reward, rtg, reward_scale, state, tokens):
        """Embed this step's inputs into each row's window of token groups and run the parallel backbone over
        the windows.  Every timestep is embedded once (an image goes through the CNN once, not ``window``
        times); only the oldest timestep is re-embedded with a padded previous action."""
        model, B, W = self.model, self.num_envs, self.window
        new = {"obs": obs, "prev_reward": prev_reward, "rtg": rtg}
        if tokens is not None:
            new["tokens"] = tokens
        group = model.embed_groups(obs, rtg, prev_reward, tokens, reward_scale, batch_dims=1)  # [B, G, H]
        if self._inputs is None:
            self._inputs = {k: torch.zeros((B, W, *v.shape[1:]), dtype=v.dtype, device=self.device)
                            for k, v in new.items()}
            self._groups = torch.zeros((B, W, *group.shape[1:]), dtype=group.dtype, device=self.device)
        full = self.count >= W
        if bool(full.any()):  # the oldest timestep of a full window drops out
            for buf in (*self._inputs.values(), self._groups):
                buf[full] = buf[full].roll(-1, dims=1)
        pos = self.count.clamp(max=W - 1)
        rows = torch.arange(B, device=self.device)
        for k, v in new.items():
            self._inputs[k][rows, pos] = v.to(self._inputs[k].dtype)
        self._groups[rows, pos] = group
        self.count = (self.count + 1).clamp(max=W)
        if "tokens" in self._inputs:  # training windows never see the action before their first step
            first = {k: v[:, 0] for k, v in self._inputs.items()}
            self._groups[:, 0] = model.embed_groups(first["obs"], first["rtg"], first["prev_reward"],
                                                    torch.full_like(first["tokens"], model.config.action_pad_id),
                                                    reward_scale, batch_dims=1)
        n = int(self.count.max())  # positions after a row's newest timestep do not reach it (causal)
        G = self._groups.shape[2]
        y, _ = model.backbone(self._groups[:, :n].reshape(B, n * G, -1), None, return_state=False)
        hidden = y[:, G - 1 :: G][rows, self.count - 1]  # read-out at each row's newest group
        return model.action_head(hidden).reshape(B, model.config.max_act_dim, -1), state
