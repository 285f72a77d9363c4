"""Predictor: load a bundle, encode raw feature values with its manifest, return click probabilities."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .encoding import FeatureEncoder
from .errors import BundleError
from .manifest import read_manifest, verify_model_file
from .providers import ProviderChoice, create_session


class Predictor:
    """Serves one model bundle. Construct with Predictor.load."""

    def __init__(self, bundle: Path, manifest: dict[str, Any], session: ort.InferenceSession) -> None:
        self.bundle = bundle
        self.manifest = manifest
        self.session = session
        self.encoder = FeatureEncoder(manifest["encoding"])
        self.output_name = manifest["onnx"]["outputs"][0]["name"]
        session_inputs = sorted(i.name for i in session.get_inputs())
        if session_inputs != sorted(self.encoder.names):
            raise BundleError(f"{bundle}: model inputs {session_inputs} do not match the manifest's features {sorted(self.encoder.names)}")

    @classmethod
    def load(cls, bundle: str | Path, providers: ProviderChoice = "auto", session_options: ort.SessionOptions | None = None) -> Predictor:
        """Check the manifest and the model's sha256, then open an ONNX Runtime session.

        providers: "auto" (CUDA where usable, else CPU), "cpu", "cuda" (raises if CUDA is not in use),
        or an explicit list of ONNX Runtime provider names (the first must end up in use).
        """
        bundle = Path(bundle)
        manifest = read_manifest(bundle)
        model_path = verify_model_file(bundle, manifest)
        session = create_session(str(model_path), providers, session_options)
        return cls(bundle, manifest, session)

    @property
    def providers(self) -> list[str]:
        """The providers ONNX Runtime is actually using, first one preferred."""
        return self.session.get_providers()

    @property
    def feature_names(self) -> list[str]:
        return self.encoder.names

    def encode(self, features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The exact feed predict hands to ONNX Runtime: ONNX input name to numpy array."""
        return self.encoder.encode(features)

    def predict(self, features: Mapping[str, Any]) -> np.ndarray:
        """Click probability per row, float32 of shape (n,), from raw values as they appear in the training table."""
        feed = self.encode(features)
        rows = len(next(iter(feed.values())))
        if rows == 0:
            return np.zeros(0, dtype=np.float32)
        (probabilities,) = self.session.run([self.output_name], feed)
        return probabilities.reshape(rows).astype(np.float32, copy=False)
