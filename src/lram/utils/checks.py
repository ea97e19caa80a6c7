"""Input validation that fails early with a message naming the argument, the expectation and the value.

Every public entry point of lram checks its inputs with these helpers, so a user sees
``ValueError: x: expected shape [B, T, 512] ..., got [2, 7, 256]`` instead of a traceback from deep
inside torch.

The NaN/inf check reads the whole tensor; on a GPU it forces a host sync.  Training loops and latency
critical servers can lower the level with :func:`set_validation` (``"full"`` → ``"shapes"`` → ``"off"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Literal

import torch

ValidationLevel = Literal["full", "shapes", "off"]
_LEVELS: tuple[str, ...] = ("full", "shapes", "off")
_level: str = "full"


def set_validation(level: ValidationLevel) -> None:
    """Set how much lram checks inputs: 'full' (shapes, dtypes, NaN/inf), 'shapes', or 'off'."""
    global _level
    if level not in _LEVELS:
        raise ValueError(f"validation level: expected one of {list(_LEVELS)}, got {level!r}")
    _level = level


@contextmanager
def validation(level: ValidationLevel):
    """Context manager that temporarily sets the validation level."""
    previous = _level
    set_validation(level)
    try:
        yield
    finally:
        set_validation(previous)


def checks_enabled() -> bool:
    return _level != "off"


def fmt_shape(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_tensor(
    name: str,
    value,
    shape: Sequence[int | str | None] | None = None,
    *,
    floating: bool | None = None,
    integer: bool = False,
    finite: bool = True,
    dtype: torch.dtype | None = None,
) -> dict[str, int]:
    """Check a tensor argument and return the sizes bound to symbolic dims (e.g. {'B': 4}).

    ``shape`` entries: an int (must match), a str (a symbol: all dims with the same symbol must agree;
    the sizes are returned), or None (any size).
    """
    if _level == "off":
        return {}
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    bound: dict[str, int] = {}
    if shape is not None:
        ok = value.dim() == len(shape)
        if ok:
            for want, got in zip(shape, value.shape):
                if want is None:
                    continue
                if isinstance(want, str):
                    if bound.setdefault(want, got) != got:
                        ok = False
                elif want != got:
                    ok = False
        if not ok:
            raise ValueError(f"{name}: expected shape {fmt_shape(shape)}, got {fmt_shape(list(value.shape))}")
    if dtype is not None and value.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {value.dtype}")
    if floating and not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"{name}: expected an integer tensor, got dtype {value.dtype}")
    if finite and _level == "full" and value.is_floating_point() and value.numel() > 0:
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            first = [int(i) for i in bad.nonzero()[0]]
            kind = "NaN" if bool(torch.isnan(value).any()) else "inf"
            raise ValueError(f"{name}: contains {kind} values (first at index {first})")
    return bound


def check_range(name: str, value: torch.Tensor, low: int | float, high: int | float) -> None:
    """Check that all entries lie in [low, high]; names the first offending index and value."""
    if _level == "off" or value.numel() == 0:
        return
    bad = (value < low) | (value > high)
    if bool(bad.any()):
        idx = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(
            f"{name}: values must lie in [{low}, {high}], got {value[tuple(idx)].item()} at index {idx}"
        )


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def check_positive_int(name: str, value, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name}: expected {kind} int, got {value!r}")
    return value
