"""The model of a variant: DIN and its pooling variants (din.py), DIEN (dien.py), BST (bst.py)."""

from __future__ import annotations

from din_runtime.schema import FeatureSchema

from ..config import ModelConfig
from .base import BehaviourModel
from .bst import BST
from .dien import DIEN
from .din import DIN

MODELS: dict[str, type[BehaviourModel]] = {"din": DIN, "base": DIN, "din-seq": DIN, "dien": DIEN, "bst": BST}


def build_model(schema: FeatureSchema, config: ModelConfig) -> BehaviourModel:
    """A freshly initialised model of `config.variant` for the schema."""
    return MODELS[config.variant](schema, config)
