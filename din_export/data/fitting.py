"""Fitting the feature schema on the training split: vocabularies and numeric statistics. Written once here, it is
what the encoder, the model, the exporters and the predictor read (stored as the manifest's `encoding`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from din_runtime.encoding import OOV_INDEX, PADDING_INDEX, Ragged, coerce_keys
from din_runtime.schema import FIRST_KEY_INDEX, CategoricalFeature, Feature, FeatureSchema, NumericFeature, SequenceFeature, TimesFeature

from ..errors import SpecError
from .layout import Windows
from .spec import FeatureSpec, Spec

# An encoded split's view of one input: every index it feeds, flat, and how often each counts (None: once each).
Indices = Callable[[str], tuple[np.ndarray, np.ndarray | None]]


def _key_type(values: np.ndarray) -> str:
    return "int" if values.dtype.kind in "iuf" else "str"


def _distinct_counts(values: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and how often each occurs (each counted `weights` times, where given). Text is counted by
    Arrow's hash table: numpy's np.unique sorts (and first copies) every string, about twice as slow on a history
    of millions of genre names."""
    if weights is not None:
        distinct, inverse = np.unique(values, return_inverse=True)
        return distinct, np.bincount(inverse, weights=weights, minlength=len(distinct))
    if values.dtype.kind == "U":
        counted = pc.value_counts(pa.array(values))
        return counted.field("values").to_numpy(zero_copy_only=False).astype(np.str_), counted.field("counts").to_numpy()
    return np.unique(values, return_counts=True)


def _vocabulary_keys(name: str, columns: dict[str, Any], sharers: list[str], min_count: int) -> tuple[str, np.ndarray, np.ndarray, bool]:
    """Sorted distinct keys of a categorical column and of every sequence that shares its vocabulary, seen at least
    min_count times there, with how often each was seen; rarer keys are left out and so fold into the
    out-of-vocabulary index. The flag says whether missing values occurred, which then get a token of their own."""
    column = np.asarray(columns[name])
    key_type = _key_type(column)
    parts, tallies, any_missing = [], [], False
    sources = [(name, column, lambda i: i, None)]
    for sharer in sharers:
        if isinstance(columns[sharer], Ragged):
            sources.append((sharer, columns[sharer].values, columns[sharer].row_of, None))
        elif isinstance(columns[sharer], Windows):  # the reference layout: each store row as often as the windows hold it
            sources.append((sharer, columns[sharer].values, lambda i: i, columns[sharer].weights))
    for source, values, row_of, weights in sources:
        keys, missing = coerce_keys(source, values, key_type, row_of)
        kept = ~missing if weights is None else ~missing & (weights > 0)
        distinct, counts = _distinct_counts(keys[kept] if not kept.all() else keys, None if weights is None else weights[kept])
        parts.append(distinct)
        tallies.append(counts)
        any_missing = any_missing or bool((missing if weights is None else missing & (weights > 0)).any())
    keys, inverse = np.unique(np.concatenate(parts), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate(tallies), minlength=len(keys))
    frequent = counts >= min_count
    return key_type, keys[frequent], counts[frequent], any_missing


def _most_frequent(keys: np.ndarray, counts: np.ndarray, room: int | None) -> np.ndarray:
    """The `room` most frequent of the keys (ties: the lower key), in key order; all of them without a bound."""
    if room is None or len(keys) <= room:
        return keys
    chosen = np.lexsort((keys, -counts))[:max(room, 0)]
    return keys[np.sort(chosen)]


@dataclass(frozen=True)
class Fitted:
    """The fitted schema, and per categorical how its vocabulary came to be: `keys` in all, `gained` (keys new
    since the parent of a warm start: all of them in a fresh fit), `over_cap` (frequent enough, but past
    max_vocabulary: they map to out-of-vocabulary)."""

    schema: FeatureSchema
    vocabularies: dict[str, dict[str, int]]


def _categorical(feature: FeatureSpec, columns: dict[str, Any], sharers: list[str],
                 parent: CategoricalFeature | None) -> tuple[CategoricalFeature, dict[str, int]]:
    key_type, keys, counts, missing = _vocabulary_keys(feature.name, columns, sharers, feature.min_count)
    cap = feature.max_vocabulary
    if parent is None:
        kept = _most_frequent(keys, counts, cap)
        fitted = CategoricalFeature(feature.name, key_type, kept.tolist(), missing, feature.attribute_of)
        return fitted, {"keys": len(kept), "gained": len(kept), "over_cap": len(keys) - len(kept)}
    if len(keys) and key_type != parent.key_type:
        raise SpecError(f"feature '{feature.name}': its IDs are {key_type} here but {parent.key_type} in the --warm-start bundle")
    known = np.asarray(parent.keys, dtype=np.int64 if parent.key_type == "int" else np.str_)
    new = ~np.isin(keys, known) if len(known) and len(keys) else np.ones(len(keys), dtype=bool)
    room = None if cap is None else cap - len(known)
    gained = _most_frequent(keys[new], counts[new], room)
    # The parent's rows stay where they are: its keys, then its missing token (if any), then the keys gained.
    missing_index = parent.missing_row if parent.missing_token else None
    extended = CategoricalFeature(feature.name, parent.key_type, [*parent.keys, *gained.tolist()], parent.missing_token or missing,
                                  feature.attribute_of, missing_index=missing_index)
    return extended, {"keys": len(extended.keys), "gained": len(gained), "over_cap": int(new.sum()) - len(gained)}


def _numeric_feature(name: str, values: np.ndarray, fill: str, normalize: str) -> NumericFeature:
    observed = values[np.isfinite(values)]
    if fill == "zero" or len(observed) == 0:
        fill_value = 0.0
    else:
        fill_value = float(np.mean(observed) if fill == "mean" else np.median(observed))
    shift, scale = 0.0, 1.0
    if normalize == "zscore" and len(observed):
        shift, scale = float(np.mean(observed)), float(np.std(observed))
    elif normalize == "minmax" and len(observed):
        shift, scale = float(np.min(observed)), float(np.max(observed) - np.min(observed))
    return NumericFeature(name, fill_value, shift, scale if scale > 0 else 1.0)


def fit_schema(columns: dict[str, Any], spec: Spec, parent: FeatureSchema | None = None) -> Fitted:
    """The fitted schema, in spec order, from the training split's raw columns. With the `parent` schema of a warm
    start, vocabularies extend the parent's (every parent key keeps its row; new keys are appended) and numeric
    features keep the parent's fill and scaling, which its first layers' weights were trained on."""
    features: list[Feature] = []
    vocabularies: dict[str, dict[str, int]] = {}
    for feature in spec.features:
        if feature.kind == "categorical":
            sharers = [s.name for s in spec.of_kind("sequence") if s.shares == feature.name]
            known = parent[feature.name] if parent is not None else None
            fitted, vocabularies[feature.name] = _categorical(feature, columns, sharers, known)  # type: ignore[arg-type]
            features.append(fitted)
        elif feature.kind == "numeric":
            features.append(parent[feature.name] if parent is not None else
                            _numeric_feature(feature.name, np.asarray(columns[feature.name], dtype=np.float64), feature.fill, feature.normalize))
        elif feature.kind == "times":
            features.append(TimesFeature(feature.name, feature.at))
        else:
            features.append(SequenceFeature(feature.name, feature.shares, feature.max_len))
    return Fitted(FeatureSchema(tuple(features)), vocabularies)


def _attribute_table(item_indices: np.ndarray, attribute_indices: np.ndarray, item_size: int, attribute_size: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """Per item index, the attribute index seen with it most often (ties: the lower index); padding maps to padding,
    items never seen with an attribute to out-of-vocabulary."""
    seen = (item_indices >= FIRST_KEY_INDEX) & (attribute_indices != PADDING_INDEX)
    pairs, counts = _distinct_counts(item_indices[seen] * attribute_size + attribute_indices[seen], None if weights is None else weights[seen])
    items, attributes = pairs // attribute_size, pairs % attribute_size
    best = np.lexsort((attributes, -counts, items))  # per item: most frequent first
    first = np.ones(len(best), dtype=bool)
    first[1:] = items[best][1:] != items[best][:-1]
    table = np.full(item_size, OOV_INDEX, dtype=np.int64)
    table[PADDING_INDEX] = PADDING_INDEX
    table[items[best][first]] = attributes[best][first]
    return table


def with_attribute_tables(schema: FeatureSchema, indices: Indices, parent: FeatureSchema | None = None) -> FeatureSchema:
    """The schema with an item-to-attribute table for every item attribute, fitted on the training split's encoded
    inputs (`indices`, EncodedSplit.indices): the candidate's item and attribute, and each history of items with the
    history of the attribute. With the `parent` of a warm start, an item seen in this split takes the attribute
    it was seen with most often here (an item whose category changed follows the newest data); an item not seen
    here keeps the parent's entry."""
    derived = schema.derivations(include_untabled=True)  # the pairing of histories is the schema's own
    features: list[Feature] = []
    for feature in schema.features:
        if isinstance(feature, CategoricalFeature) and feature.attribute_of is not None:
            item = schema[feature.attribute_of]
            pairs = [(indices(source), indices(name)) for name, (source, table) in derived.items() if table == feature.name]
            items = np.concatenate([source[0] for source, _ in pairs])
            attributes = np.concatenate([attribute[0] for _, attribute in pairs])
            weights = np.concatenate([np.ones(len(source[0])) if source[1] is None else source[1] for source, _ in pairs])
            table = _attribute_table(items, attributes, item.size, feature.size, weights)
            if parent is not None and parent[feature.name].attribute_table is not None:
                inherited = np.asarray(parent[feature.name].attribute_table, dtype=np.int64)
                unseen = table[:len(inherited)] == OOV_INDEX
                table[:len(inherited)][unseen] = inherited[unseen]
            feature = replace(feature, attribute_table=table.tolist())
        features.append(feature)
    return FeatureSchema(tuple(features))
