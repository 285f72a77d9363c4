"""The command line's option tables. A setting's flag takes its default and its range (or choices) from config.py,
where the config object checks the same values, so a flag and a spec key accept exactly the same things; only the
help text is written here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import click

from din_runtime.commands import from_renamed, given, renamed_flag

from ..config import DROPOUT_BY_VARIANT, SYNTHETIC_MIN_SAMPLES, SYNTHETIC_SAMPLES, Accepts, ModelConfig, SettingError, TrainConfig, accepts_of
from ..data.source import DataFlags

FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
BUNDLE = click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
DEFAULT_MODELS_DIR = Path("models")
DATA_KEYS = ("data", "log", "items", "users", "valid", "test", "spec", "samples")
# CLI parameter -> ModelConfig / TrainConfig field; only flags given on the command line override the spec.
MODEL_FLAGS = {"variant": "variant", "embedding_dim": "embedding_dim", "attention_hidden": "attention_hidden",
               "attention_activation": "attention_activation", "attention_weighting": "attention_weighting",
               "mlp_hidden": "mlp_hidden", "mlp_activation": "mlp_activation", "dropout": "dropout", "batch_norm": "batch_norm",
               "base_pooling": "base_pooling", "encoder_heads": "encoder_heads", "encoder_layers": "encoder_layers",
               "recency": "recency", "auxiliary_weight": "auxiliary_weight"}
TRAINING_FLAGS = {name: name for name in ("epochs", "batch_size", "learning_rate", "patience", "seed", "embedding_l2", "lr_schedule",
                                          "warmup_steps", "epoch_samples", "augmentation", "augmentation_rate", "device", "calibration")}


def options(decorators: list[Callable]) -> Callable:
    """Apply a table of option decorators in the order listed."""
    def apply(function: Callable) -> Callable:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return apply


def click_type(accepts: Accepts) -> click.ParamType:
    """The click type that accepts what the setting accepts."""
    if accepts.choices is not None:
        return click.Choice(accepts.choices)
    if accepts.kind is int:
        return click.IntRange(min=accepts.low, max=accepts.high, min_open=accepts.low_open, max_open=accepts.high_open)
    if accepts.kind is float:
        return click.FloatRange(min=accepts.low, max=accepts.high, min_open=accepts.low_open, max_open=accepts.high_open)
    raise TypeError(f"no click type for {accepts.kind}")


def _layers(accepts: Accepts) -> Callable[[click.Context, click.Parameter, str | None], tuple[int, ...] | None]:
    """A callback reading comma-separated layer sizes ("80,40") and checking them as the config does."""
    def read(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        try:
            sizes = [int(part) for part in value.split(",") if part.strip()]
            return accepts.check("sizes", sizes)
        except (ValueError, SettingError):
            raise click.BadParameter(f"expected comma-separated layer sizes like 80,40, each {accepts.low:g} or more, not {value!r}") from None
    return read


def setting(config: type, name: str, *declarations: str, help: str, **extra: Any) -> Callable:
    """The option of a config setting: its flag (--name-with-dashes unless `declarations` say otherwise), its
    default and its type from the config field."""
    entry = next(f for f in fields(config) if f.name == name)
    accepts: Accepts = entry.metadata["accepts"]
    default = entry.default if entry.default is not MISSING else None
    declared = declarations or (f"--{name.replace('_', '-')}",)
    if accepts.kind is bool:
        return click.option(*declared, name, is_flag=True, help=help, **extra)
    if accepts.layers:
        return click.option(*declared, name, default=",".join(map(str, default)), show_default=True, callback=_layers(accepts), help=help,
                            **extra)
    return click.option(*declared, name, type=click_type(accepts), default=default, show_default=default is not None, help=help, **extra)


def key_values(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE options as a dict; anything else is a usage error naming the flag."""
    pairs = {}
    for value in values:
        key, separator, setting_value = value.partition("=")
        if not separator or not key.strip():
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", ctx=ctx, param=param)
        pairs[key.strip()] = setting_value
    return pairs


def vocabulary_caps(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str | None, int]:
    """--max-vocabulary N (every categorical) or FEATURE=N (one), as {None or FEATURE: N}."""
    caps: dict[str | None, int] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            cap = int(number)
        except ValueError:
            cap = 0
        if cap < 1:
            raise click.BadParameter(f"expected N or FEATURE=N with N a positive integer, not {value!r}")
        caps[name or None] = cap
    return caps


DATA_OPTIONS = [
    click.option("--data", type=click.Path(exists=True, path_type=Path),
                 help="Training sample table (.csv, .tsv or .parquet), or a folder `prepare` wrote (its train, valid and test "
                      "tables and spec.toml, either layout). Without it (and --log), the built-in synthetic data."),
    click.option("--log", help="A behaviour log instead of --data: runs `prepare` with --spec as the recipe, then uses its output."),
    click.option("--items", help="Item attribute table for --log."),
    click.option("--users", help="User attribute table for --log."),
    click.option("--valid", type=FILE, help="Validation table; when absent, 10% of --data is held out for it."),
    click.option("--test", type=FILE, help="Test table; when absent, 10% of --data is held out for it."),
    click.option("--spec", type=FILE, help="Feature spec (TOML; a recipe with --log). Required with --data or --log; "
                                           "its [model] and [training] sections set defaults that flags override."),
    click.option("--samples", type=click.IntRange(min=SYNTHETIC_MIN_SAMPLES), default=SYNTHETIC_SAMPLES, show_default=True,
                 help="Rows of built-in synthetic data to generate (without --data or --log)."),
]
MODEL_OPTIONS = [
    setting(ModelConfig, "variant", "--model", help="din: target attention over the history (the local activation unit); base: mean "
            "or sum pooling (the paper's BaseModel); din-seq: a Transformer encoder over the behaviours, then target attention; "
            "dien: a GRU interest extractor, then AUGRU gated by target attention; bst: a Transformer over the behaviours and "
            "the candidate together."),
    setting(ModelConfig, "embedding_dim", help="Embedding size of every categorical feature."),
    setting(ModelConfig, "attention_hidden", help="Hidden sizes of the local activation unit's MLP."),
    setting(ModelConfig, "attention_activation", help="Activation inside the local activation unit."),
    setting(ModelConfig, "attention_weighting", help="raw: the unnormalised weights of the paper; softmax: normalised over the "
                                                     "unpadded behaviours."),
    setting(ModelConfig, "mlp_hidden", help="Hidden sizes of the final MLP."),
    setting(ModelConfig, "mlp_activation", callback=from_renamed, help="Activation of the final MLP."),
    renamed_flag("--activation", "--mlp-activation", "mlp_activation", type=click_type(accepts_of(ModelConfig, "mlp_activation"))),
    setting(ModelConfig, "dropout", help="Dropout after each final-MLP layer.  [default: "
            + "".join(f"{rate:g} for {variant}, " for variant, rate in DROPOUT_BY_VARIANT.items()) + "0 otherwise]"),
    setting(ModelConfig, "batch_norm", help="Batch normalisation in the final MLP."),
    setting(ModelConfig, "base_pooling", help="Pooling of --model base."),
    setting(ModelConfig, "encoder_heads", help="Attention heads of din-seq's and bst's self-attention (they must divide "
                                               "embedding-dim x sequences)."),
    setting(ModelConfig, "encoder_layers", help="Self-attention layers of din-seq and bst."),
    setting(ModelConfig, "auxiliary_weight", help="dien: weight of the auxiliary next-behaviour loss (0: none)."),
    setting(ModelConfig, "recency", help="position: each behaviour's distance back from the most recent (log2 buckets) as an "
                                         "embedding the attention sees; none: blind to order. Where the spec has a times "
                                         "feature, each behaviour's age is added too, either way."),
]
TRAINING_OPTIONS = [
    setting(TrainConfig, "epochs", help="Most epochs to train (0 only with --warm-start: the parent re-exported on the new vocabularies)."),
    setting(TrainConfig, "patience", help="Stop after this many epochs without a better validation AUC; the best epoch is kept."),
    setting(TrainConfig, "batch_size", help="Mini-batch size (over all processes)."),
    setting(TrainConfig, "learning_rate", help="Adam learning rate."),
    setting(TrainConfig, "lr_schedule", help="Learning rate over the run's steps after warm-up: constant, or cosine decay to zero at "
                                             "the last epoch's end."),
    setting(TrainConfig, "warmup_steps", help="Optimizer steps of linear learning-rate warm-up from zero."),
    setting(TrainConfig, "epoch_samples", help="Training samples per epoch, a fresh random draw each epoch, so a large log is validated "
                                               "(and early stopping checked) every so many samples; 0: the whole training split."),
    setting(TrainConfig, "augmentation", help="Behaviour-sequence augmentation in training: crop keeps a random number of the most "
                                              "recent behaviours of a history (with probability --augmentation-rate); mask drops each "
                                              "behaviour with that probability."),
    setting(TrainConfig, "augmentation_rate", help="Probability of --augmentation per history (crop) or per behaviour (mask)."),
    setting(TrainConfig, "device", help="Where training runs: auto takes CUDA when torch sees a GPU, else the CPU; cuda without a GPU "
                                        "is an error."),
    setting(TrainConfig, "embedding_l2", help="Mini-batch aware L2 on the embedding rows present in each batch (the DIN paper's "
                                              "regulariser)."),
    setting(TrainConfig, "seed", help="Seed for data split, initialisation and shuffling."),
    setting(TrainConfig, "calibration", help="Post-hoc calibration fitted on validation after training and exported in the graphs "
                                             "(after the exact correction for [sampling] keep_negatives): platt (two parameters), "
                                             "isotonic, or none."),
]


def explicit(ctx: click.Context, params: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """The settings of `mapping` given on the command line, by their config field names."""
    chosen = given(ctx, tuple(mapping))
    return {field: params[name] for name, field in mapping.items() if name in chosen}


def data_flags(ctx: click.Context, params: dict[str, Any]) -> DataFlags:
    """The data options as data.source.DataFlags, with which were given."""
    return DataFlags(**{key: params[key] for key in DATA_KEYS}, given=frozenset(given(ctx, DATA_KEYS)))


def only_with(ctx: click.Context, names: tuple[str, ...], condition: bool, requirement: str) -> None:
    """Refuse, in one line naming the flag, any of `names` given where `condition` does not hold."""
    for name in sorted(given(ctx, names)):
        if not condition:
            raise click.UsageError(f"--{name.replace('_', '-')} applies to {requirement}")
