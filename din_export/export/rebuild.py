"""`din-export export`: a new bundle from a bundle or a weights-only checkpoint, without retraining.

Choices: the attention form (folded or plain), the precision (fp32, int8, fp16) and offline graph optimisation. A
precision other than fp32 is scored on the validation split beside the float32 graph and refused when its AUC
drops by more than the threshold, unless forced.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

import onnxruntime as ort

from din_runtime.encoding import FeatureEncoder
from din_runtime.manifest import PLOT_FILE, RELIABILITY_FILE
from din_runtime.providers import cpu_session

from ..bundle import LoadedBundle, load_bundle, save_checkpoint, write_manifest
from ..config import DEFAULT_MAX_AUC_DROP, FORMS, INT8_PRODUCTS
from ..data.samples import read_table
from ..data.source import DataSource
from ..data.splits import EncodedSplit, encode_split, load_tables
from ..files import staged_bundle
from .errors import ExportError
from .graph_files import export_verified
from .graphs import BATCH, GraphContract
from .precision import PrecisionRejected, calibration_feeds, convert, session_metrics

OPTIMIZATION_LEVEL = "basic"  # ONNX Runtime's basic optimisations are hardware-independent, so the saved file stays portable


def validation_split(bundle: LoadedBundle, valid: Path | None) -> EncodedSplit:
    spec, data = bundle.spec, (bundle.manifest or {}).get("data") or {}
    if valid is not None:
        table = read_table(valid, spec)
    elif data.get("paths") is not None:
        source = DataSource.from_manifest(data)
        missing = [str(p) for p in (source.data, source.valid) if p is not None and not p.is_file()]
        if missing:
            raise ExportError(f"the training data {missing} is gone; pass --valid TABLE to score the precision")
        table = load_tables(source, spec, data.get("seed", 0))["valid"]
    else:
        raise ExportError("scoring a precision needs validation data: pass --valid TABLE")
    return encode_split(table, spec, FeatureEncoder(bundle.schema))


def optimize_offline(path: Path) -> None:
    """Save ONNX Runtime's basic-level optimised graph in place of the file."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    optimized = path.with_suffix(".optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    cpu_session(path, options)
    os.replace(optimized, path)


def export_bundle(source: Path, out: Path, attention_form: str = FORMS[0], precision: str = "fp32", valid: Path | None = None,
                  max_auc_drop: float = DEFAULT_MAX_AUC_DROP, force: bool = False, optimize: bool = False,
                  int8_products: str = INT8_PRODUCTS[0]) -> dict[str, Any]:
    """Write a verified bundle at `out` and return its manifest. int8_products: with precision int8, which matrix
    products compute in int8 (config.INT8_PRODUCTS)."""
    source, out = Path(source), Path(out)
    bundle = load_bundle(source)
    precisions: dict[str, Any] = {}
    validation = functools.cache(lambda: validation_split(bundle, valid))

    def finish(path: Path, contract: GraphContract) -> None:
        """Convert to the precision (the batch graph scored first, so a lossy one is refused), then optimise."""
        if precision != "fp32":
            converted = path.with_name(f"{precision}.onnx")
            calibrated = precision == "int8" and int8_products != INT8_PRODUCTS[0]  # the tables alone need no feeds
            calibration = calibration_feeds(validation(), contract, bundle.schema) if calibrated else None
            precisions.setdefault("converted", {})[contract.section] = convert(path, converted, precision, calibration, int8_products)
            if contract is BATCH:
                split = validation()
                precisions.update({"fp32": session_metrics(path, split), precision: session_metrics(converted, split)})
                drop = precisions["fp32"]["auc"] - precisions[precision]["auc"]
                precisions.update(auc_drop=drop, max_auc_drop=max_auc_drop)
                if drop > max_auc_drop and not force:
                    raise PrecisionRejected(f"{precision} loses {drop:.4f} validation AUC (float32 {precisions['fp32']['auc']:.4f}, "
                                            f"{precision} {precisions[precision]['auc']:.4f}) > {max_auc_drop}; --force to keep it")
            os.replace(converted, path)  # the ranking graph in the same precision, so rank agrees with predict
        if optimize:
            optimize_offline(path)

    with staged_bundle(out) as staging:
        graphs = export_verified(bundle.din, staging, attention_form, precision=precision, optimization=OPTIMIZATION_LEVEL if optimize else None,
                                 finish=finish)
        graphs["onnx"]["precisions"] = precisions
        save_checkpoint(staging, bundle.din)
        earlier = bundle.manifest or {}
        plots, folder = {}, source if source.is_dir() else source.parent  # a bundle, or the folder of its weights.pt
        for key, file in (("plot", PLOT_FILE), ("reliability_plot", RELIABILITY_FILE)):
            plots[key] = file if earlier.get(key) and (folder / file).is_file() else None
            if plots[key]:
                shutil.copy2(folder / file, staging / file)
        manifest = write_manifest(staging, bundle.spec, bundle.din, graphs, earlier.get("metrics", {}), training=earlier.get("training", {}),
                                  data=earlier.get("data", {}), plot=plots["plot"], reliability_plot=plots["reliability_plot"],
                                  exported_from=str(source),
                                  **({"lineage": earlier["lineage"]} if earlier.get("lineage") else {}))
    return manifest
