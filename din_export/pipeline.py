"""train-and-export as one function: read, split, fit the schema, train, evaluate, export, verify, bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from din_runtime.manifest import PLOT_FILE, RELIABILITY_FILE

from .bundle import save_checkpoint, write_manifest
from .config import FORMS, WARM_START_TRAINING, ModelConfig, TrainConfig
from .data.prepared import SPLITS
from .data.source import DataSource, default_spec
from .data.spec import Spec
from .data.splits import load_data
from .export.graph_files import export_verified
from .files import staged_bundle
from .model.calibration import Calibration, CalibrationFit, fit_calibration
from .model.family import build_model
from .phases import Phases
from .training.distributed import World, join, leave
from .training.metrics import evaluate
from .training.plots import plot_history, plot_reliability
from .training.train import predict_logits, train
from .warm_start import Parent, check_architecture, check_spec, copy_weights, lineage, load_parent


def checkpoint_path(out: Path) -> Path:
    """Where training keeps its per-epoch checkpoint: beside the bundle, removed once the bundle is complete."""
    return out.parent / f".{out.name}.checkpoint.pt"


def _run_key(spec: Spec, rows: dict[str, int], model_config: ModelConfig, train_config: TrainConfig, parent: Parent | None) -> str:
    """What a checkpoint must match to be resumed: same spec, data sizes, settings (epochs aside) and parent."""
    settings = {k: v for k, v in train_config.to_dict().items() if k not in ("epochs", "progress", "device")}
    parent_sha = parent.manifest["onnx"].get("sha256") if parent else None
    return json.dumps([spec.to_dict(), rows, model_config.to_dict(), settings, parent_sha], sort_keys=True)


def train_and_export(source: DataSource, out: Path, spec: Spec | None = None,
                     model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
                     resume: bool = False, attention_form: str = FORMS[0], warm_start: Path | Parent | None = None) -> dict[str, Any] | None:
    """Run the whole job and return the manifest written to `out` (None on the other ranks of a torchrun job).
    spec: the feature spec (default: the built-in data's; with `warm_start`, the parent bundle's).
    attention_form: the exported graphs' attention unit, folded (for inference) or plain.
    warm_start: a bundle to continue (its vocabularies extended, its weights copied, its architecture kept)."""
    parent = warm_start if isinstance(warm_start, Parent) or warm_start is None else load_parent(Path(warm_start))
    spec = spec or default_spec(parent.bundle.spec if parent else None)
    train_config = train_config or (TrainConfig(**WARM_START_TRAINING) if parent else TrainConfig())
    if parent is not None:
        check_spec(parent.bundle.spec, spec)
        if model_config is not None and model_config != parent.model_config:
            check_architecture(parent.model_config, {k: v for k, v in model_config.to_dict().items()
                                                     if v != parent.model_config.to_dict()[k]})
        model_config = parent.model_config
    elif train_config.epochs < 1:
        raise ValueError("epochs 0 trains nothing; only a --warm-start continuation may (it re-exports the parent)")
    world = join()
    try:
        return _train_and_export(source, Path(out), spec, model_config or ModelConfig(), train_config, resume, world, attention_form, parent)
    finally:
        leave(world)


def _train_and_export(source: DataSource, out: Path, spec: Spec, model_config: ModelConfig, train_config: TrainConfig,
                      resume: bool, world: World, attention_form: str, parent: Parent | None) -> dict[str, Any] | None:
    phases = Phases()
    data = load_data(source, spec, train_config.seed, phases, parent.schema if parent else None)
    splits = data.splits

    torch.manual_seed(train_config.seed)
    din = build_model(data.schema, model_config)
    if parent is not None:
        copy_weights(parent.bundle.din, din)
    din.calibration = Calibration(CalibrationFit(keep_negatives=spec.keep_negatives))  # epochs are scored corrected
    checkpoint = checkpoint_path(out)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with phases.timed("train"):
        result = train(din, splits["train"], splits["valid"], train_config, world, checkpoint, resume,
                       _run_key(spec, data.rows, model_config, train_config, parent), start_counts=parent is not None)
    if not world.is_main:
        return None
    with phases.timed("calibrate"):
        logits = {name: predict_logits(din, splits[name]) for name in ("valid", "test")}
        fit = fit_calibration(train_config.calibration, logits["valid"], splits["valid"].labels, spec.keep_negatives)
        din.calibration = Calibration(fit)
    with phases.timed("evaluate"):
        with torch.inference_mode():  # the served probabilities of the logits already computed, not a second pass
            probabilities = {name: din.calibration(torch.from_numpy(values)).numpy() for name, values in logits.items()}
        metrics: dict[str, Any] = {name: evaluate(splits[name].labels, probabilities[name], splits[name].groups)
                                   for name in ("valid", "test")}
    metrics.update(best_epoch=result.best_epoch, history=result.history)

    with staged_bundle(out) as staging:
        graphs = export_verified(din, staging, attention_form, phases)
        with phases.timed("bundle"):
            save_checkpoint(staging, din)
            plot_history(result.history, result.best_epoch, staging / PLOT_FILE, f"{source.name} · {model_config.variant}")
            plot_reliability(splits["test"].labels, probabilities["test"], staging / RELIABILITY_FILE,
                             f"{source.name} · {model_config.variant} · test · calibration {fit.method}")
        manifest = write_manifest(
            staging, spec, din, graphs, metrics,
            training={**train_config.to_dict(), "processes": world.size, "device_used": result.device,
                      "samples_per_second": None if math.isnan(speed := result.samples_per_second) else round(speed, 1)},
            data={"source": source.name, **{f"{name}_rows": data.rows[name] for name in SPLITS},
                  **source.to_dict(), "seed": train_config.seed},
            plot=PLOT_FILE, reliability_plot=RELIABILITY_FILE,
            lineage=lineage(parent, data.vocabularies) if parent else {"generation": 0, "vocabularies": data.vocabularies},
            seconds=phases.seconds)  # bundle writing itself (a few ms) is not in it
    checkpoint.unlink(missing_ok=True)
    return manifest
