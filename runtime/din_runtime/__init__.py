"""Serve din-export model bundles with numpy and ONNX Runtime only."""

from .encoding import FeatureEncoder, Ragged
from .errors import BundleError, InputError, ProviderError
from .predictor import Predictor

__all__ = ["BundleError", "FeatureEncoder", "InputError", "Predictor", "ProviderError", "Ragged"]
__version__ = "0.1.0"
