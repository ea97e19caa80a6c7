"""Per-domain statistics of vector states, for normalising the model's inputs.

A Meta-World observation moves by millimetres within a few centimetres of range, so raw states reach the
model's linear embedding as tiny differences around large offsets; with the paper's unnormalised inputs a
tiny policy cannot tell goal positions apart finely enough to reach them (docs/training.md has the
measurements).  lram standardises every vector-state dimension of a domain by its mean and standard
deviation over the domain's data (``data.normalize_states``, default on; the paper's configs turn it off);
the statistics travel in the checkpoint's domain registry, and acting (evaluation, the server, ONNX export)
applies the same transform to the environment's observations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_STD = 1e-6  # dimensions that never change (or padding) keep their scale: std 1


def state_statistics(tasks: Sequence, max_episodes: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per state dimension over the tasks of a vector domain (float32 [d], d = the
    widest task's state size; a task contributes to the dimensions it has).  At most ``max_episodes``
    evenly spaced episodes per task are read, so the cost is bounded on large datasets; deterministic."""
    width = max(int(t.obs_shape[0]) for t in tasks)
    total, total_sq, count = np.zeros(width), np.zeros(width), np.zeros(width)
    for task in tasks:
        n = len(task.lengths)
        for i in np.unique(np.linspace(0, n - 1, min(n, max_episodes)).round().astype(int)):
            s = np.asarray(task.read(int(i), fields=("states",))["states"], dtype=np.float64)
            d = s.shape[1]
            total[:d] += s.sum(0)
            total_sq[:d] += (s * s).sum(0)
            count[:d] += len(s)
    count = np.maximum(count, 1)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std[std < MIN_STD] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(states, mean, std):
    """``(states - mean) / std`` over the last axis, for states narrower than the statistics (a domain's
    smaller tasks use its first dimensions); numpy arrays or torch tensors.  What the sampler does to
    training windows and the agent to observations."""
    d = states.shape[-1]
    return (states - mean[:d]) / std[:d]
