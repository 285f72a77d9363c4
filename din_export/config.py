"""Every setting and its default, in one place: the model's, training's and tuning's dataclasses with what each
setting accepts, the choices each option takes, the commands' other defaults, and how a spec's [model] and
[training] sections and explicit command-line flags combine with them.

A setting is checked when its config object is made, whether it came from a flag, a spec section or Python: a bad
value is one line naming the key (`SettingError`), raised before any data is read. The click options take their
defaults and ranges from here too (cli/options.py), so a flag and a spec key accept exactly the same values.
Imports no torch, so `din-export --help` stays quick.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from .errors import SpecError, did_you_mean

VARIANTS = ("din", "base", "din-seq", "dien", "bst")  # the architecture (--model): model/family.py
DIEN_AUXILIARY_HIDDEN = (100, 50)  # DIEN's auxiliary network (training only), the paper's sizes
BASE_POOLINGS = ("mean", "sum")
ACTIVATIONS = ("prelu", "dice", "sigmoid", "relu")
WEIGHTINGS = ("raw", "softmax")
RECENCIES = ("position", "none")  # recency in the attention: each behaviour's log2 bucket back from the most recent, or none
FORMS = ("folded", "plain")  # the attention unit's first layer: folded for inference, or plain (--attention-form)
SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
AUGMENTATIONS = ("none", "crop", "mask")
PRECISIONS = ("fp32", "int8", "fp16")
CALIBRATIONS = ("none", "platt", "isotonic")  # [training] calibration: fitted on validation after training
CALIBRATION_BINS = 10  # equal-mass bins of the expected calibration error and the reliability diagram
RANK_CUTOFFS = (5, 10, 20)  # `evaluate --rank`: the K of HR@K and NDCG@K
DEFAULT_MAX_AUC_DROP = 0.002  # `export --precision`: validation AUC a reduced precision may lose
COMPARE_MAX_AUC_DROP = 0.0  # `compare`: AUC a new model may lose (beyond its 95% interval) and still pass
COMPARE_RESAMPLES = 1000  # `compare`: bootstrap resamples of the users
COMPARE_MIN_RESAMPLES = 100  # fewer cannot place a 95% interval's ends
ENGINES = ("duckdb", "spark")  # `prepare --engine`: this machine out of core, or a Spark job
SPARK_MASTER = "local[*]"  # `prepare --engine spark`: every core of this machine
LAYOUTS = ("inline", "reference")  # how `prepare` writes histories: list columns, or references into a store
SERVED_JOINS = ("request", "window")  # prepare --served: clicks matched by request id and item, or by user and item in a window
PREPARE_WRITE_ROWS = 200_000  # samples `prepare` builds and writes at once
PREPARE_MIN_WRITE_ROWS = 1000
PREPARE_BLOCK_EVENTS = 1_000_000  # events (whole users) `prepare` handles at once: its memory besides DuckDB's
PREPARE_MEMORY_LIMIT = "1GB"  # DuckDB's working memory while `prepare` sorts the log; past it, DuckDB spills
SPLIT_MODES = ("per_user", "global_time")  # [split] mode
HOLDOUT = {"per_user": 1, "global_time": 0.1}  # [split] valid and test by mode: a user's last event; a tenth of the time range
HELD_OUT_FRACTION = 0.1  # train-and-export --data without --valid / --test: each held out of it at random
STRATEGIES = ("uniform", "popularity")  # [sampling] strategy
SYNTHETIC_SAMPLES = 100_000  # rows of the built-in data (--samples)
SYNTHETIC_MIN_SAMPLES = 100
# `--precision int8 --int8-products`: which matrix products compute in int8 beside the int8 tables. "none" by
# measurement (benchmarks/int8_options.py, Export guide "int8"): on the CPUs measured, ONNX Runtime's integer
# kernels at this model's product widths were no faster than float32, and slower for single rows.
INT8_PRODUCTS = ("none", "per-behaviour", "constant-weights", "all")
CALIBRATION_ROWS = 4096  # `--precision int8`: validation rows whose activation ranges fix the int8 scales
CALIBRATION_BATCH_ROWS = 512
SCORING_BATCH_ROWS = 4096  # rows per ONNX Runtime call when an export scores a split (a precision's AUC check)
EXPLAIN_FIGURE_ROWS = 5  # `report --explain`: candidates in the figure
EXPLAIN_FIGURE_MAX_ROWS = 50
TRITON_MAX_BATCH_SIZE = 4096  # `din-export triton`: config.pbtxt's max_batch_size
TRITON_INSTANCES = 1  # ...its instance_group count
TRITON_THREADS = 2  # ...ONNX Runtime's intra-op threads per instance
# A warm start's training settings where neither the spec nor a flag sets them: fewer epochs at a lower rate
# than a fresh model's, chosen by benchmarks/daily_retraining.py --schedules (docs: "Retraining every day").
WARM_START_TRAINING: dict[str, Any] = {"epochs": 5, "learning_rate": 1e-3, "warmup_steps": 0}
# [model] dropout where neither the spec nor a flag sets it, by variant (0 for the rest): DIEN's by
# benchmarks/recipe_search.py (0.1 ahead on every seed, Models guide "Settings"); BST lost with it, DIN gained nothing.
DROPOUT_BY_VARIANT: dict[str, float] = {"dien": 0.1}


class SettingError(SpecError):
    """A setting's value is not one it accepts; the message names the key (and the section, where it came from one)."""


@dataclass(frozen=True)
class Accepts:
    """What one setting accepts: its type, and a range (`low` / `high`, open or closed) or a set of choices.
    `layers`: a non-empty tuple of integers each within the range (hidden layer sizes)."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    layers: bool = False
    optional: bool = False  # None allowed (no value)

    def describe(self) -> str:
        """The accepted values in words: 'an integer >= 2', 'a number in [0, 1)', 'one of ('din', 'base')'."""
        if self.choices is not None:
            return f"one of {self.choices}"
        noun = {int: "an integer", float: "a number", bool: "true or false", str: "text"}[self.kind]
        if self.low is not None and self.high is not None:
            noun += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            noun += f" {'>' if self.low_open else '>='} {self.low:g}"
        if self.layers:
            noun = f"layer sizes, each {noun}" if self.low is not None else "layer sizes"
        return noun

    def check(self, key: str, value: Any) -> Any:
        """The value as the setting holds it (a list of layer sizes as a tuple); SettingError naming `key` otherwise."""
        if value is None and self.optional:
            return None
        if self.layers:
            values = tuple(value) if isinstance(value, (list, tuple)) else None
            if not values or not all(self._fits(v) for v in values):
                raise SettingError(f"{key} must be {self.describe()} (e.g. [80, 40]), not {value!r}")
            return values
        if not self._fits(value):
            raise SettingError(f"{key} must be {self.describe()}, not {value!r}")
        return float(value) if self.kind is float else value

    def _fits(self, value: Any) -> bool:
        if self.choices is not None:
            return isinstance(value, str) and value in self.choices
        if self.kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else self.kind):
            return False
        if self.kind is float and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def setting(default: Any, accepts: Accepts, help: str = "") -> Any:
    """A config field: its default and what it accepts (read by the config's check and by the click options)."""
    return field(default=default, metadata={"accepts": accepts, "help": help})


def accepts_of(kind: type, name: str) -> Accepts:
    return next(f for f in fields(kind) if f.name == name).metadata["accepts"]


def _check_fields(config: Any) -> None:
    """Every field of a config dataclass against what it accepts (frozen: the checked values are set in place)."""
    for entry in fields(config):
        value = entry.metadata["accepts"].check(entry.name, getattr(config, entry.name))
        object.__setattr__(config, entry.name, value)


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters. `variant`: din (target attention over the behaviours), base (the paper's BaseModel:
    mean or sum pooling), din-seq (a Transformer encoder over the behaviours, then target attention), dien (a GRU
    interest extractor, then AUGRU gated by target attention), bst (a Transformer over the behaviours and the
    candidate together)."""

    variant: str = setting("din", Accepts(str, choices=VARIANTS))
    embedding_dim: int = setting(16, Accepts(int, low=1))
    attention_hidden: tuple[int, ...] = setting((80, 40), Accepts(int, low=1, layers=True))
    attention_activation: str = setting("sigmoid", Accepts(str, choices=ACTIVATIONS))
    attention_weighting: str = setting("raw", Accepts(str, choices=WEIGHTINGS))
    mlp_hidden: tuple[int, ...] = setting((200, 80), Accepts(int, low=1, layers=True))
    # chosen by benchmarks/recipe_search.py (README, "Training recipe")
    mlp_activation: str = setting("dice", Accepts(str, choices=ACTIVATIONS))
    embedding_init_std: float = setting(0.2, Accepts(float, low=0, low_open=True))
    # None: the variant's (DROPOUT_BY_VARIANT); a made config always holds a number
    dropout: float | None = setting(None, Accepts(float, low=0, high=1, high_open=True, optional=True))
    batch_norm: bool = setting(False, Accepts(bool))
    base_pooling: str = setting("mean", Accepts(str, choices=BASE_POOLINGS))
    encoder_heads: int = setting(2, Accepts(int, low=1))
    encoder_layers: int = setting(1, Accepts(int, low=1))
    # position: each behaviour's distance back from the most recent, in log2 buckets, as an embedding added to its key
    # (layers.Recency); none: blind to order. A spec's times feature adds each behaviour's age as well
    # (layers.AgeRecency), whatever this says. Chosen by benchmarks/recency.py (Models guide).
    recency: str = setting("position", Accepts(str, choices=RECENCIES))
    # dien: the weight of the auxiliary next-behaviour loss beside the click loss (0: none, and no auxiliary network)
    auxiliary_weight: float = setting(1.0, Accepts(float, low=0))

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.dropout is None:
            object.__setattr__(self, "dropout", DROPOUT_BY_VARIANT.get(self.variant, 0.0))

    def check_for(self, sequences: int) -> None:
        """What depends on the spec: din-seq's and bst's self-attention splits the behaviour width (embedding_dim per sequence
        feature) over its heads."""
        width = self.embedding_dim * sequences
        if self.variant in ("din-seq", "bst") and width % self.encoder_heads:
            raise SettingError(f"[model] encoder_heads = {self.encoder_heads} does not divide {self.variant}'s behaviour width {width} "
                               f"(embedding_dim {self.embedding_dim} x {sequences} sequence feature(s)); choose heads that divide it")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A saved configuration; one saved before `recency` existed had none (its weights hold no recency table)."""
        return cls(**{"recency": "none", **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}})


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. The defaults are the recipe chosen by benchmarks/recipe_search.py (README, "Training
    recipe"): batches of 512, Adam at 5e-3 after 100 warm-up steps, decayed by a cosine to zero, the paper's
    mini-batch aware L2 at 0.1, no augmentation."""

    epochs: int = setting(10, Accepts(int, low=0))
    batch_size: int = setting(512, Accepts(int, low=2))  # batch statistics (Dice, batch norm) need two rows
    learning_rate: float = setting(5e-3, Accepts(float, low=0, low_open=True))
    patience: int = setting(2, Accepts(int, low=1))
    seed: int = setting(0, Accepts(int, low=0))
    progress: bool = setting(True, Accepts(bool))
    embedding_l2: float = setting(0.1, Accepts(float, low=0))
    lr_schedule: str = setting("cosine", Accepts(str, choices=SCHEDULES))
    warmup_steps: int = setting(100, Accepts(int, low=0))
    # samples per epoch, drawn afresh each epoch (validation every so many); 0: the whole split
    epoch_samples: int = setting(0, Accepts(int, low=0))
    augmentation: str = setting("none", Accepts(str, choices=AUGMENTATIONS))
    augmentation_rate: float = setting(0.0, Accepts(float, low=0, high=1, high_open=True))
    device: str = setting("auto", Accepts(str, choices=DEVICES))
    # chosen by benchmarks/calibration.py (docs: "Calibrated probabilities")
    calibration: str = setting("platt", Accepts(str, choices=CALIBRATIONS))

    def __post_init__(self) -> None:
        _check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TuneConfig:
    """`din-export tune`: the trial budget, each trial's most epochs, the seed of sampler, split and trials, and an
    optional wall-clock limit in seconds."""

    trials: int = setting(20, Accepts(int, low=1))
    epochs: int = setting(5, Accepts(int, low=1))
    seed: int = setting(0, Accepts(int, low=0))
    timeout: float | None = setting(None, Accepts(float, low=1, optional=True))

    def __post_init__(self) -> None:
        _check_fields(self)


def _build(kind: type, section: str, values: dict[str, Any]) -> Any:
    known = [f.name for f in fields(kind)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SpecError(f"[{section}]: unknown setting {unknown[0]!r}{did_you_mean(unknown[0], known)}; known: {sorted(known)}")
    try:
        return kind(**values)
    except SettingError as error:
        raise SettingError(f"[{section}] {error}") from None


class Sections(Protocol):
    """Where a spec's [model] and [training] sections arrive from (a data.spec.Spec)."""

    model: dict[str, Any]
    training: dict[str, Any]

    def of_kind(self, kind: str) -> Any: ...


def resolve(spec: Sections, model_flags: dict[str, Any], training_flags: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Explicit flags override the spec's sections, which override the defaults; every value checked here, before
    any data is read."""
    model = _build(ModelConfig, "model", {**spec.model, **model_flags})
    model.check_for(len(spec.of_kind("sequence")))
    return model, _build(TrainConfig, "training", {**spec.training, **training_flags})
