"""The recipe's rules that both `prepare` engines (DuckDB's, prepare.py; Spark's, spark.py) apply, in one place:
reading and checking a recipe against the tables given, where each feature's values come from (the item, the user
or the event), which log columns a run reads, how text becomes a number, how missing numbers are recognised, and
the spec the prepared folder carries for training. An engine restates a rule in its own operations only where it
must, beside a pointer to the rule here; the identity tests run both engines on logs made to hit every rule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .prepared import TIME_COLUMN
from .recipe import LogConfig, log_config_from_dict
from .spec import PREVIOUS_FILL, FeatureSpec, Spec, SpecError, read_toml, spec_from_dict

# Text that is a number (an integer, a decimal, an exponent, signs and surrounding blanks allowed); any other text
# in a numeric column is missing. NaN is missing too, whatever the column's type: both engines turn it into null.
NUMBER_PATTERN = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


@dataclass(frozen=True)
class Sources:
    """The tables a run reads: the behaviour log, and the item and user attribute tables where the recipe has them."""

    log: Path
    items: Path | None = None
    users: Path | None = None


def read_recipe(recipe: Path) -> tuple[Spec, LogConfig]:
    """A recipe file as its feature spec and its prepare sections, each error naming the file."""
    data = read_toml(recipe)
    try:
        return spec_from_dict(data), log_config_from_dict(data)
    except SpecError as error:
        raise SpecError(f"{recipe}: {error}") from None


def feature_side(feature: FeatureSpec, config: LogConfig) -> str:
    """Whose fact a feature is: the item's (the item column, or the item table), the user's, or the event's."""
    if feature.source == "items" or (feature.source == "log" and feature.column == config.item):
        return "item"
    if feature.source == "users" or feature.column == config.user:
        return "user"
    return "event"


def event_features(spec: Spec, config: LogConfig) -> list[FeatureSpec]:
    """Non-sequence features read from the log itself, other than the user and item columns."""
    identity = (config.user, config.item)
    return [f for f in spec.features if not f.per_behaviour and f.source == "log" and f.column not in identity]


def log_columns(spec: Spec, config: LogConfig) -> list[str]:
    """The log columns the recipe needs: user, item, time, the label if any, and the event features' columns."""
    columns = [config.user, config.item, config.time] + ([config.label] if config.label else [])
    return columns + [f.column for f in event_features(spec, config) if f.column not in columns]


def table_columns(spec: Spec, source: str, key: str) -> list[str]:
    """The columns read from an attribute table ("items" or "users"): its key, then its features' columns."""
    return [key] + sorted({f.column for f in spec.features if not f.per_behaviour and f.source == source} - {key})


def check_sources(spec: Spec, config: LogConfig, sources: Sources) -> None:
    """Recipe errors found before any file is read: a table given without its section or a section without its
    table, histories of user attributes, missing columns."""
    for source, path, key in (("items", sources.items, config.item_key), ("users", sources.users, config.user_key)):
        if path is not None and key is None:
            raise SpecError(f"--{source} gives a table, but the recipe has no [{source}] section naming its key column "
                            f"(add [{source}] key = \"...\", or leave --{source} out)")
        if path is None and key is not None:
            raise SpecError(f"[{source}] names a key column, but no {source} table was given: pass it with --{source}")
    for feature in spec.features:
        if feature.kind == "times" and feature.at != TIME_COLUMN:
            raise SpecError(f"feature '{feature.name}': `prepare` writes each sample's time as '{TIME_COLUMN}'; leave 'at' out")
        if feature.kind == "times":
            continue
        if feature.kind == "sequence":
            target = next(f for f in spec.features if f.name == feature.shares)
            if target.source == "users" or (target.source == "log" and target.column == config.user):
                raise SpecError(f"feature '{feature.name}': a history of '{target.name}', a user attribute, is not a behaviour sequence")
            continue
        if feature.column is None:
            raise SpecError(f"feature '{feature.name}': `prepare` needs 'column', the source column of its values")
        for source, path, key in (("items", sources.items, config.item_key), ("users", sources.users, config.user_key)):
            if feature.source == source and (path is None or key is None):
                raise SpecError(f"feature '{feature.name}' comes from the {source} table: pass --{source} and set [{source}] key")


def training_spec(spec: Spec, config: LogConfig) -> Spec:
    """The spec train-and-export reads: prepare's keys dropped; gaps left after 'previous' filled with the mean;
    each categorical from the item table marked as an attribute of the item (the bundle then carries the
    item-to-attribute table, so a client may send item IDs alone)."""
    data = spec.to_dict()
    item = next((f.name for f in spec.of_kind("categorical") if f.source == "log" and f.column == config.item), None)
    for feature in spec.features:
        entry = data["features"][feature.name]
        if entry.get("fill") == PREVIOUS_FILL:
            entry["fill"] = "mean"
        if item is not None and feature.kind == "categorical" and feature.source == "items" and feature.attribute_of is None:
            entry["attribute_of"] = item
    return spec_from_dict(data)
