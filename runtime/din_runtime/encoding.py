"""Turn raw feature values into the integer and float arrays the ONNX graph takes.

This module is the single encoder of the project: training encodes its tables with it and the
predictor encodes requests with it, so serving can never drift from what the model was trained on.
Everything is vectorised over rows; Python-level work happens only on an error path. It is one module of about
400 lines on purpose: each feature kind's general (numpy) path and its per-value path for small requests sit side by
side, because they must give the same arrays (a property test holds them equal).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from .errors import InputError
from .schema import CategoricalFeature, FeatureSchema, NumericFeature, SequenceFeature, TimesFeature

PADDING_INDEX = 0
OOV_INDEX = 1
INT64_MAX = np.iinfo(np.int64).max
# Integer keys within a compact range get a direct index table instead of a binary search: an array of at most
# max(2**20, 8 * keys) entries (8 MiB at 2**20) makes a lookup one gather, several times faster than searchsorted.
NORMALIZED_LIMIT = 1e4  # normalised numeric values are clipped to +-this many scale units
DENSE_TABLE_MIN_SPAN = 1 << 20
DENSE_TABLE_FILL_FACTOR = 8
# Up to this many values in a Python list (one request's row, one history), a lookup per value in Python beats the
# fixed cost of numpy's calls; values of any other type than plain int (float, str) take the general path.
SMALL_INPUT = 64
FEW_VALUES = 8  # and up to this many, one Python lookup each (numpy's four calls cost more than eight lookups)
SMALL_HISTORY_ROWS = 4  # histories of up to this many rows, given as lists of plain IDs, take the per-value path too
SMALL_STR_VOCABULARY = 1 << 20  # the per-value path for text keys keeps a dict of the keys, up to this many
MAX_AGE = float(1 << 62)  # a behaviour's age is capped here (far past the model's last bucket), so it fits int64


@dataclass(frozen=True)
class Ragged:
    """Variable-length rows as one flat array plus row offsets (row i is values[offsets[i]:offsets[i+1]])."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return self.offsets[1:] - self.offsets[:-1]  # np.diff's own overhead is most of a small batch's cost

    def row_of(self, flat_index: int) -> int:
        return int(np.searchsorted(self.offsets, flat_index, side="right") - 1)


def _shown(value: Any) -> str:
    """repr of a value as the caller wrote it (numpy scalars unwrapped)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


_INTEGER_TEXT = re.compile(r"[-+]?\d+")


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and not value.strip())


def _missing_mask(values: np.ndarray) -> np.ndarray:
    """True where a value is absent: None, NaN, or an empty (or blank) string, as a CSV reader or a JSON client
    gives an empty cell."""
    if values.dtype == object:
        return np.fromiter(map(_absent, values), bool, len(values))
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "U":
        return np.char.strip(values) == ""  # np.char, not np.strings: the runtime supports numpy 1.24 too
    return np.zeros(len(values), dtype=bool)


def coerce_keys(feature: str, values: Any, key_type: str, row_of=lambda i: i) -> tuple[np.ndarray, np.ndarray]:
    """Convert raw values to a vocabulary's key type (int or str); returns (keys, missing mask). Unconvertible values
    raise InputError naming the feature and row (`row_of` maps a flat position to its row)."""
    try:
        array = np.asarray(values)
    except ValueError:  # ragged items (a list among IDs): keep each as it is, so the error names its row
        array = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):
            array[i] = value
    if array.ndim != 1:
        raise InputError(feature, f"expected one value per row, got an array of shape {array.shape}")
    missing = _missing_mask(array)
    if key_type == "str":
        if array.dtype == object:
            return np.asarray(["" if absent else str(v) for v, absent in zip(array, missing, strict=True)], dtype=np.str_), missing
        return array.astype(np.str_, copy=False), missing
    return _coerce_int(feature, array, missing, row_of)


def _coerce_int(feature: str, array: np.ndarray, missing: np.ndarray, row_of) -> tuple[np.ndarray, np.ndarray]:
    kind = array.dtype.kind
    if kind in "ib":
        return array.astype(np.int64, copy=False), missing
    if kind == "u":
        too_big = array > INT64_MAX
        return np.where(too_big, 0, array).astype(np.int64), missing | too_big
    if kind == "f":
        finite = np.isfinite(array)
        bad = ~missing & (~finite | (np.floor(array) != array))
        if bad.any():
            i = _first_true(bad)
            raise InputError(feature, f"ID {_shown(array[i])} is not an integer", row_of(i))
        out_of_range = finite & (np.abs(array) >= 2.0**63)
        return np.where(missing | out_of_range, 0, array).astype(np.int64), missing | out_of_range
    present = np.where(missing, 0, array.astype(object)) if missing.any() else array
    try:  # integer strings ("2222", as CSV and JSON clients send them) are IDs too
        return present.astype(np.int64), missing
    except (TypeError, ValueError, OverflowError):
        # Slow path, only for mixed or oversized values: integers beyond int64 are out of vocabulary, anything
        # that is not an integer is an error naming its row.
        beyond = np.zeros(len(present), dtype=bool)
        values = present.astype(object)
        for i, value in enumerate(values):
            if isinstance(value, str):  # only plain integer text: Python's int() would also take "1_000"
                if not _INTEGER_TEXT.fullmatch(value.strip()):
                    raise InputError(feature, f"ID {_shown(array[i])} is not an integer", row_of(i)) from None
                value = values[i] = int(value)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and abs(int(value)) > INT64_MAX:
                beyond[i] = True
                continue
            try:
                np.int64(int(value))
            except (TypeError, ValueError, OverflowError):
                raise InputError(feature, f"ID {_shown(array[i])} is not an integer", row_of(i)) from None
        return np.where(beyond, 0, values).astype(np.int64), missing | beyond


class Vocabulary:
    """The keys of one categorical feature and their embedding rows; row 0 is padding, 1 out-of-vocabulary, keys
    from 2 in the order given (a fresh fit sorts them; a warm start appends new keys after its parent's). When the
    training data had missing values (`missing_token`), they get a row of their own (`missing_index`, by default
    right after the keys); otherwise a missing value is out-of-vocabulary."""

    def __init__(self, keys: Sequence[Any], key_type: str, missing_token: bool = False, missing_index: int | None = None) -> None:
        if key_type not in ("int", "str"):
            raise ValueError(f"key_type must be 'int' or 'str', not {key_type!r}")
        self.key_type = key_type
        self.keys = np.asarray(keys, dtype=np.int64 if key_type == "int" else np.str_)
        rows = CategoricalFeature("", key_type, self.keys, missing_token, missing_index=missing_index)
        self.rows = rows.key_rows()  # each key's embedding row, in key order
        self.missing_index = OOV_INDEX if rows.missing_row is None else rows.missing_row
        order = np.argsort(self.keys, kind="stable")  # searchsorted needs the keys sorted; the rows follow them
        self._sorted_keys, self._sorted_rows = self.keys[order], self.rows[order]
        if len(self.keys) > 1 and not np.all(self._sorted_keys[1:] > self._sorted_keys[:-1]):
            raise ValueError("vocabulary keys must be distinct")
        self._text_index: dict[str, int] | None = None  # built on first use by lookup_plain
        # The dense table covers min-1 .. max+1 of the keys: a key minus that low end, clipped to the table's ends,
        # indexes it, and both ends hold the out-of-vocabulary index, so a lookup is a subtraction, a clip and a gather.
        self.dense: np.ndarray | None = None
        if key_type == "int" and len(self.keys):
            self.low = int(self._sorted_keys[0]) - 1
            high = int(self._sorted_keys[-1])
            span = high - self.low + 2
            fits_int64 = self.low >= -INT64_MAX - 1 and high < INT64_MAX
            if fits_int64 and span <= max(DENSE_TABLE_MIN_SPAN, DENSE_TABLE_FILL_FACTOR * len(self.keys)):
                self.dense = np.full(span, OOV_INDEX, dtype=np.int64)
                self.dense[self.keys - self.low] = self.rows

    @classmethod
    def of(cls, feature: CategoricalFeature) -> Vocabulary:
        return cls(feature.keys, feature.key_type, feature.missing_token, feature.missing_index)

    def lookup(self, keys: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Indices of keys in the embedding table; unknown keys go to the out-of-vocabulary index, missing ones to
        the missing token's."""
        indices = self._indices(keys)
        if missing.any():
            indices[missing] = self.missing_index
        return indices

    def _indices(self, keys: np.ndarray) -> np.ndarray:
        if len(self.keys) == 0:
            indices = np.full(len(keys), OOV_INDEX, dtype=np.int64)
        elif self.dense is not None:
            # int64 subtraction may wrap for keys near the int64 ends; a wrapped value lands outside the table's
            # span too, so the clip still sends it to an out-of-vocabulary end.
            offsets = np.maximum(keys - self.low, 0)  # the ufuncs, not np.clip, whose wrapper costs more than a small batch
            indices = self.dense.take(np.minimum(offsets, len(self.dense) - 1, out=offsets))
        else:
            position = np.searchsorted(self._sorted_keys, keys)
            clipped = np.minimum(position, len(self.keys) - 1)
            found = (position < len(self.keys)) & (self._sorted_keys[clipped] == keys)
            indices = np.where(found, self._sorted_rows[clipped], OOV_INDEX).astype(np.int64)
        return indices

    def encode(self, feature: str, values: Any, row_of=lambda i: i) -> np.ndarray:
        if type(values) is list and len(values) <= SMALL_INPUT:
            indices = self.lookup_plain(values)
            if indices is not None:
                return indices
        keys, missing = coerce_keys(feature, values, self.key_type, row_of)
        return self.lookup(keys, missing)

    def lookup_plain(self, values: list) -> np.ndarray | None:
        """lookup() without coerce()'s checks, for a list of plain ints (or non-blank strings), the common request;
        None where any value needs the general path (missing values, IDs as text or floats, anything to report)."""
        if self.key_type == "int":
            if set(map(type, values)) - {int}:
                return None
            if self.dense is not None and len(values) <= FEW_VALUES:  # a handful: the dense table, entry by entry
                low, last, entry = self.low, len(self.dense) - 1, self.dense.item
                return np.array([entry(min(max(v - low, 0), last)) for v in values], dtype=np.int64)
            try:
                return self._indices(np.array(values, dtype=np.int64))
            except OverflowError:  # beyond int64: the general path sends it to out-of-vocabulary
                return None
        if set(map(type, values)) - {str} or len(self.keys) > SMALL_STR_VOCABULARY or not all(map(str.strip, values)):
            return None
        if self._text_index is None:
            self._text_index = dict(zip(self.keys.tolist(), self.rows.tolist(), strict=True))
        index = self._text_index
        return np.array([index.get(v, OOV_INDEX) for v in values], dtype=np.int64)


@dataclass(frozen=True)
class NumericScaler:
    """Fill value for missing or non-finite entries, then (x - shift) / scale, all from the training split."""

    fill: float
    shift: float
    scale: float

    def encode(self, feature: str, values: Any) -> np.ndarray:
        if type(values) is list and len(values) <= SMALL_INPUT and all(type(v) is float or type(v) is int for v in values):
            try:  # the per-value path: the same float64 arithmetic as below, one value at a time
                return np.array([self._scale(float(v)) for v in values], dtype=np.float32)
            except OverflowError:  # an int too large for a float: the general path says so
                pass
        if isinstance(values, np.ndarray):
            array = values
        else:
            try:  # the fast path; None becomes NaN
                array = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):  # keep each value's own type, so the error names the right row
                array = np.asarray(values, dtype=object)
        if array.ndim != 1:
            raise InputError(feature, f"expected one number per row, got an array of shape {array.shape}")
        if array.dtype.kind not in "biuf":
            # Text as a CSV reader or JSON client sends it: numeric strings are numbers, empty cells are missing.
            missing = _missing_mask(array)
            try:
                array = np.where(missing, np.nan, array.astype(object)).astype(np.float64)
            except (TypeError, ValueError):
                for i, value in enumerate(array):
                    if not missing[i]:
                        try:
                            float(value)
                        except (TypeError, ValueError):
                            raise InputError(feature, f"value {_shown(value)} is not a number", i) from None
                raise
        array = array.astype(np.float64)
        array = np.where(np.isfinite(array), array, self.fill)
        # Extreme but finite inputs (1e300) would overflow float32, then turn into inf - inf = NaN inside the MLP.
        return np.clip((array - self.shift) / self.scale, -NORMALIZED_LIMIT, NORMALIZED_LIMIT).astype(np.float32)

    def _scale(self, value: float) -> float:
        value = value if math.isfinite(value) else self.fill
        return min(max((value - self.shift) / self.scale, -NORMALIZED_LIMIT), NORMALIZED_LIMIT)


def to_ragged(feature: str, rows: Any) -> Ragged:
    """Accept histories as a Ragged, a 2-D array (every row full length) or a list whose items are
    lists/arrays of IDs, space-separated strings (as in a CSV cell), or None (an empty history)."""
    if isinstance(rows, Ragged):
        return rows
    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        n, width = rows.shape
        return Ragged(rows.reshape(-1), np.arange(n + 1, dtype=np.int64) * width)
    if isinstance(rows, (str, bytes)) or not isinstance(rows, (Sequence, np.ndarray)):
        raise InputError(feature, f"expected a list of histories, got {type(rows).__name__}")
    row_types = set(map(type, rows))
    if not row_types <= {list, tuple, np.ndarray}:
        rows = [_history_items(feature, i, row) for i, row in enumerate(rows)]
        row_types = set(map(type, rows))
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] == 0:
        return Ragged(np.zeros(0, dtype=np.int64), offsets)
    nested = InputError(feature, "a history holds nested lists; expected a flat list of IDs per row")
    try:
        if row_types == {np.ndarray}:
            values = np.concatenate(rows)  # 1-D rows stay 1-D; a 2-D row raises or leaves a 2-D result: nested
        else:
            values = np.asarray(list(chain.from_iterable(rows)))
    except ValueError:
        raise nested from None
    if values.ndim != 1 or len(values) != offsets[-1]:
        raise nested
    if values.dtype == object and any(isinstance(v, (list, tuple, np.ndarray)) for v in values):
        raise nested
    return Ragged(values, offsets)


def _history_items(feature: str, row: int, value: Any) -> Sequence[Any]:
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple, np.ndarray)):
        return value
    raise InputError(feature, f"a history must be a list of IDs, got {type(value).__name__}", row)


def _small_histories(vocabulary: Vocabulary, rows: Any, max_len: int) -> tuple[np.ndarray, np.ndarray] | None:
    """pad_recent of the looked-up histories, one value at a time, for a few rows given as lists of plain IDs (one
    request's history); returns (the padded indices, each row's length), or None for the general path."""
    if type(rows) is not list or len(rows) > SMALL_HISTORY_ROWS:
        return None
    kept = []
    for row in rows:
        indices = vocabulary.lookup_plain(row) if type(row) is list else None
        if indices is None:
            return None
        kept.append(indices[len(indices) - max_len:] if len(indices) > max_len else indices)
    out = np.zeros((len(kept), max(1, max(map(len, kept), default=0))), dtype=np.int64)
    for i, indices in enumerate(kept):
        out[i, :len(indices)] = indices
    return out, np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))


def pad_recent(indices: np.ndarray, offsets: np.ndarray, max_len: int) -> np.ndarray:
    """Keep each row's last max_len items (the most recent), left-aligned, padded with 0 to the longest kept row
    (in the values' own type: embedding rows, or ages)."""
    lengths = offsets[1:] - offsets[:-1]
    if len(lengths) and lengths[0] > 0 and (lengths == lengths[0]).all():  # rectangular: a reshape, no scatter
        return indices[offsets[0]:offsets[-1]].reshape(len(lengths), int(lengths[0]))[:, -max_len:]
    kept = np.minimum(lengths, max_len)
    width = max(1, int(kept.max())) if len(kept) else 1
    out = np.zeros((len(kept), width), dtype=indices.dtype)
    total = int(kept.sum())
    if total:
        out_starts = np.cumsum(kept) - kept
        column = np.arange(total) - np.repeat(out_starts, kept)
        source = np.repeat(offsets[1:] - kept, kept) + column
        out[np.repeat(np.arange(len(kept)), kept), column] = indices[source]
    return out


def behaviour_ages(feature: TimesFeature, times: Ragged, at: Any, max_len: int) -> np.ndarray:
    """Each behaviour's age at its row's time (row time minus behaviour time, in the log's units) in whole units,
    int64, the most recent max_len kept and padded as the histories are. Whole units lose nothing the model reads
    (its log2 buckets' bounds are whole numbers) and keep the graph's input clear of float16 and int8 conversion. A
    behaviour stamped after its row's time (a clock ahead) counts as just happened, age 0; a time that is missing
    or not a number is an error naming the field and row."""
    rows = len(times)
    row_times = _numbers(feature.at, at, rows)
    values = _numbers(feature.name, times.values, len(times.values), times.row_of)
    ages = np.clip(np.floor(np.repeat(row_times, times.lengths) - values), 0.0, MAX_AGE)
    return pad_recent(ages.astype(np.int64), times.offsets, max_len)


def _numbers(name: str, values: Any, count: int, row_of=lambda i: i) -> np.ndarray:
    """Times as float64, every one present and finite."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.asarray(values, dtype=object)
        for i, value in enumerate(array):
            try:
                float(value)
            except (TypeError, ValueError):
                raise InputError(name, f"time {_shown(value)} is not a number", row_of(i)) from None
        array = array.astype(np.float64)
    if array.ndim != 1 or len(array) != count:
        raise InputError(name, f"expected {count} times, one per {'row' if count else 'behaviour'}, got an array of shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        raise InputError(name, "a time is missing or not finite (each behaviour and each row needs its time)", row_of(_first_true(bad)))
    return array


class FeatureEncoder:
    """Encodes a mapping of raw feature columns into the ONNX feed, following the fitted feature schema."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self.vocabularies = {f.name: Vocabulary.of(f) for f in schema.categoricals}
        self.scalers = {f.name: NumericScaler(f.fill, f.shift, f.scale) for f in schema.numerics}
        # input -> (input it is looked up from, that lookup's table): item attributes a client may leave out
        self.derived = {name: (source, np.asarray(schema[table].attribute_table, dtype=np.int64))
                        for name, (source, table) in schema.derivations().items()}

    @property
    def names(self) -> list[str]:
        return self.schema.names

    def encode(self, columns: Mapping[str, Any], only: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Encode every feature (or those named in `only`); extra keys (a label, an ID column) are ignored."""
        selected = self.schema.features if only is None else [f for f in self.schema.features if f.name in only]
        to_derive = [f.name for f in selected if f.name not in columns and self.derived.get(f.name, ("",))[0] in columns]
        features = [f for f in selected if f.name not in to_derive]
        missing = [f.name for f in features if f.name not in columns]
        if missing:
            raise InputError(missing[0], "missing from the input")
        if not features:
            return {}
        first = features[0].name
        rows = self._row_count(columns, first)
        feed: dict[str, np.ndarray] = {}
        reference: tuple[str, np.ndarray] | None = None
        for feature in features:
            name = feature.name
            if isinstance(feature, CategoricalFeature):
                feed[name] = self.vocabularies[name].encode(name, columns[name])
            elif isinstance(feature, NumericFeature):
                feed[name] = self.scalers[name].encode(name, columns[name])
            else:
                small = None
                if isinstance(feature, SequenceFeature):
                    vocabulary = self.vocabularies[feature.shares]
                    small = _small_histories(vocabulary, columns[name], feature.max_len)
                ragged = to_ragged(name, columns[name]) if small is None else None
                lengths = small[1] if small is not None else ragged.lengths
                if reference is None:
                    reference = (name, lengths)
                elif len(reference[1]) == len(lengths) and (reference[1] != lengths).any():  # other counts: below
                    row = _first_true(reference[1] != lengths)
                    raise InputError(name, f"history length differs from '{reference[0]}' (behaviour sequences must align)", row)
                if isinstance(feature, TimesFeature):
                    if feature.at not in columns:
                        raise InputError(feature.at, f"missing from the input: each row's own time, which '{name}' gives its behaviours' ages from")
                    feed[name] = behaviour_ages(feature, ragged, columns[feature.at], self.schema.max_len)
                elif small is not None:
                    feed[name] = small[0]
                else:
                    indices = vocabulary.encode(name, ragged.values, ragged.row_of)
                    feed[name] = pad_recent(indices, ragged.offsets, feature.max_len)
        for name, array in feed.items():
            if len(array) != rows:
                raise InputError(name, f"has {len(array)} rows where '{first}' has {rows}")
        for name in to_derive:  # one gather each, from the item's (or the item history's) encoded indices
            source, table = self.derived[name]
            if source not in feed:
                raise InputError(name, f"missing from the input (it can be looked up from '{source}', which was not encoded with it)")
            feed[name] = table.take(feed[source])
        if to_derive:
            return {name: feed[name] for name in self.schema.names if name in feed}  # in input order
        return feed

    @staticmethod
    def _row_count(columns: Mapping[str, Any], first: str) -> int:
        try:
            return len(columns[first])
        except TypeError:
            raise InputError(first, f"expected a list of values, got {type(columns[first]).__name__}") from None
