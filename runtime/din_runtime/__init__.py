"""Serve din-export bundles with numpy and ONNX Runtime only."""

from typing import Any

from .encoding import FeatureEncoder, Ragged
from .errors import BundleError, InputError, ProviderError

__all__ = ["BundleError", "FeatureEncoder", "InputError", "Predictor", "ProviderError", "Ragged"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Predictor (and with it ONNX Runtime) is imported on first use: the encoder alone, which training and
    `prepare` use, does not need ONNX Runtime loaded."""
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'din_runtime' has no attribute {name!r}")
