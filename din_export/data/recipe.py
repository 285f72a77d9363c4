"""The sections of a recipe that only `din-export prepare` reads: [log], [items], [users], [sampling] and [split]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import HOLDOUT, SPLIT_MODES, STRATEGIES
from ..errors import SpecError, did_you_mean
from .spec import keep_negatives_of

# The keys each section of a recipe may hold (docs/guides/spec.md documents each; a test holds the two together).
SECTION_KEYS = {
    "log": {"user", "item", "time", "label", "label_min"},
    "items": {"key"},
    "users": {"key"},
    "sampling": {"negatives", "strategy", "seed", "keep_negatives"},
    "split": {"mode", "valid", "test", "valid_from", "test_from"},
}


@dataclass(frozen=True)
class SplitConfig:
    """per_user: each user's last `test` events to test, the `valid` before them to validation (an int is a count,
    a float below 1 a fraction of the user's events). global_time: events from the time quantile 1 - test on go to
    test, from 1 - test - valid to validation; or explicit `valid_from` / `test_from` timestamps."""

    mode: str = SPLIT_MODES[0]
    valid: float = HOLDOUT[SPLIT_MODES[0]]
    test: float = HOLDOUT[SPLIT_MODES[0]]
    valid_from: float | None = None
    test_from: float | None = None


@dataclass(frozen=True)
class SamplingConfig:
    negatives: int = 1  # per positive, for a log without labels (a labelled log draws none)
    strategy: str = STRATEGIES[0]
    seed: int = 0
    keep_negatives: float = 1.0  # a labelled log: each non-click of the training split kept with this probability


@dataclass(frozen=True)
class LogConfig:
    user: str
    item: str
    time: str
    label: str | None = None
    label_min: float | None = None
    item_key: str | None = None
    user_key: str | None = None
    sampling: SamplingConfig = SamplingConfig()
    split: SplitConfig = SplitConfig()


def _table(data: dict[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise SpecError(f"[{name}] must be a table")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise SpecError(f"[{name}]: unknown key {unknown[0]!r}{did_you_mean(unknown[0], allowed)}; expected some of {sorted(allowed)}")
    return section


def _amount(section: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (isinstance(value, float) and value >= 1):
        raise SpecError(f"[{section}] {key} must be a count (integer >= 0) or a fraction (0 <= x < 1), not {value!r}")
    return value


def log_config_from_dict(data: dict[str, Any]) -> LogConfig:
    """Validate the prepare sections of a recipe; every error names the section and key."""
    if "log" not in data:
        raise SpecError("a recipe for `prepare` needs a [log] section naming the user, item and time columns")
    log = _table(data, "log", SECTION_KEYS["log"])
    for key in ("user", "item", "time"):
        if not isinstance(log.get(key), str):
            raise SpecError(f"[log] {key} must name a column of the log")
    items = _table(data, "items", SECTION_KEYS["items"])
    users = _table(data, "users", SECTION_KEYS["users"])
    sampling = _table(data, "sampling", SECTION_KEYS["sampling"])
    split = _table(data, "split", SECTION_KEYS["split"])
    negatives = sampling.get("negatives", 0 if "label" in log else SamplingConfig.negatives)
    if not isinstance(negatives, int) or negatives < 0:
        raise SpecError(f"[sampling] negatives must be an integer >= 0, not {negatives!r}")
    if "label" in log and negatives:
        raise SpecError("[sampling] negatives: the log has labels ([log] label), so no negatives are drawn; set negatives = 0")
    if "label" not in log and not negatives:
        raise SpecError("[sampling] negatives: a log without labels holds only positives and needs negatives >= 1")
    keep_negatives = keep_negatives_of(data)
    if "label" not in log and keep_negatives != 1.0:
        raise SpecError("[sampling] keep_negatives applies to a labelled log ([log] label); a log without labels draws "
                        "its negatives ([sampling] negatives)")
    strategy = sampling.get("strategy", SamplingConfig.strategy)
    if strategy not in STRATEGIES:
        raise SpecError(f"[sampling] strategy must be one of {STRATEGIES}, not {strategy!r}")
    mode = split.get("mode", SplitConfig.mode)
    if mode not in SPLIT_MODES:
        raise SpecError(f"[split] mode must be one of {SPLIT_MODES}, not {mode!r}")
    if mode == "per_user" and ("valid_from" in split or "test_from" in split):
        raise SpecError("[split] valid_from / test_from apply to mode = 'global_time'")
    return LogConfig(
        user=log["user"], item=log["item"], time=log["time"], label=log.get("label"), label_min=log.get("label_min"),
        item_key=items.get("key"), user_key=users.get("key"),
        sampling=SamplingConfig(negatives=negatives, strategy=strategy, seed=int(sampling.get("seed", SamplingConfig.seed)),
                                keep_negatives=keep_negatives),
        split=SplitConfig(mode=mode, valid=_amount("split", "valid", split.get("valid", HOLDOUT[mode])),
                          test=_amount("split", "test", split.get("test", HOLDOUT[mode])),
                          valid_from=split.get("valid_from"), test_from=split.get("test_from")),
    )


