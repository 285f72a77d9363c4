"""Predictor: load a bundle, encode raw feature values with its manifest, return click probabilities."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .encoding import FeatureEncoder
from .errors import BundleError, ProviderError
from .manifest import read_manifest, verify_model_file
from .providers import ProviderChoice, create_session

DEFAULT_CHUNK_ROWS = 16_384
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options_for(threads: int | None = None, optimization: str | None = None) -> ort.SessionOptions:
    """ONNX Runtime session options from the two settings that matter most for latency."""
    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimization is not None:
        if optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization must be one of {sorted(OPTIMIZATION_LEVELS)}, not {optimization!r}")
        options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    return options


class Predictor:
    """Serves one model bundle. Construct with Predictor.load.

    Safe to call from many threads at once: encoding keeps no state between calls and ONNX Runtime's
    InferenceSession.run is thread-safe (tested with 8 threads against sequential calls).
    """

    def __init__(self, bundle: Path, manifest: dict[str, Any], session: ort.InferenceSession,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
        self.bundle = bundle
        self.manifest = manifest
        self.session = session
        self.chunk_rows = chunk_rows
        self.encoder = FeatureEncoder(manifest["encoding"])
        self.output_name = manifest["onnx"]["outputs"][0]["name"]
        session_inputs = sorted(i.name for i in session.get_inputs())
        if session_inputs != sorted(self.encoder.names):
            raise BundleError(f"{bundle}: model inputs {session_inputs} do not match the manifest's features {sorted(self.encoder.names)}")

    @classmethod
    def load(cls, bundle: str | Path, providers: ProviderChoice = "auto", session_options: ort.SessionOptions | None = None,
             threads: int | None = None, optimization: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
             fallback: bool = False, provider_options: list[dict[str, Any]] | None = None) -> Predictor:
        """Check the manifest and the model's sha256, then open an ONNX Runtime session.

        providers: "auto" (CUDA where usable, else CPU), "cpu", "cuda" (raises if CUDA is not in use, or warns with
        fallback=True), or an explicit list of ONNX Runtime provider names (the first must end up in use).
        provider_options: passed through to ONNX Runtime, one dict per requested provider.
        threads, optimization ("disable", "basic", "extended", "all"): session settings, unless session_options is given.
        chunk_rows: larger batches are run in chunks of this many rows, bounding the session's memory.
        """
        bundle = Path(bundle)
        manifest = read_manifest(bundle)
        model_path = verify_model_file(bundle, manifest)
        options = session_options or session_options_for(threads, optimization)
        try:
            session = create_session(str(model_path), providers, options, fallback=fallback, provider_options=provider_options)
        except (ProviderError, ValueError):
            raise
        except Exception as error:  # ONNX Runtime's own error types: a file it cannot load, e.g. missing external data
            raise BundleError(f"{model_path}: ONNX Runtime cannot load it ({str(error).splitlines()[0][:300]})") from None
        return cls(bundle, manifest, session, chunk_rows)

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
        if rows <= self.chunk_rows:
            (probabilities,) = self.session.run([self.output_name], feed)
            return probabilities.reshape(rows).astype(np.float32, copy=False)
        out = np.empty(rows, dtype=np.float32)
        for start in range(0, rows, self.chunk_rows):
            part = {name: array[start:start + self.chunk_rows] for name, array in feed.items()}
            out[start:start + self.chunk_rows] = self.session.run([self.output_name], part)[0].reshape(-1)
        return out
