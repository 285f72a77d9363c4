"""The bundle's manifest: the one description of a model that both the exporter writes and the runtime reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import BundleError
from .schema import FeatureSchema

FORMAT_VERSION = 2  # what the exporter writes
# What this runtime reads. 2: vocabulary keys in row order (not necessarily sorted) and each missing token's row
# explicit, which warm-started bundles need; 1: sorted keys, the missing token after them.
READABLE_FORMATS = (1, 2)
# Every file a bundle may hold, named here only.
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
RANKING_FILE = "rank.onnx"
CHECKPOINT_FILE = "weights.pt"
PLOT_FILE = "training.png"
RELIABILITY_FILE = "reliability.png"  # the test split's reliability diagram
EXPLAIN_FILE = "explain.onnx"  # probability and a weight per behaviour (every model but base)
GRAPH_FILES = {"onnx": MODEL_FILE, "ranking": RANKING_FILE, "explain": EXPLAIN_FILE}
OPTIONAL_GRAPHS = ("ranking", "explain")  # sections a bundle may lack (null or absent)
OUTPUT_NAME = "probability"  # every graph's output: each row's click probability
WEIGHTS_NAME = "attention_weights"  # explain.onnx's second output: each behaviour's attention weight (batch, seq_len)
# The raw-input graph's (`din-export triton --raw-inputs`) input that counts each row's real history entries.
LENGTH_INPUT = "history_length"  # manifest section -> the one file name it may name
REQUIRED_KEYS = ("format_version", "spec", "encoding", "onnx", "metrics", "versions")
# Keys that bundles of earlier releases may lack, with the value they meant; read_manifest fills them in, so no
# reader needs a default of its own.
ONNX_DEFAULTS = {"graph": "plain", "precision": "fp32", "optimization": None, "precisions": {}}
TOP_LEVEL_DEFAULTS = {"ranking": None, "explain": None, "training": {}, "data": {}, "plot": None, "reliability_plot": None,
                      "calibration": None, "checkpoint": CHECKPOINT_FILE}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle: Path) -> dict[str, Any]:
    """Parse and check a bundle's manifest; any problem raises BundleError naming the bundle."""
    path = Path(bundle) / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST_FILE} (is this a din-export bundle?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object")
    absent = [key for key in REQUIRED_KEYS if key not in manifest]
    if absent:
        raise BundleError(f"{path}: missing keys {absent}")
    if manifest["format_version"] not in READABLE_FORMATS:
        raise BundleError(f"{path}: format version {manifest['format_version']!r}; this runtime reads versions {list(READABLE_FORMATS)}")
    for section, file_name in GRAPH_FILES.items():
        entry = manifest.get(section)
        if section in OPTIONAL_GRAPHS and entry is None:
            continue  # bundles may lack these: Predictor.rank then replicates the history; explain is refused
        if not isinstance(entry, dict) or entry.get("file") != file_name:
            raise BundleError(f"{path}: {section}.file must be '{file_name}'")
    for key, value in TOP_LEVEL_DEFAULTS.items():
        manifest.setdefault(key, value)
    for key, value in ONNX_DEFAULTS.items():
        manifest["onnx"].setdefault(key, value)
    return manifest


def schema_of(manifest: dict[str, Any]) -> FeatureSchema:
    """The manifest's fitted feature schema (its `encoding` section)."""
    try:
        return FeatureSchema.from_manifest(manifest["encoding"])
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"the manifest's encoding section is malformed ({error!r})") from None


def verify_model_file(bundle: Path, manifest: dict[str, Any], section: str = "onnx") -> Path:
    """Check the graph file of a manifest section (onnx: model.onnx, ranking: rank.onnx) exists and matches the
    manifest's sha256, so a damaged file never reaches ONNX Runtime."""
    model_path = Path(bundle) / GRAPH_FILES[section]
    if not model_path.is_file():
        raise BundleError(f"{bundle}: {GRAPH_FILES[section]} is missing")
    expected = manifest[section].get("sha256")
    actual = sha256_of(model_path)
    if actual != expected:
        raise BundleError(f"{model_path}: sha256 {actual} does not match the manifest's {expected}; the file is damaged or was replaced")
    return model_path
