"""The contract every sequence backbone of lram fulfils (xLSTM, Mamba, Transformer).

A backbone maps ``[B, T, D] -> [B, T, D]`` and has two modes that compute the *same* function::

    y, state = bb(x)                  # parallel / chunkwise over the whole sequence (training)
    y, state = bb(x, state)           # the same, continuing from a state
    y, state = bb.step(x_new, state)  # recurrent inference on k >= 1 new tokens [B, k, D]
    state = bb.init_state(batch_size)
    state = bb.reset_state(state, mask)   # mask [B] bool: restart those rows
    bb.prepare_for_inference()        # once: choose the step's implementation ("fused" or "torch")

Subclasses implement ``_forward`` (parallel) and ``_step`` (recurrent) and ``_init_state``; this base
class does the argument checking so that every backbone reports bad input the same way.

The implementation of ``step`` is chosen once, explicitly, per backbone: :meth:`prepare_for_inference`
resolves the config's ``step_kernel`` ("auto" / "fused" / "torch") against the weights' device and dtype
and lram's compiled CPU kernels.  A backbone never prepared steps with PyTorch ops (the same function,
slower), whatever else ran in the process.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from lram.models import kernels
from lram.models.layers import exporting, use_row_kernel
from lram.models.state import RecurrentState
from lram.utils.checks import check_positive_int, check_tensor, checks_enabled


class Backbone(nn.Module):
    """Base class: argument checking and state bookkeeping shared by all backbones."""

    kind: ClassVar[str] = ""
    config: Any  # a dataclass with at least d_model and num_blocks
    # the torch.ops.lram ops a fused step calls (all backbones: the Linear layers' row kernel)
    fused_step_ops: ClassVar[tuple[str, ...]] = ("linear_rows",)
    _prepared: bool = False  # prepare_for_inference was called on this instance
    _step_impl: str = "torch"  # set per instance by prepare_for_inference
    _fused_args: Any = None  # what the fused step passes to its ops (see _fused_step_arguments)

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

    def prepare_for_inference(self) -> str:
        """Choose the implementation of :meth:`step` once and return its name: ``"fused"`` (lram's compiled
        CPU kernels: fused block steps where the backbone has them, the row kernel in its Linear layers) or
        ``"torch"`` (PyTorch ops).  ``step_kernel="auto"`` takes the kernels when they load and the weights
        are CPU float32; ``"fused"`` requires them (a RuntimeError naming the cause otherwise); ``"torch"``
        never uses them.  Calls with autograd on, inside ``torch.compile`` / export, on more than
        ``FUSED_MAX_TOKENS`` tokens or on non-CPU float32 input take the PyTorch path either way.

        The choice holds until the next call; ``.to()`` / ``.double()`` etc. and ``load_state_dict`` refresh
        it (``"torch"`` while the weights do not suit the kernels, ``"auto"``/``"fused"`` again once they do).
        After assigning new Parameter objects to submodules, call it again."""
        self._prepared = True
        return self._set_step_implementation(self._resolve_step_implementation(strict=True))

    @property
    def step_implementation(self) -> str:
        """The implementation :meth:`step` uses: ``"torch"`` until :meth:`prepare_for_inference` chose."""
        return self._step_impl

    def state_signature(self) -> str:
        """A string that identifies the state layout of this configuration (configs are fixed after build)."""
        sig = self.__dict__.get("_signature")
        if sig is None:
            fields = dataclasses.asdict(self.config)
            relevant = {k: fields[k] for k in self.state_fields()}
            sig = self.__dict__["_signature"] = f"{self.kind}:" + ",".join(f"{k}={v}" for k, v in relevant.items())
        return sig

    # ---------------------------------------------------------- subclasses
    def _fused_step_unsupported(self) -> str | None:
        """Why this configuration has no fused step (None: it has one); overridden where needed."""
        return None

    def _fused_step_arguments(self) -> Any:
        """The weights the fused step passes to its ops, looked up once at preparation (saves ~100 module
        attribute look-ups per step); None for backbones without a fused block step."""
        return None

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

    # ------------------------------------------------- inference implementation
    def _resolve_step_implementation(self, strict: bool) -> str:
        """"fused" or "torch" from ``step_kernel``, the weights and the kernels; with ``strict`` and
        ``step_kernel="fused"``, a RuntimeError naming why the kernels cannot be used."""
        mode = getattr(self.config, "step_kernel", "auto")
        if mode == "torch":
            return "torch"
        why = self._fused_step_unsupported()
        if why is None:
            bad = next((p for p in self.parameters() if p.device.type != "cpu" or p.dtype != torch.float32), None)
            if bad is not None:
                why = f"the weights are {bad.dtype} on {bad.device}; the kernels need CPU float32"
        if why is None:
            if not kernels.load_cpu_kernels(required=strict and mode == "fused"):
                why = f"lram's compiled CPU kernels are unavailable ({kernels._status['error']})"
            elif not all(hasattr(torch.ops.lram, op) for op in self.fused_step_ops):
                why = f"the compiled CPU kernels lack the ops {list(self.fused_step_ops)} (a stale build?)"
        if why is None:
            return "fused"
        if strict and mode == "fused":
            raise RuntimeError(f"{self.kind} backbone: step_kernel='fused' cannot be used: {why}")
        return "torch"

    def _set_step_implementation(self, choice: str) -> str:
        self._step_impl = choice
        self._fused_args = self._fused_step_arguments() if choice == "fused" else None
        use_row_kernel(self, choice == "fused")
        if not self.__dict__.get("_refresh_on_load"):  # keeps the cached weights right after load_state_dict
            self.register_load_state_dict_post_hook(_refresh_prepared)
            self.__dict__["_refresh_on_load"] = True
        return choice

    def _refresh_prepared(self) -> None:
        """Re-resolve the choice of a prepared backbone after its parameters changed (conversion, loading):
        the cached weight list must name the current tensors, and converted weights may (no longer) suit
        the kernels."""
        if self._prepared:
            self._set_step_implementation(self._resolve_step_implementation(strict=False))

    def _apply(self, fn, recurse=True):  # .to(), .float(), .cpu(), ...: parameters may be new tensors
        out = super()._apply(fn, recurse)
        self._refresh_prepared()
        return out

    def _fused_step_applies(self, x: torch.Tensor) -> bool:
        """Whether this step call runs on the fused kernels (O(1): the prepared choice and x; the state
        tensors lram makes are contiguous float32, and the kernels check every argument they read)."""
        return (self._step_impl == "fused" and not torch.is_grad_enabled() and x.shape[1] <= kernels.FUSED_MAX_TOKENS
                and x.dtype == torch.float32 and x.device.type == "cpu" and not torch.compiler.is_compiling()
                and not exporting() and not torch.jit.is_tracing())

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


def _refresh_prepared(module: Backbone, incompatible_keys) -> None:
    """load_state_dict post-hook of a prepared backbone (a module-level function: picklable, copyable)."""
    module._refresh_prepared()
