"""lram: Large Recurrent Action Models (xLSTM / Mamba / Transformer backbones for generalist control)."""

__version__ = "0.1.0"

from lram.utils.checks import set_validation  # noqa: E402


def load(path, device="cpu"):
    """A ready LRAM policy from a checkpoint or run folder (see lram.training.checkpoint.load_policy)."""
    from lram.training.checkpoint import load_policy

    return load_policy(path, device)[0]


__all__ = ["__version__", "load", "set_validation"]
