"""Rebuild the PyTorch model of a bundle, or of a weights-only checkpoint file, without unpickling anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from din_runtime.manifest import read_manifest

from .bundle import CHECKPOINT_FILE
from .model import DIN, ModelConfig, ModelInputs


def load_checkpoint(source: str | Path) -> tuple[DIN, dict[str, Any] | None, dict[str, Any]]:
    """(model in eval mode, the bundle's manifest or None, the checkpoint) from a bundle folder or a weights.pt file."""
    source = Path(source)
    manifest = read_manifest(source) if source.is_dir() else None
    checkpoint = torch.load(source / CHECKPOINT_FILE if source.is_dir() else source, weights_only=True)
    encoding = manifest["encoding"] if manifest else checkpoint.get("encoding")
    if encoding is None:
        raise ValueError(f"{source}: the checkpoint holds no encoding; export from its bundle folder instead")
    din = DIN(ModelInputs.from_encoding(encoding), ModelConfig.from_dict(checkpoint["model_config"]))
    din.load_state_dict(checkpoint["state_dict"])
    return din.eval(), manifest, {**checkpoint, "encoding": encoding}


def load_model(bundle: str | Path) -> DIN:
    """The bundle's DIN in eval mode, with the same weights the ONNX file was exported from."""
    return load_checkpoint(bundle)[0]
