"""`din-export export`: a new bundle from a bundle or a weights-only checkpoint, without retraining.

Choices: the graph (folded or plain), the precision (fp32, int8, fp16) and offline graph optimisation. A
precision other than fp32 is scored on the validation split beside the float32 graph and refused when its AUC
drops by more than the threshold, unless forced.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

from din_runtime.encoding import FeatureEncoder
from din_runtime.manifest import FORMAT_VERSION, MANIFEST_FILE, MODEL_FILE, RANKING_FILE, sha256_of

from .bundle import CHECKPOINT_FILE, staged_bundle, write_json
from .checkpoint import load_checkpoint
from .export import ExportError, compare_with_pytorch, describe_io, export_onnx, parity_grid
from .pipeline import DataSource, encode_split, library_versions, load_tables
from .ranking import compare_ranking_with_pytorch, export_ranking, ranking_section
from .spec import Spec, spec_from_dict
from .tables import read_table
from .train import EncodedSplit
from .variants import DEFAULT_MAX_AUC_DROP, TOLERANCE, convert, session_metrics

OPTIMIZATION_LEVEL = "basic"  # ONNX Runtime's basic optimisations are hardware-independent, so the saved file stays portable


class VariantRejected(ExportError):
    """A quantised or half-precision graph lost more validation AUC than allowed."""


def _validation_split(spec: Spec, encoding: list[dict[str, Any]], manifest: dict[str, Any] | None, valid: Path | None) -> EncodedSplit:
    if valid is not None:
        table = read_table(valid, spec)
    elif manifest is not None and manifest.get("data", {}).get("paths") is not None:
        data = manifest["data"]
        source = DataSource.from_manifest(data)
        missing = [str(p) for p in (source.data, source.valid) if p is not None and not p.is_file()]
        if missing:
            raise ExportError(f"the training data {missing} is gone; pass --valid TABLE to score the variant")
        table = load_tables(source, spec, data.get("seed", 0))["valid"]
    else:
        raise ExportError("scoring a variant needs validation data: pass --valid TABLE")
    return encode_split(table, spec, FeatureEncoder(encoding))


def optimize_offline(path: Path) -> None:
    """Save ONNX Runtime's basic-level optimised graph in place of the file."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    optimized = path.with_suffix(".optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    os.replace(optimized, path)


def export_bundle(source: Path, out: Path, graph: str = "folded", precision: str = "fp32", valid: Path | None = None,
                  max_auc_drop: float = DEFAULT_MAX_AUC_DROP, force: bool = False, optimize: bool = False) -> dict[str, Any]:
    """Write a verified bundle at `out` and return its manifest."""
    source, out = Path(source), Path(out)
    din, manifest, checkpoint = load_checkpoint(source)
    encoding = checkpoint["encoding"]
    spec = spec_from_dict(manifest["spec"] if manifest else checkpoint["spec"])
    max_len = max(din.inputs.max_lens.values())
    with staged_bundle(out) as staging:
        model_path, rank_path = staging / MODEL_FILE, staging / RANKING_FILE
        export_onnx(din, model_path, graph)
        export_ranking(din, rank_path)
        precisions: dict[str, Any] = {}
        if precision != "fp32":
            split = _validation_split(spec, encoding, manifest, valid)
            converted = staging / f"{precision}.onnx"
            convert(model_path, converted, precision)
            precisions = {"fp32": session_metrics(model_path, split), precision: session_metrics(converted, split)}
            drop = precisions["fp32"]["auc"] - precisions[precision]["auc"]
            precisions["auc_drop"], precisions["max_auc_drop"] = drop, max_auc_drop
            if drop > max_auc_drop and not force:
                raise VariantRejected(f"{precision} loses {drop:.4f} validation AUC (float32 {precisions['fp32']['auc']:.4f}, "
                                      f"{precision} {precisions[precision]['auc']:.4f}) > {max_auc_drop}; --force to keep it")
            os.replace(converted, model_path)
            convert(rank_path, converted, precision)  # the ranking graph in the same precision, so rank agrees with predict
            os.replace(converted, rank_path)
        optimization = None
        if optimize:
            for path in (model_path, rank_path):
                optimize_offline(path)
            optimization = OPTIMIZATION_LEVEL
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        parity = compare_with_pytorch(din, session, parity_grid(max_len), TOLERANCE[precision])
        rank_session = ort.InferenceSession(str(rank_path), providers=["CPUExecutionProvider"])
        ranking = ranking_section(rank_path, compare_ranking_with_pytorch(din, rank_session, parity_grid(max_len), TOLERANCE[precision]))
        torch.save(checkpoint, staging / CHECKPOINT_FILE)
        base = manifest or {"format_version": FORMAT_VERSION, "spec": spec.to_dict(), "encoding": encoding,
                            "model": checkpoint["model_config"], "training": {}, "data": {}, "metrics": {}}
        new_manifest = {**base, "versions": library_versions(), "checkpoint": CHECKPOINT_FILE,
                        "onnx": {"file": MODEL_FILE, "graph": graph, "precision": precision, "optimization": optimization,
                                 "sha256": sha256_of(model_path), **describe_io(onnx.load(str(model_path))), "parity": parity,
                                 "precisions": precisions},
                        "ranking": {**ranking, "precision": precision, "optimization": optimization},
                        "exported_from": str(source)}
        new_manifest.pop("plot", None)
        if manifest and (source / "training.png").is_file():
            shutil.copy2(source / "training.png", staging / "training.png")
            new_manifest["plot"] = "training.png"
        write_json(staging / MANIFEST_FILE, new_manifest)
    return new_manifest
