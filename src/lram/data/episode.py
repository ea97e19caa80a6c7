"""One episode of a task, the unit every storage layout, importer and generator exchanges.

Fields (the paper's episode-file fields, spec section 4.2):

* ``states``        [T, d] float32 vector observations, or [T, 3, 64, 64] uint8 images
* ``actions``       [T] int64 discrete action ids, or [T, a] float32 continuous actions in [-1, 1]
* ``rewards``       [T] float32, the reward received after the action of each step
* ``dones``         [T] bool, True at the last step of a terminated episode
* ``returns_to_go`` [T] float32, undiscounted return from each step on (including its reward)

Every check names the source (file), the field and what was expected; see :func:`validate_episode`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FIELDS = ("states", "actions", "rewards", "dones", "returns_to_go")


class DataError(ValueError):
    """A problem with stored data: names the file (or source), the field and what was expected."""

    def __init__(self, source: str, field: str | None, message: str):
        self.source, self.field = str(source), field
        where = f"{source}" + (f": field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted return-to-go including the current reward (a reverse cumulative sum, gamma = 1)."""
    r = np.asarray(rewards, dtype=np.float64)
    return np.cumsum(r[::-1])[::-1].astype(np.float32)


@dataclass
class Episode:
    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray | None = None
    returns_to_go: np.ndarray | None = None
    info: dict = field(default_factory=dict)  # e.g. {"success": True, "seed": 3}

    def __post_init__(self):
        n = len(self.rewards)
        if self.dones is None:
            self.dones = np.zeros(n, dtype=bool)
        if self.returns_to_go is None:
            self.returns_to_go = returns_to_go(self.rewards)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def total_return(self) -> float:
        return float(np.sum(self.rewards, dtype=np.float64))

    @property
    def discrete(self) -> bool:
        return self.actions.ndim == 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in FIELDS}


def validate_episode(ep: Episode | dict, source: str) -> None:
    """Raise :class:`DataError` naming ``source`` and the field for any malformed field."""
    get = (lambda f: ep.get(f)) if isinstance(ep, dict) else (lambda f: getattr(ep, f))
    for f in ("states", "actions", "rewards"):
        if get(f) is None:
            raise DataError(source, f, "missing (required: states, actions, rewards)")
    n = len(get("rewards"))
    if n == 0:
        raise DataError(source, "rewards", "empty episode (length 0)")
    for f in FIELDS:
        a = get(f)
        if a is None:
            continue
        a = np.asarray(a)
        if a.ndim == 0 or a.shape[0] != n:
            raise DataError(source, f, f"expected {n} steps (the length of 'rewards'), got shape {list(a.shape)}")
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = int(np.argwhere(~np.isfinite(a))[0][0])
            raise DataError(source, f, f"contains NaN/inf (first at step {bad})")
    states = np.asarray(get("states"))
    if states.dtype.kind not in "fiub":
        raise DataError(source, "states", f"expected numeric values, got dtype {states.dtype}")
    if states.ndim == 4 and states.dtype != np.uint8:
        raise DataError(source, "states", f"image states must be uint8, got dtype {states.dtype}")
    if states.ndim not in (2, 4):
        raise DataError(source, "states", f"expected [T, d] vectors or [T, C, H, W] images, got shape {list(states.shape)}")
    actions = np.asarray(get("actions"))
    if actions.ndim == 1 or (actions.ndim == 2 and actions.shape[1] == 1 and actions.dtype.kind in "iu"):
        if actions.dtype.kind not in "iu":
            if actions.dtype.kind == "f" and np.all(actions == np.round(actions)):
                pass  # integer-valued floats are accepted for discrete actions
            else:
                raise DataError(source, "actions", f"discrete actions must be integers, got dtype {actions.dtype}")
        if actions.min() < 0:
            raise DataError(source, "actions", f"discrete actions must be >= 0, got {actions.min()}")
    elif actions.ndim != 2:
        raise DataError(source, "actions", f"expected [T] discrete or [T, a] continuous actions, got {list(actions.shape)}")
    elif actions.dtype.kind != "f":
        raise DataError(source, "actions", f"continuous actions must be floats, got dtype {actions.dtype}")
