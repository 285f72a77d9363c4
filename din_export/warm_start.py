"""Continuing a bundle's model on new data (`train-and-export --warm-start BUNDLE`): what must match the parent,
how its weights carry over, and the lineage the new manifest records.

The vocabularies themselves are extended in data/fitting.py (every parent key keeps its row); this module checks
that the spec and the architecture are the parent's and copies the weights row for row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from din_runtime.schema import FeatureSchema

from .bundle import LoadedBundle, load_bundle
from .config import WARM_START_TRAINING, ModelConfig
from .data.spec import Spec
from .errors import SpecError
from .model.base import BehaviourModel, table_key

# What a feature must keep for its weights to mean the same: its kind, the vocabulary it shares, the item it
# describes. min_count, max_len, fill and the rest may change from one day to the next.
SHAPING_KEYS = ("kind", "shares", "attribute_of")


class WarmStartError(SpecError):
    """The --warm-start bundle cannot be continued with this spec, these settings or this data."""


@dataclass
class Parent:
    """The bundle a warm start continues: its model, spec and manifest, and where it lies."""

    folder: Path
    bundle: LoadedBundle

    @property
    def schema(self) -> FeatureSchema:
        return self.bundle.schema

    @property
    def model_config(self) -> ModelConfig:
        return self.bundle.din.config

    @property
    def manifest(self) -> dict[str, Any]:
        assert self.bundle.manifest is not None
        return self.bundle.manifest


def load_parent(folder: Path) -> Parent:
    """The bundle at `folder` (any format this release reads: 0.1.0's and format 1's too)."""
    folder = Path(folder)
    try:
        bundle = load_bundle(folder)
    except (OSError, ValueError, RuntimeError) as error:
        raise WarmStartError(f"--warm-start {folder}: {error}") from None
    return Parent(folder, bundle)


def check_spec(parent: Spec, spec: Spec) -> None:
    """The spec's features are the parent's, each of the same kind and sharing; else one line naming the feature."""
    ours, theirs = {f.name: f for f in spec.features}, {f.name: f for f in parent.features}
    for name in ours:
        if name not in theirs:
            raise WarmStartError(f"feature '{name}' is not in the --warm-start bundle's spec (it has {sorted(theirs)}); "
                                 "a warm start keeps the parent's features: train without --warm-start to add one")
    for name in theirs:
        if name not in ours:
            raise WarmStartError(f"feature '{name}' of the --warm-start bundle's spec is missing from this spec; a warm start "
                                 "keeps the parent's features: train without --warm-start to drop one")
    for name, feature in ours.items():
        for key in SHAPING_KEYS:
            mine, its = getattr(feature, key), getattr(theirs[name], key)
            if mine != its:
                raise WarmStartError(f"feature '{name}': {key} is {mine!r} here but {its!r} in the --warm-start bundle")


def check_architecture(parent: ModelConfig, asked: dict[str, Any]) -> None:
    """Settings given (by flag or the spec's [model] section) must equal the parent's: the architecture is its."""
    for key, value in asked.items():
        theirs = getattr(parent, key, None)
        mine = tuple(value) if isinstance(value, list) else value
        if mine != theirs:
            raise WarmStartError(f"[model] {key} = {mine!r} differs from the --warm-start bundle's {theirs!r}; the architecture "
                                 "is the parent's (leave the setting out, or train without --warm-start)")


def continued_settings(parent: Parent, spec: Spec, model: dict[str, Any], training: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A continuation's settings from the spec's sections and the flags given: the parent's architecture (anything
    asked for must equal it), and the continuation schedule (WARM_START_TRAINING) for training settings that
    neither the spec nor a flag sets."""
    check_spec(parent.bundle.spec, spec)
    check_architecture(parent.model_config, {**spec.model, **model})
    return parent.model_config.to_dict(), {**{k: v for k, v in WARM_START_TRAINING.items() if k not in spec.training}, **training}


def copy_weights(parent: BehaviourModel, din: BehaviourModel) -> None:
    """Every weight and buffer of the parent into `din`: embedding tables row for row (rows the parent lacks
    keep their fresh initialisation), everything else whole. Dice's running statistics are buffers, so they
    carry over too and go on updating from there."""
    tables = {f"embeddings.{table_key(name)}.weight" for name, _ in din.tables()}
    theirs, ours = parent.state_dict(), din.state_dict()
    with torch.no_grad():
        for name, tensor in ours.items():
            source = theirs.get(name)
            if source is None:
                raise WarmStartError(f"the --warm-start bundle's model has no '{name}'; it cannot be continued as this model")
            if name in tables and source.shape[0] <= tensor.shape[0] and source.shape[1:] == tensor.shape[1:]:
                tensor[:source.shape[0]] = source
            elif source.shape == tensor.shape:
                tensor.copy_(source)
            else:
                raise WarmStartError(f"'{name}' has shape {tuple(source.shape)} in the --warm-start bundle but {tuple(tensor.shape)} "
                                     "here (a setting that shapes the model changed, such as a sequence's max_len for din-seq)")


def lineage(parent: Parent, vocabularies: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The manifest's `lineage`: the parent (its model's sha256, when it was written, where it lay), the generation
    (0: trained from scratch), and per categorical the keys its parent had, gained and turned away by the cap."""
    manifest = parent.manifest
    before = manifest.get("lineage") or {}
    parent_sizes = {f.name: len(f.keys) for f in parent.schema.categoricals}
    return {
        "generation": int(before.get("generation", 0)) + 1,
        "parent": {"bundle": str(parent.folder.resolve()), "model_sha256": manifest["onnx"].get("sha256"),
                   "created": manifest.get("created"), "data": manifest.get("data", {})},
        "vocabularies": {name: {"parent_keys": parent_sizes[name], **counts} for name, counts in vocabularies.items()},
    }
