"""train-and-export as one function: read, split, fit the encoding, train, evaluate, export, verify, bundle."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pyarrow as pa
import torch

from din_runtime.encoding import FeatureEncoder
from din_runtime.manifest import FORMAT_VERSION, MANIFEST_FILE, MODEL_FILE, RANKING_FILE, sha256_of

from . import __version__
from .bundle import CHECKPOINT_FILE, staged_bundle, write_json
from .distributed import World, join, leave
from .export import describe_io, export_onnx, verify_parity
from .metrics import evaluate
from .model import DIN, ModelConfig, ModelInputs
from .plots import PLOT_FILE, plot_history
from .preprocess import fit_encoding
from .ranking import export_ranking, ranking_section, verify_ranking_parity
from .spec import Spec, load_spec
from .synthetic import SPEC_PATH, generate
from .tables import labels, raw_columns, read_table
from .train import EncodedSplit, TrainConfig, predict, train

SPLITS = ("train", "valid", "test")
HELD_OUT_FRACTION = 0.1


@dataclass
class DataSource:
    """Where the samples come from: files, or the built-in generator when no --data is given."""

    data: Path | None = None
    valid: Path | None = None
    test: Path | None = None
    synthetic_samples: int = 100_000

    @property
    def name(self) -> str:
        return self.data.stem if self.data else "synthetic"

    def to_dict(self) -> dict[str, Any]:
        """Recorded in the manifest so that later steps (variant checks in `export`) can reload the same splits."""
        return {"paths": {k: str(Path(v).resolve()) if v else None for k, v in (("data", self.data), ("valid", self.valid), ("test", self.test))},
                "synthetic_samples": None if self.data else self.synthetic_samples}

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> DataSource:
        paths = data.get("paths") or {}
        return cls(*(Path(paths[k]) if paths.get(k) else None for k in ("data", "valid", "test")),
                   synthetic_samples=data.get("synthetic_samples") or 100_000)


def load_tables(source: DataSource, spec: Spec, seed: int) -> dict[str, pa.Table]:
    """Train, valid and test tables; those not given are held out of the train table at random (seeded)."""
    if source.data is None and (source.valid or source.test):
        raise ValueError("--valid and --test need --data")
    train_table = read_table(source.data, spec) if source.data else generate(source.synthetic_samples, seed=seed)
    given = {"valid": source.valid, "test": source.test}
    tables = {name: read_table(path, spec) for name, path in given.items() if path}
    missing = [name for name in given if name not in tables]
    if missing:
        order = np.random.default_rng(seed).permutation(train_table.num_rows)
        held = int(round(HELD_OUT_FRACTION * train_table.num_rows))
        if train_table.num_rows - held * len(missing) < 2 or held < 1:
            raise ValueError(f"{train_table.num_rows} rows are too few to hold out {missing}; pass --valid/--test")
        for i, name in enumerate(missing):
            tables[name] = train_table.take(order[i * held:(i + 1) * held])
        train_table = train_table.take(np.sort(order[len(missing) * held:]))
    tables["train"] = train_table
    return tables


def groups_of(columns: dict[str, Any], spec: Spec) -> np.ndarray | None:
    if spec.user is None:
        return None
    return np.unique(np.asarray(columns[spec.user]).astype(str), return_inverse=True)[1]


def library_versions() -> dict[str, str]:
    return {"din_export": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "pyarrow": pa.__version__,
            "python": platform.python_version()}


def checkpoint_path(out: Path) -> Path:
    """Where training keeps its per-epoch checkpoint: beside the bundle, removed once the bundle is complete."""
    return out.parent / f".{out.name}.checkpoint.pt"


def _run_key(spec: Spec, tables: dict[str, pa.Table], model_config: ModelConfig, train_config: TrainConfig) -> str:
    """What a checkpoint must match to be resumed: same spec, data sizes and settings (epochs aside)."""
    settings = {k: v for k, v in train_config.to_dict().items() if k not in ("epochs", "progress", "device")}
    return json.dumps([spec.to_dict(), {n: t.num_rows for n, t in tables.items()}, model_config.to_dict(), settings], sort_keys=True)


def train_and_export(source: DataSource, out: Path, spec_path: Path | None = None,
                     model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
                     resume: bool = False, graph: str = "folded") -> dict[str, Any] | None:
    """Run the whole job and return the manifest written to `out` (None on the other ranks of a torchrun job)."""
    model_config = model_config or ModelConfig()
    train_config = train_config or TrainConfig()
    world = join()
    try:
        return _train_and_export(source, out, spec_path, model_config, train_config, resume, world, graph)
    finally:
        leave(world)


@dataclass
class PreparedData:
    """The spec, the three tables and their encoding, fitted on the training split only."""

    spec: Spec
    tables: dict[str, pa.Table]
    encoding: list[dict[str, Any]]
    splits: dict[str, EncodedSplit]


def encode_split(table: pa.Table, spec: Spec, encoder: FeatureEncoder) -> EncodedSplit:
    """A table as contiguous arrays, encoded by the runtime's own encoder."""
    columns = raw_columns(table, spec)
    return EncodedSplit(encoder.encode(columns), labels(table, spec), groups_of(columns, spec), [f.name for f in spec.of_kind("sequence")])


@dataclass
class Phases:
    """Wall seconds per phase of a run, so the fixed cost around the epochs is measured where it is paid."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)


def load_data(source: DataSource, spec: Spec, seed: int, phases: Phases | None = None) -> PreparedData:
    phases = phases or Phases()
    with phases.timed("read"):
        tables = load_tables(source, spec, seed)
    with phases.timed("fit encoding"):
        encoding = fit_encoding(raw_columns(tables["train"], spec), spec)
    with phases.timed("encode"):
        encoder = FeatureEncoder(encoding)
        splits = {name: encode_split(tables[name], spec, encoder) for name in SPLITS}
    return PreparedData(spec, tables, encoding, splits)


def _train_and_export(source: DataSource, out: Path, spec_path: Path | None, model_config: ModelConfig,
                      train_config: TrainConfig, resume: bool, world: World, graph: str) -> dict[str, Any] | None:
    spec = load_spec(spec_path or SPEC_PATH)
    phases = Phases()
    data = load_data(source, spec, train_config.seed, phases)
    tables, encoding, splits = data.tables, data.encoding, data.splits

    torch.manual_seed(train_config.seed)
    din = DIN(ModelInputs.from_encoding(encoding), model_config)
    checkpoint = checkpoint_path(out)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with phases.timed("train"):
        result = train(din, splits["train"], splits["valid"], train_config, world, checkpoint, resume,
                       _run_key(spec, tables, model_config, train_config))
    if not world.is_main:
        return None
    with phases.timed("evaluate"):
        metrics: dict[str, Any] = {name: evaluate(splits[name].labels, predict(din, splits[name]), splits[name].groups)
                                   for name in ("valid", "test")}
    metrics.update(best_epoch=result.best_epoch, history=result.history)

    max_len = max(f.max_len for f in spec.of_kind("sequence"))
    with staged_bundle(out) as staging:
        model_path = staging / MODEL_FILE
        with phases.timed("export"):
            export_onnx(din, model_path, graph)
        with phases.timed("parity"):
            parity = verify_parity(din, model_path, max_len)
        rank_path = staging / RANKING_FILE
        with phases.timed("export ranking"):
            export_ranking(din, rank_path)
        with phases.timed("ranking parity"):
            ranking = ranking_section(rank_path, verify_ranking_parity(din, rank_path, max_len))
        with phases.timed("bundle"):
            torch.save({"model_config": model_config.to_dict(), "state_dict": din.state_dict(), "encoding": encoding,
                        "spec": spec.to_dict()}, staging / CHECKPOINT_FILE)
            plot_history(result.history, result.best_epoch, staging / PLOT_FILE, f"{source.name} · {model_config.variant}")
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "spec": spec.to_dict(),
            "encoding": encoding,
            "model": model_config.to_dict(),
            "training": {**train_config.to_dict(), "processes": world.size, "device_used": result.device,
                         "samples_per_second": round(result.samples_per_second, 1)},
            "data": {"source": source.name, **{f"{name}_rows": tables[name].num_rows for name in SPLITS},
                     **source.to_dict(), "seed": train_config.seed},
            "onnx": {"file": MODEL_FILE, "graph": graph, "sha256": sha256_of(model_path), **describe_io(onnx.load(str(model_path))),
                     "parity": parity},
            "ranking": ranking,
            "metrics": metrics,
            "checkpoint": CHECKPOINT_FILE,
            "plot": PLOT_FILE,
            "versions": library_versions(),
            "command": " ".join(sys.argv),
            "seconds": phases.seconds,  # bundle writing itself (a few ms) is not in it
        }
        write_json(staging / MANIFEST_FILE, manifest)
    checkpoint.unlink(missing_ok=True)
    return manifest
