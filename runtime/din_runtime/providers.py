"""Choosing ONNX Runtime execution providers and confirming the ones actually in use.

ONNX Runtime falls back from CUDA to CPU without raising; this module makes that visible. OpenVINO's execution
provider comes as a plugin library (the `onnxruntime-ep-openvino` package, `din-runtime[openvino]`), registered
with ONNX Runtime once per process and attached to a session through the OpenVINO CPU device it reports.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnxruntime as ort

from . import thread_pool
from .errors import ProviderError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
CHOICES = ("auto", "cpu", "cuda", "openvino")  # what the command lines offer; a list of provider names works in Python too
OPENVINO_OPTIONS = {"precision": "FP32"}  # float32 arithmetic, for parity (OpenVINO may pick bf16 on CPUs that have it)
_PLUGIN = threading.Lock()
_openvino_registered = False  # ONNX Runtime refuses a plugin library registered twice in one process
ProviderChoice = str | Sequence[str]
_STDERR = threading.Lock()
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextmanager
def _stderr_held() -> Iterator[list[str]]:
    """What ONNX Runtime's default logger writes to the process's stderr while the block runs, held back and
    handed to the caller (the list holds it once the block ends). ONNX Runtime offers no getter for its global log
    level, so lowering and restoring that level would clobber a level the application set; the file descriptor
    is swapped instead, under a lock, for as long as a session takes to create."""
    held: list[str] = []
    with _STDERR, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            held.append(_ANSI.sub("", sink.read().decode("utf-8", errors="replace")))


def openvino_devices() -> list[Any]:
    """The OpenVINO plugin's CPU devices (ONNX Runtime's OrtEpDevice), the plugin registered on first use; a
    ProviderError saying why where there are none."""
    try:
        import onnxruntime_ep_openvino as plugin
    except ImportError:
        raise ProviderError("OpenVINO was asked for, but the onnxruntime-ep-openvino package is not installed "
                            "(pip install 'din-runtime[openvino]')") from None
    global _openvino_registered
    with _PLUGIN:
        if not _openvino_registered:
            try:
                ort.register_execution_provider_library("openvino", plugin.get_library_path())
            except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types for a library it cannot load
                raise ProviderError(f"OpenVINO's plugin library could not be registered: {str(error).splitlines()[0][:200]}") from None
            _openvino_registered = True
    devices = [d for d in ort.get_ep_devices() if d.ep_name == OPENVINO and d.ep_metadata.get("ov_device") == "CPU"]
    if not devices:
        hardware = sorted({f"{d.device.type.name} by {d.device.vendor or 'an unnamed vendor'}" for d in ort.get_ep_devices()})
        raise ProviderError(f"OpenVINO was asked for, but its plugin offers no CPU device on this machine (ONNX Runtime sees "
                            f"{', '.join(hardware)}; the plugin serves Intel hardware)")
    return devices


def resolve(choice: ProviderChoice) -> tuple[list[str], bool]:
    """Return (providers to request, whether the first one is required rather than preferred)."""
    available = ort.get_available_providers()
    if choice == "openvino":
        openvino_devices()
        return [OPENVINO, CPU], True
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


def preferred(choice: ProviderChoice) -> str:
    """The provider a choice asks for first, whether or not this ONNX Runtime build offers it."""
    if choice == "auto":
        return CUDA if CUDA in ort.get_available_providers() else CPU
    if isinstance(choice, str):
        return {"cpu": CPU, "cuda": CUDA, "openvino": OPENVINO}.get(choice, choice)
    return list(choice)[0] if list(choice) else CPU


def create_session(model_path: str, choice: ProviderChoice, options: ort.SessionOptions | None = None, fallback: bool = False,
                   provider_options: list[dict[str, Any]] | None = None) -> ort.InferenceSession:
    """Create a session and check that the first requested provider is in use when it was required; with
    fallback=True a provider that could not be used is a logged warning instead of an error. In a process that shares
    one thread pool (thread_pool.share) the session runs on it, whatever threads its options ask for."""
    options = thread_pool.mark(options or ort.SessionOptions())
    try:
        requested, required = resolve(choice)
    except ProviderError as error:  # e.g. CUDA asked of ONNX Runtime's CPU package: with fallback, the CPU and a warning
        if not fallback:
            raise
        logging.getLogger("din_runtime").warning("%s (fallback=True: continuing on %s)", error, CPU)
        requested, required, provider_options = [CPU], False, None
    if provider_options is not None and len(provider_options) != len(requested):
        raise ValueError(f"provider_options needs one dict per provider {requested}")
    held = [""]
    if requested[0] == OPENVINO:  # a plugin provider joins through its devices; ONNX Runtime's CPU provider takes the rest
        options.add_provider_for_devices(openvino_devices(), {**OPENVINO_OPTIONS, **((provider_options or [{}])[0])})
        session = ort.InferenceSession(model_path, sess_options=options)
    elif requested[0] != CUDA:
        session = ort.InferenceSession(model_path, sess_options=options, providers=requested, provider_options=provider_options)
    else:  # ONNX Runtime's own load error for missing CUDA libraries is reported once, below, in our words with its reason
        with _stderr_held() as held:
            session = ort.InferenceSession(model_path, sess_options=options, providers=requested, provider_options=provider_options)
        if session.get_providers()[0] == CUDA and held[0]:
            sys.stderr.write(held[0])  # nothing failed: whatever it said is passed on unchanged
    in_use = session.get_providers()
    if required and in_use[0] != requested[0]:
        reasons = [line for line in held[0].splitlines() if "Failed to create" in line]
        # its first sentences say which versions it needs; the rest points at its web page
        reason = f" ({reasons[0].split('] ', 1)[-1].split(' Please')[0].strip()[:200]})" if reasons else ""
        advice = "; check the CUDA and cuDNN libraries" if requested[0] == CUDA else ""
        message = f"{requested[0]} was asked for but ONNX Runtime is using {in_use}{advice}{reason}"
        if not fallback:
            raise ProviderError(message)
        logging.getLogger("din_runtime").warning("%s (fallback=True: continuing on %s)", message, in_use[0])
    return session


def cpu_session(model_path: str | Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A session on the CPU provider alone: what export checks, verification and offline scoring run on."""
    return ort.InferenceSession(str(model_path), sess_options=thread_pool.mark(options or ort.SessionOptions()), providers=[CPU])
