"""torch.onnx's registry of ONNX decompositions, built once per process instead of once per export.

The dynamo exporter builds the registry (about a thousand torchlib functions turned into ONNX Script IR) on every
`torch.onnx.export` call: 0.9 s of the 3.3 s one graph takes on 2 cores, and a bundle exports two graphs (a
tune, a test run or a daily retraining many more). The exporter only reads the registry when no custom
translation table is given (ours never is), so one instance serves every export. torch is pinned (2.13.0); where a
future torch moves the registry, `cached_registry` leaves the exporter as it is.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def cached_registry() -> Iterator[None]:
    """Within the block, torch.onnx's exports share one registry per opset."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:  # pragma: no cover - another torch's layout: export as torch does
        yield
        return
    registry_class = _registration.ONNXRegistry
    original = registry_class.__dict__.get("from_torchlib")
    if not isinstance(original, classmethod):  # pragma: no cover - another torch's layout
        yield
        return
    build = _builder(registry_class, original)
    registry_class.from_torchlib = classmethod(lambda cls, opset_version=None: build(opset_version))  # type: ignore[method-assign]
    try:
        yield
    finally:
        registry_class.from_torchlib = original  # type: ignore[method-assign]


@functools.cache
def _builder(registry_class: type, original: classmethod) -> Any:
    @functools.cache
    def build(opset_version: int | None) -> Any:
        function = original.__get__(None, registry_class)
        return function() if opset_version is None else function(opset_version=opset_version)
    return build
