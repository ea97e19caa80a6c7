"""Optional compiled CPU kernels, built on first use (PyTorch C++ extension, JIT).

``load_cpu_kernels()`` compiles every ``*.cpp`` file of this folder into one extension, once per machine
(10-60 s; cached by PyTorch under ``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), and
registers the ``torch.ops.lram`` ops:

* inference steps (``mlstm_step_cpu.cpp``): ``mlstm_block_step`` (a whole mLSTM block on a few new
  tokens), ``mamba_block_step``, and ``linear_rows`` (a linear layer on a few rows that streams the weights
  once at near memory bandwidth, used by :class:`lram.models.layers.Linear` at inference);  a backbone
  uses the step ops only after :meth:`lram.models.backbone.Backbone.prepare_for_inference` chose them;
* training (forward and backward ops, wrapped in ``torch.autograd.Function`` s by the models): see the
  other ``*_train_cpu.cpp`` files.

Without a C++ compiler it returns False and callers use PyTorch ops, which compute the same function.
Set ``LRAM_CPU_KERNELS=0`` to never build them.  Which path a model takes is its own setting
(``step_kernel`` / ``train_kernel``: ``auto``, ``fused`` or ``torch``) and, for inference, its explicit
``prepare_for_inference()`` call; never a process-wide switch.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path

import torch

_SOURCES = sorted(Path(__file__).parent.glob("*.cpp"))
STEP_KERNELS = ("auto", "fused", "torch")  # a backbone's step_kernel / train_kernel setting
FUSED_MAX_TOKENS = 16  # the fused steps handle calls of up to this many new tokens per row
_lock = threading.Lock()
_status: dict[str, object] = {"loaded": None, "error": None}


def load_cpu_kernels(required: bool = False) -> bool:
    """Build (once) and load the CPU kernels; True when ``torch.ops.lram.mlstm_block_step`` is usable.

    ``required=True`` raises a RuntimeError naming the cause instead of returning False."""
    if _status["loaded"]:  # the fast path: no lock once the ops are registered
        return True
    with _lock:
        if _status["loaded"] is None:
            _status["loaded"], _status["error"] = _build()
            if not _status["loaded"] and not required and os.environ.get("LRAM_CPU_KERNELS", "1") != "0":
                warnings.warn(f"lram: fused CPU step kernels unavailable, using PyTorch ops ({_status['error']})",
                              stacklevel=3)
    if required and not _status["loaded"]:
        raise RuntimeError(f"step_kernel='fused' needs lram's compiled CPU kernels: {_status['error']}")
    return bool(_status["loaded"])


def _build() -> tuple[bool, str | None]:
    if os.environ.get("LRAM_CPU_KERNELS", "1") == "0":
        return False, "disabled by LRAM_CPU_KERNELS=0"
    if hasattr(torch.ops, "lram") and hasattr(torch.ops.lram, "mlstm_block_step"):
        return True, None
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(
            name=f"lram_cpu_kernels_{_cpu_tag()}",
            sources=[str(p) for p in _SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as e:  # no compiler, no headers, a failed build: the PyTorch path remains
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
    return True, None


def _cpu_tag() -> str:
    """A short tag of this CPU's instruction sets: the build uses -march=native, so a cache directory shared
    between different machines (a cluster home folder) keeps one build per kind of CPU."""
    flags = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            flags += next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags += platform.processor()
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def fused_training_applies(mode: str, *tensors: torch.Tensor) -> bool:
    """Whether a training computation on ``tensors`` runs on the fused CPU forward/backward kernels:
    ``mode`` (the backbone's ``train_kernel``) allows it, every tensor is a CPU float32 tensor, no CPU
    autocast is active and we are not inside ``torch.compile``; and the kernels load (``mode="fused"``:
    or raise)."""
    if mode == "torch" or torch.compiler.is_compiling() or exporting_graph():
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    return load_cpu_kernels(required=mode == "fused")


def exporting_graph() -> bool:
    return torch.compiler.is_exporting()
