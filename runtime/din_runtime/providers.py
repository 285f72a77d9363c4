"""Choosing ONNX Runtime execution providers and confirming the ones actually in use.

ONNX Runtime falls back from CUDA to CPU without raising; this module makes that visible.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from .errors import ProviderError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ProviderChoice = str | Sequence[str]


def resolve(choice: ProviderChoice) -> tuple[list[str], bool]:
    """Return (providers to request, whether the first one is required rather than preferred)."""
    available = ort.get_available_providers()
    if choice == "auto":
        return ([CUDA, CPU] if CUDA in available else [CPU]), False
    if choice == "cpu":
        return [CPU], True
    if choice == "cuda":
        if CUDA not in available:
            raise ProviderError(f"CUDA was asked for, but this ONNX Runtime build offers only {available}")
        return [CUDA, CPU], True
    if isinstance(choice, str):
        raise ValueError(f"providers must be 'auto', 'cpu', 'cuda' or a list of provider names, not {choice!r}")
    requested = list(choice)
    unknown = [p for p in requested if p not in available]
    if unknown or not requested:
        raise ProviderError(f"providers {unknown or requested} are not offered by this ONNX Runtime build ({available})")
    return requested, True


def create_session(model_path: str, choice: ProviderChoice, options: ort.SessionOptions | None = None, fallback: bool = False,
                   provider_options: list[dict[str, Any]] | None = None) -> ort.InferenceSession:
    """Create a session and check that the first requested provider is in use when it was required; with
    fallback=True a provider that could not be used is a logged warning instead of an error."""
    requested, required = resolve(choice)
    if provider_options is not None and len(provider_options) != len(requested):
        raise ValueError(f"provider_options needs one dict per provider {requested}")
    if requested[0] == CUDA:
        # Keep ONNX Runtime's own load error for missing CUDA libraries off the console: what happened is reported
        # once, below, as a ProviderError (or a warning with fallback=True), not twice in two voices.
        ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(model_path, sess_options=options, providers=requested, provider_options=provider_options)
    finally:
        ort.set_default_logger_severity(2)
    in_use = session.get_providers()
    if required and in_use[0] != requested[0]:
        message = f"{requested[0]} was asked for but ONNX Runtime is using {in_use}; check the CUDA and cuDNN libraries"
        if not fallback:
            raise ProviderError(message)
        logging.getLogger("din_runtime").warning("%s (fallback=True: continuing on %s)", message, in_use[0])
    return session


def cpu_session(model_path: str | Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A session on the CPU provider alone: what export checks, verification and offline scoring run on."""
    return ort.InferenceSession(str(model_path), sess_options=options, providers=[CPU])
