"""The contract every sequence backbone of lram fulfils (xLSTM, Mamba, Transformer).

A backbone maps ``[B, T, D] -> [B, T, D]`` and has two modes that compute the *same* function::

    y, state = bb(x)                  # parallel / chunkwise over the whole sequence (training)
    y, state = bb(x, state)           # the same, continuing from a state
    y, state = bb.step(x_new, state)  # recurrent inference on k >= 1 new tokens [B, k, D]
    state = bb.init_state(batch_size)
    state = bb.reset_state(state, mask)   # mask [B] bool: restart those rows

Subclasses implement ``_forward`` (parallel) and ``_step`` (recurrent) and ``_init_state``; this base
class does the argument checking so that every backbone reports bad input the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from lram.models.state import RecurrentState
from lram.utils.checks import check_positive_int, check_tensor, checks_enabled


class Backbone(nn.Module):
    """Base class: argument checking and state bookkeeping shared by all backbones."""

    kind: ClassVar[str] = ""
    config: Any  # a dataclass with at least d_model and num_blocks

    # ----------------------------------------------------------------- API
    def forward(
        self, x: torch.Tensor, state: RecurrentState | None = None, *, return_state: bool = True
    ) -> tuple[torch.Tensor, RecurrentState | None]:
        """Parallel (training) mode over a whole sequence, optionally continuing from ``state``."""
        self._check_x(x, "x")
        if state is not None:
            self._check_state(state, x.shape[0], "state")
        return self._forward(x, state, return_state)

    def step(self, x: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """Recurrent (inference) mode on ``k >= 1`` new tokens ``x: [B, k, D]``; returns the new state.

        Without autograd, recurrent backbones update the tensors of ``state`` in place (copying megabytes
        of memory per step would cost more than the step) and return them: continue from the returned
        state, and pass ``state.clone()`` to keep the old one (e.g. to branch)."""
        self._check_x(x, "x")
        if state is None:
            raise ValueError("state: step() needs a state; create one with init_state(batch_size)")
        self._check_state(state, x.shape[0], "state")
        return self._step(x, state)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> RecurrentState:
        """The state of ``batch_size`` fresh sequences (no history)."""
        check_positive_int("batch_size", batch_size)
        device = self._param_device() if device is None else torch.device(device)
        return RecurrentState(self._init_state(batch_size, device), self.state_signature())

    def reset_state(self, state: RecurrentState, mask: torch.Tensor) -> RecurrentState:
        """Restart the rows where ``mask`` [B] is True (e.g. environments whose episode ended)."""
        self._check_state(state, None, "state")
        mask = torch.as_tensor(mask, device=state.device)
        check_tensor("mask", mask, [state.batch_size], dtype=torch.bool)
        return self._reset_state(state, mask)

    def state_signature(self) -> str:
        """A string that identifies the state layout of this configuration (configs are fixed after build)."""
        sig = self.__dict__.get("_signature")
        if sig is None:
            fields = dataclasses.asdict(self.config)
            relevant = {k: fields[k] for k in self.state_fields()}
            sig = self.__dict__["_signature"] = f"{self.kind}:" + ",".join(f"{k}={v}" for k, v in relevant.items())
        return sig

    # ---------------------------------------------------------- subclasses
    def state_fields(self) -> tuple[str, ...]:
        """Config fields that determine the state's layout (used in the signature)."""
        return ("d_model", "num_blocks")

    def _forward(self, x, state, return_state):  # pragma: no cover - abstract
        raise NotImplementedError

    def _step(self, x, state):  # pragma: no cover - abstract
        raise NotImplementedError

    def _init_state(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _reset_state(self, state: RecurrentState, mask: torch.Tensor) -> RecurrentState:
        fresh = RecurrentState(self._init_state(state.batch_size, state.device), state.signature)
        return state.where(mask, fresh)

    # ------------------------------------------------------------- helpers
    @property
    def d_model(self) -> int:
        return self.config.d_model

    def _param_device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _check_x(self, x: torch.Tensor, name: str) -> None:
        if not checks_enabled():
            return
        bound = check_tensor(name, x, ["B", "T", self.d_model], floating=True)
        if bound["T"] < 1:
            raise ValueError(f"{name}: expected at least one token (T >= 1), got shape {list(x.shape)}")

    def _check_state(self, state: RecurrentState, batch_size: int | None, name: str) -> None:
        if not checks_enabled():
            return
        if not isinstance(state, RecurrentState):
            raise ValueError(f"{name}: expected a RecurrentState, got {type(state).__name__}")
        mine = self.state_signature()
        if state.signature != mine:
            raise ValueError(f"{name}: state comes from another configuration: expected '{mine}', got '{state.signature}'")
        if batch_size is not None and state.batch_size != batch_size:
            raise ValueError(f"{name}: state has batch size {state.batch_size}, but x has batch size {batch_size}")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
