"""lram: Large Recurrent Action Models (xLSTM / Mamba / Transformer backbones for generalist control)."""

__version__ = "0.1.0"

from lram.utils.checks import set_validation  # noqa: E402


def load(path, device="cpu"):
    """A ready LRAM policy from a checkpoint or run folder (:meth:`lram.models.LRAMPolicy.from_pretrained`)."""
    from lram.models.persistence import load_pretrained

    return load_pretrained(path, device)


__all__ = ["__version__", "load", "set_validation"]
