"""Serve din-export bundles with numpy and ONNX Runtime only."""

from typing import Any

from .encoding import FeatureEncoder, Ragged
from .errors import BundleError, InputError, ProviderError
from .schema import FeatureSchema

__all__ = ["BundleError", "Explanation", "FeatureEncoder", "FeatureSchema", "InputError", "Predictor", "ProviderError", "Ragged", "Ranking"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Predictor and Ranking (and with them ONNX Runtime) is imported on first use: the encoder alone, which training and
    `prepare` use, does not need ONNX Runtime loaded."""
    if name in ("Explanation", "Predictor", "Ranking"):
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'din_runtime' has no attribute {name!r}")
