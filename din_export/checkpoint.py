"""Rebuild the PyTorch model of a bundle from its manifest and weights-only checkpoint (nothing is unpickled)."""

from __future__ import annotations

from pathlib import Path

import torch

from din_runtime.manifest import read_manifest

from .bundle import CHECKPOINT_FILE
from .model import DIN, ModelConfig, ModelInputs


def load_model(bundle: str | Path) -> DIN:
    """The bundle's DIN in eval mode, with the same weights the ONNX file was exported from."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    checkpoint = torch.load(bundle / CHECKPOINT_FILE, weights_only=True)
    din = DIN(ModelInputs.from_encoding(manifest["encoding"]), ModelConfig.from_dict(checkpoint["model_config"]))
    din.load_state_dict(checkpoint["state_dict"])
    return din.eval()
