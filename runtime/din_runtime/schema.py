"""The fitted feature schema: the one description of a model's inputs, from fitting to serving.

Fitting on the training split writes it once (the manifest's `encoding` section holds it); the encoder, the
model, the exporters and the predictor all read it from here. The order of `features` is the ONNX input order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

FIRST_KEY_INDEX = 2  # embedding rows: 0 padding, 1 out-of-vocabulary, then one per key
KEY_TYPES = ("int", "str")


@dataclass(frozen=True)
class CategoricalFeature:
    """IDs looked up in a vocabulary; `missing_token`: missing values seen in training get a row.

    `keys` are in row order: the first key has row FIRST_KEY_INDEX, the next the row after, skipping the missing
    token's row (`missing_index`; None: right after the keys). A fresh fit sorts its keys and puts the missing
    token last; a warm start appends the keys new since its parent after the parent's, so every row keeps its key.

    An item attribute (`attribute_of` names the item's feature, e.g. a category of an item ID) carries the
    item-to-attribute table fitted on the training split: `attribute_table[i]` is this feature's index for the
    item at index i (padding stays padding; items never seen, and the out-of-vocabulary item, map to
    out-of-vocabulary). A client may then leave the attribute out, for the candidates and for the histories."""

    name: str
    key_type: str
    keys: Sequence[Any]
    missing_token: bool = False
    attribute_of: str | None = None
    attribute_table: Sequence[int] | None = None
    missing_index: int | None = None
    kind: ClassVar[str] = "categorical"

    def __post_init__(self) -> None:
        if self.key_type not in KEY_TYPES:
            raise ValueError(f"feature '{self.name}': key_type must be one of {KEY_TYPES}, not {self.key_type!r}")
        if self.missing_index is not None and not (self.missing_token and FIRST_KEY_INDEX <= self.missing_index <= len(self.keys) + FIRST_KEY_INDEX):
            raise ValueError(f"feature '{self.name}': missing_index {self.missing_index} is not a row of its table")

    @property
    def missing_row(self) -> int | None:
        """The missing token's embedding row (None without one)."""
        if not self.missing_token:
            return None
        return len(self.keys) + FIRST_KEY_INDEX if self.missing_index is None else self.missing_index

    def key_rows(self) -> np.ndarray:
        """Each key's embedding row, in key order."""
        rows = np.arange(FIRST_KEY_INDEX, FIRST_KEY_INDEX + len(self.keys), dtype=np.int64)
        missing = self.missing_row
        if missing is not None:
            rows[rows >= missing] += 1
        return rows

    @property
    def size(self) -> int:
        """Rows of the embedding table: padding, out-of-vocabulary, one per key, and the missing token if any."""
        return len(self.keys) + FIRST_KEY_INDEX + int(self.missing_token)

    def to_manifest(self) -> dict[str, Any]:
        entry = {"name": self.name, "kind": self.kind, "key_type": self.key_type, "keys": list(self.keys),
                 "missing_token": self.missing_token, "missing_index": self.missing_row}
        if self.attribute_of is not None:
            entry.update(attribute_of=self.attribute_of, attribute_table=None if self.attribute_table is None else list(self.attribute_table))
        return entry


@dataclass(frozen=True)
class NumericFeature:
    """A float: missing values become `fill`, then (value - shift) / scale."""

    name: str
    fill: float
    shift: float
    scale: float
    kind: ClassVar[str] = "numeric"

    def to_manifest(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "fill": self.fill, "shift": self.shift, "scale": self.scale}


@dataclass(frozen=True)
class SequenceFeature:
    """A behaviour history: IDs in the vocabulary of the categorical feature it `shares`, the last `max_len` kept."""

    name: str
    shares: str
    max_len: int
    kind: ClassVar[str] = "sequence"

    def to_manifest(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shares": self.shares, "max_len": self.max_len}


SAMPLE_TIME = "event_time"  # the column (request field) that holds a row's own time, by default


@dataclass(frozen=True)
class TimesFeature:
    """When each behaviour happened, aligned with the behaviour sequences (the i-th time is the i-th behaviour's).
    The model sees each behaviour's age at the row's own time (the `at` column): row time minus behaviour time, in
    the log's units, which its recency buckets on a log2 scale. Its input is those ages in whole units, int64
    (batch, seq_len)."""

    name: str
    at: str = SAMPLE_TIME
    kind: ClassVar[str] = "times"

    def to_manifest(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "at": self.at}


Feature = CategoricalFeature | NumericFeature | SequenceFeature | TimesFeature
KINDS = {cls.kind: cls for cls in (CategoricalFeature, NumericFeature, SequenceFeature, TimesFeature)}


@dataclass(frozen=True)
class FeatureSchema:
    """The features in input order. Every sequence shares a categorical feature's vocabulary; those shared
    categoricals describe the candidate item (attention's query), the sequences its behaviours (the keys)."""

    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"feature names repeat: {names}")
        categorical = {f.name: f for f in self.categoricals}
        for sequence in self.sequences:
            if sequence.shares not in categorical:
                raise ValueError(f"feature '{sequence.name}' shares '{sequence.shares}', which is not a categorical feature")
        if len(self.times) > 1:
            raise ValueError(f"one times feature gives every behaviour its time; found {[t.name for t in self.times]}")
        if self.times and self.times[0].at in names:
            raise ValueError(f"times feature '{self.times[0].name}': its row time '{self.times[0].at}' may not be a feature")
        for attribute in (f for f in self.categoricals if f.attribute_table is not None):
            item = categorical.get(attribute.attribute_of or "")
            if item is None or len(attribute.attribute_table) != item.size:
                raise ValueError(f"feature '{attribute.name}': its attribute table must have one entry per row of "
                                 f"'{attribute.attribute_of}'s embedding table")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __getitem__(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def categoricals(self) -> list[CategoricalFeature]:
        return [f for f in self.features if isinstance(f, CategoricalFeature)]

    @property
    def numerics(self) -> list[NumericFeature]:
        return [f for f in self.features if isinstance(f, NumericFeature)]

    @property
    def sequences(self) -> list[SequenceFeature]:
        return [f for f in self.features if isinstance(f, SequenceFeature)]

    @property
    def sequence_names(self) -> list[str]:
        return [f.name for f in self.sequences]

    @property
    def times(self) -> list[TimesFeature]:
        """The behaviours' times (none, or one feature)."""
        return [f for f in self.features if isinstance(f, TimesFeature)]

    @property
    def history_names(self) -> list[str]:
        """Every input with one entry per behaviour (batch, seq_len): the sequences and the times, in input order.
        A ranking request sends these once for the user; every other input is per candidate or repeated."""
        return [f.name for f in self.features if isinstance(f, (SequenceFeature, TimesFeature))]

    @property
    def shared(self) -> list[str]:
        """The categoricals the sequences share, one per sequence, in sequence order (the candidate's features)."""
        return [s.shares for s in self.sequences]

    @property
    def max_len(self) -> int:
        return max(s.max_len for s in self.sequences)

    def derivations(self, include_untabled: bool = False) -> dict[str, tuple[str, str]]:
        """Inputs a client may leave out: input -> (the input it is looked up from, the attribute feature whose
        table maps it). An item attribute comes from the item's ID; a history of the attribute from the history of
        items in the same position (the k-th sequence sharing the attribute pairs with the k-th sharing the item).
        include_untabled: also attributes whose table is not fitted yet (fitting uses it to pair the columns)."""
        derived: dict[str, tuple[str, str]] = {}
        for attribute in (f for f in self.categoricals if f.attribute_of is not None and (include_untabled or f.attribute_table is not None)):
            derived[attribute.name] = (attribute.attribute_of, attribute.name)
            item_histories = [s.name for s in self.sequences if s.shares == attribute.attribute_of]
            attribute_histories = [s.name for s in self.sequences if s.shares == attribute.name]
            for item_history, attribute_history in zip(item_histories, attribute_histories, strict=False):
                derived[attribute_history] = (item_history, attribute.name)
        return derived

    def columns_of(self, table: str) -> list[str]:
        """The inputs whose IDs index the categorical `table`: the feature itself and every sequence sharing it."""
        return [table] + [s.name for s in self.sequences if s.shares == table]

    def to_manifest(self) -> list[dict[str, Any]]:
        return [f.to_manifest() for f in self.features]

    @classmethod
    def from_manifest(cls, encoding: Sequence[Mapping[str, Any]]) -> FeatureSchema:
        """Read the manifest's `encoding` section (format 1 lacks `missing_index`: its missing token follows the keys)."""
        features: list[Feature] = []
        for entry in encoding:
            name, kind = entry["name"], entry.get("kind")
            if kind == "categorical":
                missing_token = bool(entry.get("missing_token", False))
                features.append(CategoricalFeature(name, entry["key_type"], entry["keys"], missing_token, entry.get("attribute_of"),
                                                   entry.get("attribute_table"), entry.get("missing_index") if missing_token else None))
            elif kind == "numeric":
                features.append(NumericFeature(name, float(entry["fill"]), float(entry["shift"]), float(entry["scale"])))
            elif kind == "sequence":
                features.append(SequenceFeature(name, entry["shares"], int(entry["max_len"])))
            elif kind == "times":
                features.append(TimesFeature(name, entry.get("at", SAMPLE_TIME)))
            else:
                raise ValueError(f"feature '{name}': unknown kind {kind!r}")
        return cls(tuple(features))
