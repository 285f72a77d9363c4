"""Model and training settings from three layers: defaults, the spec's [model] and [training] sections, and
command-line flags given explicitly (highest)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .model import ModelConfig
from .spec import Spec, SpecError
from .train import TrainConfig


def _build(kind: type, section: str, values: dict[str, Any]) -> Any:
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SpecError(f"[{section}]: unknown setting(s) {unknown}; known: {sorted(known)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return kind(**converted)
    except (TypeError, ValueError) as error:
        raise SpecError(f"[{section}]: {error}") from None


def resolve(spec: Spec, model_flags: dict[str, Any], training_flags: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Explicit flags override the spec's sections, which override the defaults."""
    return (_build(ModelConfig, "model", {**spec.model, **model_flags}),
            _build(TrainConfig, "training", {**spec.training, **training_flags}))
