"""The samples a run learns from: where they come from, the train / valid / test splits, and each split encoded
by the runtime's own encoder into contiguous arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from din_runtime.encoding import FeatureEncoder
from din_runtime.schema import FeatureSchema

from ..config import HELD_OUT_FRACTION
from ..phases import Phases
from .fitting import fit_schema, with_attribute_tables
from .layout import StoreReads, Windows, memory_mapped
from .prepared import SPLITS
from .samples import labels, raw_columns, read_table
from .source import DataSource
from .spec import Spec
from .synthetic import generate


def load_tables(source: DataSource, spec: Spec, seed: int) -> dict[str, pa.Table]:
    """Train, valid and test tables; those not given are held out of the train table at random (seeded)."""
    train_table = read_table(source.data, spec, keep_references=True) if source.data else generate(source.synthetic_samples, seed=seed)
    given = {"valid": source.valid, "test": source.test}
    tables = {name: read_table(path, spec, keep_references=True) for name, path in given.items() if path}
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
    """Each row's user as a group number (for GAUC). Numbers and text group as they are; only an object array
    (text with gaps, mixed types) goes through str, which would cost 4 bytes per character on millions of rows."""
    if spec.user is None:
        return None
    users = np.asarray(columns[spec.user])
    return np.unique(users.astype(str) if users.dtype == object else users, return_inverse=True)[1]


@dataclass
class EncodedSplit:
    """One split as contiguous arrays: the ONNX feed, labels, and group IDs (users) for GAUC. From the reference
    layout, the histories are `windows` over the encoded sequence store instead, gathered batch by batch, so the
    split never holds every sample's copy of its history."""

    feed: dict[str, np.ndarray]
    labels: np.ndarray
    groups: np.ndarray | None
    sequences: list[str]  # the per-behaviour inputs, an ID sequence first (the times, where the model has them, after)
    windows: dict[str, Windows] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # the input order, where feed alone does not hold every input
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        first = self.sequences[0]
        self.lengths = self.windows[first].lengths if first in self.windows else (self.feed[first] != 0).sum(axis=1)
        self.names = self.names or list(self.feed)
        # the inline arrays' width: the split's longest kept history, per sequence (at least 1)
        self._widths = {name: max(1, int(w.lengths.max(initial=0))) for name, w in self.windows.items()}

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The inputs for these rows in input order, histories cut to the batch's longest (they are left-aligned)."""
        width = max(1, int(self.lengths[rows].max()))
        out = {}
        for name in self.names:
            if name in self.windows:
                out[name] = self.windows[name].padded(rows, min(width, self._widths[name]))
            else:
                out[name] = self.feed[name][rows][:, :width] if name in self.sequences else self.feed[name][rows]
        return out

    def indices(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Every index the split feeds an input, flat, with how often each counts (None: once each)."""
        if name in self.windows:
            return self.windows[name].values, self.windows[name].weights
        return self.feed[name].ravel(), None

@dataclass
class EncodedData:
    """The spec, each split's number of rows, the feature schema fitted on the training split only, and every split
    encoded (the tables they came from are not kept: at tens of millions of samples they are gigabytes)."""

    spec: Spec
    rows: dict[str, int]
    schema: FeatureSchema
    splits: dict[str, EncodedSplit]
    vocabularies: dict[str, dict[str, int]] = field(default_factory=dict)  # per categorical: keys, gained, over_cap


def encode_split(table: pa.Table, spec: Spec, encoder: FeatureEncoder,
                 stores: list[tuple[str, np.ndarray, np.ndarray]] | None = None, columns: dict[str, Any] | None = None) -> EncodedSplit:
    """A table as contiguous arrays, encoded by the runtime's own encoder (from its raw `columns` where already
    read). A reference-layout store is encoded once, not per sample, into memory-mapped pages; `stores` keeps it
    for the other splits over the same store."""
    columns = raw_columns(table, spec) if columns is None else columns
    schema = encoder.schema
    windows = {name: column for name, column in columns.items() if isinstance(column, Windows)}
    feed = encoder.encode(columns, only=[name for name in schema.names if name not in windows])
    stores = [] if stores is None else stores
    encoded = {}
    for name, w in windows.items():  # splits over one store get one raw array (store_values): encode it once
        found = next((done for feature, raw, done in stores if feature == name and raw is w.values), None)
        if found is None:
            found = memory_mapped(encoder.vocabularies[schema[name].shares].encode(name, w.values))
            stores.append((name, w.values, found))
        encoded[name] = w.with_values(found)
    per_behaviour = schema.sequence_names + [t.name for t in schema.times]  # an ID sequence first: the lengths come from it
    return EncodedSplit(feed, labels(table, spec), groups_of(columns, spec), per_behaviour, encoded, schema.names)


def load_data(source: DataSource, spec: Spec, seed: int, phases: Phases | None = None,
              parent: FeatureSchema | None = None) -> EncodedData:
    """Read the splits, fit the schema on the training split (extending the `parent` schema of a warm start) and
    encode all three with the runtime's encoder. With all three given as files, valid and test are read only once
    train is encoded and its table let go, and each table is dropped once encoded, so memory holds one split's
    table at a time."""
    phases = phases or Phases()
    files = {"valid": source.valid, "test": source.test}
    with phases.timed("read"):
        if source.data is not None and all(files.values()):
            tables = {"train": read_table(source.data, spec, keep_references=True)}
        else:
            tables = load_tables(source, spec, seed)
    reads: StoreReads = {}  # a prepared folder's sequence store, read once for its three splits
    with phases.timed("fit encoding"):
        columns: dict[str, Any] | None = raw_columns(tables["train"], spec, reads)  # read once: fitted on, then encoded
        fitted = fit_schema(columns, spec, parent)
    schema = fitted.schema
    encoder, splits = FeatureEncoder(schema), {}
    stores: list[tuple[str, np.ndarray, np.ndarray]] = []  # (feature, raw store array, its encoding), shared by the splits
    for name in SPLITS:
        if name not in tables:
            with phases.timed("read"):
                tables[name] = read_table(files[name], spec, keep_references=True)
        with phases.timed("encode"):
            table = tables.pop(name)
            splits[name] = encode_split(table, spec, encoder, stores, columns if name == "train" else raw_columns(table, spec, reads))
            columns = table = None  # the split's table and raw columns let go before the next is read
    with phases.timed("fit encoding"):  # item-to-attribute tables, from the encoded training split
        schema = with_attribute_tables(schema, splits["train"].indices, parent)
    return EncodedData(spec, {name: len(split) for name, split in splits.items()}, schema, splits, fitted.vocabularies)
