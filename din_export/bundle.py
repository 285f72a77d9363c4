"""A model bundle, written and read in one place: the checkpoint, and the one manifest writer.

The manifest holds the spec and the fitted feature schema (its `encoding` section); the checkpoint holds only the
model's settings and weights and refers to the manifest beside it, so there is one copy of each. Bundles of
release 0.1.0 also stored spec and encoding in weights.pt: those copies are read only where no manifest is beside
the checkpoint.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pyarrow as pa
import torch

from din_runtime.manifest import CHECKPOINT_FILE, FORMAT_VERSION, MANIFEST_FILE, read_manifest, schema_of
from din_runtime.schema import FeatureSchema

from . import __version__
from .config import ModelConfig
from .data.spec import Spec, spec_from_dict
from .files import write_json
from .model.base import BehaviourModel
from .model.calibration import Calibration, CalibrationFit
from .model.family import build_model


@dataclass
class LoadedBundle:
    """A bundle's PyTorch model in eval mode with the spec and manifest it came with (None for a lone 0.1.0 checkpoint)."""

    din: BehaviourModel
    spec: Spec
    manifest: dict[str, Any] | None

    @property
    def schema(self) -> FeatureSchema:
        return self.din.schema


def library_versions() -> dict[str, str]:
    return {"din_export": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "pyarrow": pa.__version__,
            "python": platform.python_version()}


def save_checkpoint(folder: Path, din: BehaviourModel) -> None:
    """weights.pt: the model's settings and weights, and the name of the manifest that describes its inputs."""
    torch.save({"model_config": din.config.to_dict(), "state_dict": din.state_dict(), "manifest": MANIFEST_FILE}, folder / CHECKPOINT_FILE)


def load_bundle(source: str | Path) -> LoadedBundle:
    """The model of a bundle folder, or of a weights.pt file (described by the manifest beside it), without
    unpickling anything."""
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    manifest = read_manifest(folder) if source.is_dir() or (folder / MANIFEST_FILE).is_file() else None
    checkpoint = torch.load(folder / CHECKPOINT_FILE if source.is_dir() else source, weights_only=True)
    if manifest is not None:
        spec, schema = spec_from_dict(manifest["spec"]), schema_of(manifest)
    elif "encoding" in checkpoint and "spec" in checkpoint:  # a 0.1.0 checkpoint on its own
        spec, schema = spec_from_dict(checkpoint["spec"]), FeatureSchema.from_manifest(checkpoint["encoding"])
    else:
        raise ValueError(f"{source}: no {MANIFEST_FILE} beside the checkpoint; export from its bundle folder instead")
    din = build_model(schema, ModelConfig.from_dict(checkpoint["model_config"]))
    din.load_state_dict(checkpoint["state_dict"])
    din.calibration = Calibration(CalibrationFit.from_dict((manifest or {}).get("calibration")))
    return LoadedBundle(din.eval(), spec, manifest)


def write_manifest(folder: Path, spec: Spec, din: BehaviourModel, graphs: dict[str, dict[str, Any]], metrics: dict[str, Any],
                   training: dict[str, Any], data: dict[str, Any], plot: str | None, **provenance: Any) -> dict[str, Any]:
    """The bundle's manifest.json: everything serving needs (spec, schema, graphs) and how the model came to be
    (settings, data, metrics, versions, and `provenance`: seconds per phase, the source of a re-export). Returns it."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": spec.to_dict(),
        "encoding": din.schema.to_manifest(),
        "model": din.config.to_dict(),
        "calibration": din.calibration.fit.to_dict(),
        "training": training,
        "data": data,
        **graphs,
        "metrics": metrics,
        "checkpoint": CHECKPOINT_FILE,
        "plot": plot,
        "versions": library_versions(),
        "command": " ".join(sys.argv),
        **provenance,
    }
    write_json(folder / MANIFEST_FILE, manifest)
    return manifest
