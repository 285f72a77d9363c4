"""The feature spec: one TOML file that names the label and each feature, used for encoding, model and manifest."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from din_runtime.schema import KINDS, SAMPLE_TIME

from ..errors import SpecError, did_you_mean
from .reserved import RESERVED_NAMES

FILLS = ("mean", "median", "zero")
PER_BEHAVIOUR = ("sequence", "times")  # kinds with one value per behaviour
PREVIOUS_FILL = "previous"  # the user's previous value: only `prepare` can apply it, on a log column
NORMALIZATIONS = ("zscore", "minmax", "none")
SOURCES = ("log", "items", "users")
ALLOWED_KEYS = {
    "categorical": {"kind", "min_count", "attribute_of", "max_vocabulary"},
    "numeric": {"kind", "fill", "normalize"},
    "sequence": {"kind", "shares", "max_len"},
    "times": {"kind", "at"},
}
# Keys that only `din-export prepare` reads: where a feature's values come from in a behaviour log.
PREPARE_KEYS = {"categorical": {"column", "source", "first_token"}, "numeric": {"column", "source", "first_token"}, "sequence": set(),
                "times": set()}
PREPARE_SECTIONS = {"log", "items", "users", "sampling", "split"}
SETTINGS_SECTIONS = ("model", "training")  # hyperparameters; command-line flags override them (`tune` writes them)
TOP_LEVEL_KEYS = {"label", "user", "features", *SETTINGS_SECTIONS} | PREPARE_SECTIONS


@dataclass(frozen=True)
class FeatureSpec:
    """One feature as the user declared it (its kind, fill, sharing; for `prepare`, where its values come from).
    Fitting it on the training split gives din_runtime.schema's Feature, which the rest of the system reads."""

    name: str
    kind: str
    fill: str = "mean"
    normalize: str = "zscore"
    shares: str | None = None
    max_len: int | None = None
    min_count: int = 1
    column: str | None = None
    source: str = "log"
    first_token: bool = False
    at: str = SAMPLE_TIME  # a times feature's: the column holding each row's own time (its behaviours' ages are taken from it)
    attribute_of: str | None = None  # a categorical whose value is a fact of another's (an item's category): see schema.py
    max_vocabulary: int | None = None  # most keys the table may hold (the most frequent kept; a warm start's new keys fill what is left)

    @property
    def per_behaviour(self) -> bool:
        """Whether the feature holds one value per behaviour (a sequence, or the behaviours' times), not one per row."""
        return self.kind in PER_BEHAVIOUR


@dataclass(frozen=True)
class Spec:
    """Label, optional user column (for GAUC) and the features in file order."""

    label: str
    features: tuple[FeatureSpec, ...]
    user: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    keep_negatives: float = 1.0  # [sampling] keep_negatives: the fraction of non-clicks the training split holds

    def of_kind(self, kind: str) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == kind]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_dict(self) -> dict[str, Any]:
        features = {}
        for feature in self.features:
            features[feature.name] = {k: v for k, v in asdict(feature).items() if k != "name" and k in ALLOWED_KEYS[feature.kind]
                                      and not (k == "min_count" and v == 1) and not (k in ("attribute_of", "max_vocabulary") and v is None)
                                      and not (k == "at" and v == SAMPLE_TIME)}
        data: dict[str, Any] = {"label": self.label, "features": features}
        if self.user is not None:
            data["user"] = self.user
        for section in SETTINGS_SECTIONS:
            if getattr(self, section):
                data[section] = dict(getattr(self, section))
        if self.keep_negatives != 1.0:
            data["sampling"] = {"keep_negatives": self.keep_negatives}
        return data


def _check_one_of(name: str, key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise SpecError(f"feature '{name}': {key} must be one of {choices}, not {value!r}")


def _check_positive_integer(name: str, key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(f"feature '{name}': {key} must be a positive integer, not {value!r}")


def _check_name(name: str) -> None:
    """A feature's name is its column, its graph input and its tensor's name in every protocol: any text works
    (dots, spaces, other scripts, operator names), but not blank, not a control character, and not a name the
    project uses itself."""
    if not name.strip():
        raise SpecError(f"feature {name!r}: a feature needs a name that is not blank")
    if any(not character.isprintable() for character in name):
        raise SpecError(f"feature {name!r}: a name may not hold control characters such as newlines or tabs")
    if name in RESERVED_NAMES:
        raise SpecError(f"feature '{name}': the name is taken ({RESERVED_NAMES[name]}); rename the feature")


def _feature(name: str, table: Any) -> FeatureSpec:
    _check_name(name)
    if not isinstance(table, dict):
        raise SpecError(f"feature '{name}': expected a table of keys")
    kind = table.get("kind")
    _check_one_of(name, "kind", kind, tuple(KINDS))
    allowed = ALLOWED_KEYS[kind] | PREPARE_KEYS[kind]
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(f"feature '{name}': unknown key {unknown[0]!r} for kind '{kind}'{did_you_mean(unknown[0], allowed)}; "
                        f"known: {sorted(allowed)}")
    feature = FeatureSpec(name=name, **table)
    _check_positive_integer(name, "min_count", feature.min_count)
    if feature.max_vocabulary is not None:
        _check_positive_integer(name, "max_vocabulary", feature.max_vocabulary)
    _check_one_of(name, "source", feature.source, SOURCES)
    if kind == "numeric":
        if feature.fill == PREVIOUS_FILL and (feature.column is None or feature.source != "log"):
            raise SpecError(f"feature '{name}': fill = 'previous' needs a log column (source 'log' and 'column')")
        _check_one_of(name, "fill", feature.fill, (*FILLS, PREVIOUS_FILL))
        _check_one_of(name, "normalize", feature.normalize, NORMALIZATIONS)
    if kind == "sequence":
        if not isinstance(feature.shares, str):
            raise SpecError(f"feature '{name}': a sequence needs 'shares', the categorical feature whose vocabulary it uses")
        _check_positive_integer(name, "max_len", feature.max_len)
    return feature


def spec_from_dict(data: dict[str, Any]) -> Spec:
    """Validate a parsed spec; every error names the offending feature or key."""
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise SpecError(f"unknown top-level key {unknown[0]!r}{did_you_mean(unknown[0], TOP_LEVEL_KEYS)}; expected {sorted(TOP_LEVEL_KEYS)}")
    label = data.get("label")
    if not isinstance(label, str):
        raise SpecError("'label' must name the label column")
    tables = data.get("features")
    if not isinstance(tables, dict) or not tables:
        raise SpecError("'features' must hold at least one [features.NAME] table")
    features = tuple(_feature(name, table) for name, table in tables.items())
    by_name = {f.name: f for f in features}
    if label in by_name:
        raise SpecError(f"label '{label}' is also declared as a feature")
    for attribute in (f for f in features if f.attribute_of is not None):
        item = by_name.get(attribute.attribute_of)
        if item is None or item.kind != "categorical" or item.attribute_of is not None or item is attribute:
            raise SpecError(f"feature '{attribute.name}': attribute_of '{attribute.attribute_of}' must name another categorical "
                            "feature of this spec that is not itself an attribute")
    for sequence in (f for f in features if f.kind == "sequence"):
        target = by_name.get(sequence.shares)
        if target is None or target.kind != "categorical":
            raise SpecError(f"feature '{sequence.name}': shares '{sequence.shares}', which is not a categorical feature of this spec")
    times = [f for f in features if f.kind == "times"]
    if len(times) > 1:
        raise SpecError(f"feature '{times[1].name}': one times feature gives every behaviour its time; '{times[0].name}' already does")
    if times and (not isinstance(times[0].at, str) or not times[0].at.strip() or times[0].at in by_name or times[0].at == label):
        raise SpecError(f"feature '{times[0].name}': at must name the column of each row's own time, not a feature or the label "
                        f"({times[0].at!r})")
    if not any(f.kind == "sequence" for f in features):
        raise SpecError("a DIN needs at least one sequence feature (the user's behaviours)")
    user = data.get("user", "user_id" if by_name.get("user_id", FeatureSpec("", "")).kind == "categorical" else None)
    if user is not None and (user not in by_name or by_name[user].kind != "categorical"):
        raise SpecError(f"'user' must name a categorical feature, not {user!r}")
    return Spec(label=label, features=features, user=user, keep_negatives=keep_negatives_of(data), **_settings(data))


def keep_negatives_of(data: dict[str, Any]) -> float:
    """[sampling] keep_negatives: each non-click of the training split was kept with this probability (the
    served probability is corrected for it); 1 where the section or key is absent."""
    sampling = data.get("sampling", {})
    value = sampling.get("keep_negatives", 1.0) if isinstance(sampling, dict) else 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise SpecError(f"[sampling] keep_negatives must be a fraction in (0, 1], not {value!r}")
    return float(value)


def _settings(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    settings = {}
    for section in SETTINGS_SECTIONS:
        settings[section] = data.get(section, {})
        if not isinstance(settings[section], dict):
            raise SpecError(f"[{section}] must be a table of settings")
    return settings


def with_caps(spec: Spec, caps: dict[str | None, int]) -> Spec:
    """The spec with max_vocabulary set from `--max-vocabulary`: caps[None] for every categorical, caps[NAME] for
    one (which wins over the spec's own and over caps[None])."""
    categorical = {f.name for f in spec.of_kind("categorical")}
    unknown = sorted(name for name in caps if name is not None and name not in categorical)
    if unknown:
        raise SpecError(f"--max-vocabulary: {unknown[0]!r} is not a categorical feature of the spec (those are {sorted(categorical)})")
    features = tuple(replace(f, max_vocabulary=caps.get(f.name, caps.get(None, f.max_vocabulary))) if f.name in categorical else f
                     for f in spec.features)
    return replace(spec, features=features)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise SpecError(f"{path}: no such spec file") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML ({error})") from None


def load_spec(path: str | Path) -> Spec:
    data = read_toml(path)
    try:
        return spec_from_dict(data)
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def spec_to_toml(spec: Spec) -> str:
    """The spec as TOML that load_spec reads back unchanged (train-and-export's keys only)."""
    data = spec.to_dict()
    lines = [f"label = {_toml_value(data['label'])}"]
    if "user" in data:
        lines.append(f"user = {_toml_value(data['user'])}")
    for section in (*SETTINGS_SECTIONS, "sampling"):
        if section in data:
            lines += ["", f"[{section}]"] + [f"{key} = {_toml_value(value)}" for key, value in data[section].items()]
    for name, entry in data["features"].items():
        lines += ["", f"[features.{_toml_value(name)}]"] + [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"
