"""lram: Large Recurrent Action Models (xLSTM / Mamba / Transformer backbones for generalist control)."""

__version__ = "0.1.0"

from lram.utils.checks import set_validation  # noqa: E402

__all__ = ["__version__", "set_validation"]
