"""The din-export command line: prepare, train-and-export, tune, report, export, verify, inspect, triton, compare
(and datasets, which fetches public data sets)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from din_runtime.commands import OneLineErrors

from .config import (
    ACTIVATIONS,
    AUGMENTATIONS,
    BASE_POOLINGS,
    CALIBRATION_BINS,
    CALIBRATIONS,
    COMPARE_MAX_AUC_DROP,
    COMPARE_RESAMPLES,
    DEFAULT_MAX_AUC_DROP,
    DEVICES,
    ENGINES,
    FORMS,
    LAYOUTS,
    PRECISIONS,
    PREPARE_CHUNK_ROWS,
    PREPARE_MEMORY_LIMIT,
    SCHEDULES,
    SYNTHETIC_SAMPLES,
    VARIANTS,
    WEIGHTINGS,
    ModelConfig,
    TrainConfig,
    TuneConfig,
)

EXPLANATION_FILE = "explanation.png"  # report --explain's figure, by default in the bundle
MODEL_DEFAULTS, TRAINING_DEFAULTS, TUNE_DEFAULTS = ModelConfig(), TrainConfig(), TuneConfig()  # the one place defaults live; flags show them
DEFAULT_MODELS_DIR = Path("models")
METRICS = {"auc": "AUC", "gauc": "GAUC", "logloss": "logloss", "accuracy": "accuracy", "ece": "ECE",
           "calibration_ratio": "ratio"}  # as printed, in this order; ratio: mean predicted / observed click rate
# CLI parameter -> ModelConfig / TrainConfig field; only flags given on the command line override the spec.
MODEL_FLAGS = {"variant": "variant", "embedding_dim": "embedding_dim", "attention_hidden": "attention_hidden",
               "attention_activation": "attention_activation", "attention_weighting": "attention_weighting",
               "mlp_hidden": "mlp_hidden", "activation": "mlp_activation", "dropout": "dropout", "batch_norm": "batch_norm",
               "base_pooling": "base_pooling", "encoder_heads": "encoder_heads", "encoder_layers": "encoder_layers"}
TRAINING_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "learning_rate": "learning_rate", "patience": "patience",
                  "seed": "seed", "embedding_l2": "embedding_l2", "lr_schedule": "lr_schedule", "warmup_steps": "warmup_steps",
                  "epoch_samples": "epoch_samples",
                  "augmentation": "augmentation", "augmentation_rate": "augmentation_rate", "device": "device",
                  "calibration": "calibration"}


def _sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer sizes like 80,40, not {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"expected positive layer sizes, not {value!r}")
    return sizes


def _pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE options as a dict; anything else is a usage error naming the flag."""
    pairs = {}
    for value in values:
        key, separator, setting = value.partition("=")
        if not separator or not key.strip():
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", ctx=ctx, param=param)
        pairs[key.strip()] = setting
    return pairs


def _caps(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str | None, int]:
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


def _options(options: list[Callable]) -> Callable:
    def apply(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function
    return apply


FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
BUNDLE = click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
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
    click.option("--samples", type=click.IntRange(min=100), default=SYNTHETIC_SAMPLES, show_default=True,
                 help="Rows of built-in synthetic data to generate (without --data or --log)."),
]
MODEL_OPTIONS = [
    click.option("--model", "variant", type=click.Choice(VARIANTS), default=MODEL_DEFAULTS.variant, show_default=True,
                 help="din: target attention over the history (the local activation unit); base: mean or sum pooling "
                      "(the paper's BaseModel); din-seq: a Transformer encoder over the behaviours, then target attention."),
    click.option("--embedding-dim", type=click.IntRange(min=1), default=MODEL_DEFAULTS.embedding_dim, show_default=True,
                 help="Embedding size of every categorical feature."),
    click.option("--attention-hidden", default=",".join(map(str, MODEL_DEFAULTS.attention_hidden)), show_default=True,
                 callback=_sizes, help="Hidden sizes of the local activation unit's MLP."),
    click.option("--attention-activation", type=click.Choice(ACTIVATIONS), default=MODEL_DEFAULTS.attention_activation, show_default=True,
                 help="Activation inside the local activation unit."),
    click.option("--attention-weighting", type=click.Choice(WEIGHTINGS), default=MODEL_DEFAULTS.attention_weighting, show_default=True,
                 help="raw: the unnormalised weights of the paper; softmax: normalised over the unpadded behaviours."),
    click.option("--mlp-hidden", default=",".join(map(str, MODEL_DEFAULTS.mlp_hidden)), show_default=True,
                 callback=_sizes, help="Hidden sizes of the final MLP."),
    click.option("--activation", type=click.Choice(ACTIVATIONS), default=MODEL_DEFAULTS.mlp_activation, show_default=True,
                 help="Activation of the final MLP."),
    click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=MODEL_DEFAULTS.dropout, show_default=True,
                 help="Dropout after each final-MLP layer."),
    click.option("--batch-norm", is_flag=True, help="Batch normalisation in the final MLP."),
    click.option("--base-pooling", type=click.Choice(BASE_POOLINGS), default=MODEL_DEFAULTS.base_pooling, show_default=True,
                 help="Pooling of --model base."),
    click.option("--encoder-heads", type=click.IntRange(min=1), default=MODEL_DEFAULTS.encoder_heads, show_default=True,
                 help="Attention heads of din-seq's encoder."),
    click.option("--encoder-layers", type=click.IntRange(min=1), default=MODEL_DEFAULTS.encoder_layers, show_default=True,
                 help="Layers of din-seq's encoder."),
]
TRAINING_OPTIONS = [
    click.option("--epochs", type=click.IntRange(min=0), default=TRAINING_DEFAULTS.epochs, show_default=True,
                 help="Most epochs to train (0 only with --warm-start: the parent re-exported on the new vocabularies)."),
    click.option("--patience", type=click.IntRange(min=1), default=TRAINING_DEFAULTS.patience, show_default=True,
                 help="Stop after this many epochs without a better validation AUC; the best epoch is kept."),
    click.option("--batch-size", type=click.IntRange(min=2), default=TRAINING_DEFAULTS.batch_size, show_default=True,
                 help="Mini-batch size (over all processes)."),
    click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=TRAINING_DEFAULTS.learning_rate, show_default=True,
                 help="Adam learning rate."),
    click.option("--lr-schedule", type=click.Choice(SCHEDULES), default=TRAINING_DEFAULTS.lr_schedule, show_default=True,
                 help="Learning rate over the run's steps after warm-up: constant, or cosine decay to zero at the last epoch's end."),
    click.option("--warmup-steps", type=click.IntRange(min=0), default=TRAINING_DEFAULTS.warmup_steps, show_default=True,
                 help="Optimizer steps of linear learning-rate warm-up from zero."),
    click.option("--epoch-samples", type=click.IntRange(min=0), default=TRAINING_DEFAULTS.epoch_samples, show_default=True,
                 help="Training samples per epoch, a fresh random draw each epoch, so a large log is validated (and early "
                      "stopping checked) every so many samples; 0: the whole training split."),
    click.option("--augmentation", type=click.Choice(AUGMENTATIONS), default=TRAINING_DEFAULTS.augmentation, show_default=True,
                 help="Behaviour-sequence augmentation in training: crop keeps a random number of the most recent behaviours "
                      "of a history (with probability --augmentation-rate); mask drops each behaviour with that probability."),
    click.option("--augmentation-rate", type=click.FloatRange(0, 1, max_open=True), default=TRAINING_DEFAULTS.augmentation_rate,
                 show_default=True, help="Probability of --augmentation per history (crop) or per behaviour (mask)."),
    click.option("--device", type=click.Choice(DEVICES), default=TRAINING_DEFAULTS.device, show_default=True,
                 help="Where training runs: auto takes CUDA when torch sees a GPU, else the CPU; cuda without a GPU is an error."),
    click.option("--embedding-l2", type=click.FloatRange(min=0), default=TRAINING_DEFAULTS.embedding_l2, show_default=True,
                 help="Mini-batch aware L2 on the embedding rows present in each batch (the DIN paper's regulariser)."),
    click.option("--seed", type=int, default=TRAINING_DEFAULTS.seed, show_default=True, help="Seed for data split, initialisation and shuffling."),
    click.option("--calibration", type=click.Choice(CALIBRATIONS), default=TRAINING_DEFAULTS.calibration, show_default=True,
                 help="Post-hoc calibration fitted on validation after training and exported in the graphs (after the exact "
                      "correction for [sampling] keep_negatives): platt (two parameters), isotonic, or none."),
]


@click.group(cls=OneLineErrors)
@click.version_option(package_name="din-export")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def main(debug: bool) -> None:
    """Train a Deep Interest Network, export it to ONNX, serve it with din_runtime."""


@main.command("prepare")
@click.option("--spec", type=FILE, required=True,
              help="Recipe (TOML): the feature spec plus [log], [items], [users], [sampling] and [split] sections.")
@click.option("--log", required=True, help="Interaction log: .csv, .tsv (also RecBole's .inter), .parquet, or a glob or folder of Parquet parts.")
@click.option("--items", help="Item attribute table, joined on [items] key.")
@click.option("--users", help="User attribute table, joined on [users] key.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write train.parquet, valid.parquet, test.parquet, spec.toml and prepare.json into (replaced only once complete).")
@click.option("--chunk-rows", type=click.IntRange(min=1000), default=PREPARE_CHUNK_ROWS, show_default=True,
              help="Samples built and written per chunk; bounds memory.")
@click.option("--layout", type=click.Choice(LAYOUTS), default=LAYOUTS[0], show_default=True,
              help="inline: each sample's histories as list columns; reference: each user's behaviours once in "
                   "sequences.parquet, samples pointing into it (train-and-export reads both).")
@click.option("--memory-limit", default=PREPARE_MEMORY_LIMIT, show_default=True,
              help="Working memory for sorting the log (DuckDB's, e.g. 500MB, 4GB); past it the sort spills to disk beside --out.")
@click.option("--since", help="Only events at or after this time become samples (a number in the time column's units, or an "
                              "ISO date for a timestamp column); histories still reach back into every earlier event.")
@click.option("--engine", type=click.Choice(ENGINES), default=ENGINES[0], show_default=True,
              help="duckdb: this machine, out of core; spark: the same recipe as a Spark job (the `spark` extra and a Java "
                   "runtime), identical output, for logs past one machine.")
@click.option("--spark-master", default="local[*]", show_default=True, help="--engine spark: the Spark master URL (local[N], "
                                                                             "spark://HOST:7077, yarn, k8s://...).")
@click.option("--spark-conf", multiple=True, metavar="KEY=VALUE", callback=_pairs, help="--engine spark: a Spark setting (repeatable), "
                                                                                        "e.g. spark.executor.memory=8g.")
@click.pass_context
def prepare_command(ctx: click.Context, spec: Path, log: str, items: str | None, users: str | None, out: Path, chunk_rows: int,
                    layout: str, memory_limit: str, since: str | None, engine: str, spark_master: str, spark_conf: dict[str, str]) -> None:
    """Turn a behaviour log (and item and user tables) into train, valid and test sample tables for train-and-export."""
    from .data.prepare import Sources, prepare

    sources = Sources(Path(log), items and Path(items), users and Path(users))
    if engine == "spark":
        for flag in sorted(_given(ctx, ("chunk_rows", "memory_limit"))):
            raise click.UsageError(f"--{flag.replace('_', '-')} applies to --engine duckdb; Spark takes --spark-conf")
        summary = _prepare_on_spark(spec, sources, out, layout, since, spark_master, spark_conf)
    else:
        for flag in sorted(_given(ctx, ("spark_master", "spark_conf"))):
            raise click.UsageError(f"--{flag.replace('_', '-')} applies to --engine spark")
        summary = prepare(spec, sources, out, chunk_rows, layout, memory_limit, since=since)
    rows = summary["rows"]
    click.echo(f"prepared {summary['events']} events of {summary['users']} users into {out}: "
               f"{rows['train']} train, {rows['valid']} valid, {rows['test']} test samples "
               f"({summary['negatives_drawn']} negatives drawn) in {summary['seconds']:.1f} s")


DATA_KEYS = ("data", "log", "items", "users", "valid", "test", "spec", "samples")


def _prepare_on_spark(recipe: Path, sources: Any, out: Path, layout: str, since: str | None, master: str,
                      conf: dict[str, str]) -> dict[str, Any]:
    try:
        from .data import spark
    except ImportError:  # pragma: no cover - the extra's absence
        raise click.UsageError("--engine spark needs the spark extra: pip install 'din-export[spark]' (and a Java 17 runtime)") from None
    spark.check_supported(recipe, sources, layout)
    session = spark.session(master, conf)
    try:
        return spark.prepare(session, recipe, sources, out, layout, since)
    finally:
        session.stop()


def check_data_flags(given: set[str]) -> None:
    """The data options that only make sense together, each combination refused in one line naming the flags."""
    def refuse(message: str) -> None:
        raise click.UsageError(message)

    if "data" in given and "log" in given:
        refuse("give --data (a sample table) or --log (a behaviour log), not both")
    for flag in ("items", "users"):
        if flag in given and "log" not in given:
            refuse(f"--{flag} joins an attribute table to --log (a behaviour log to prepare); without --log there is no log to "
                   "join it to (a sample table given with --data already holds its attributes)")
    for flag in ("valid", "test"):
        if flag in given and "log" in given:
            refuse(f"--{flag} applies to --data; a log given with --log is split by the recipe's [split] section")
        if flag in given and "data" not in given:
            refuse(f"--{flag} needs --data, the training table it belongs with")
    if "samples" in given and ("data" in given or "log" in given):
        refuse("--samples sets the size of the built-in data; with --data or --log the data is yours")


def _data_source(scratch: Path, data: Path | None, log: str | None, items: str | None, users: str | None,
                 valid: Path | None, test: Path | None, spec: Path | None, samples: int,
                 spec_known: bool = False) -> tuple[Any, Path | None, str]:
    """(DataSource, spec path, name for default output) from the data options; a log is prepared into scratch.
    spec_known: a sample table may come without --spec (a warm start's parent has one)."""
    from .data.dataset import DataSource
    from .data.prepare import SPEC_FILE, Sources, prepare

    if data is not None and data.is_dir():  # a prepared folder: its splits and the spec prepare wrote
        if not (data / "train.parquet").exists():  # a file, or a folder of Parquet parts (prepare --engine spark)
            raise click.UsageError(f"--data {data}: a folder must be one `din-export prepare` wrote (train.parquet, valid.parquet, "
                                   "test.parquet, spec.toml)")
        folder = data
        data, valid, test = folder / "train.parquet", valid or folder / "valid.parquet", test or folder / "test.parquet"
        spec = spec or folder / SPEC_FILE
        return DataSource(data=data, valid=valid, test=test), spec, folder.name
    if (log is not None or (data is not None and not spec_known)) and spec is None:
        raise click.UsageError("--data and --log need --spec, the TOML file that names the label and features")
    if log is None:
        source = DataSource(data=data, valid=valid, test=test, synthetic_samples=samples)
        return source, spec, source.name
    prepared = scratch / "samples"
    prepare(spec, Sources(Path(log), items and Path(items), users and Path(users)), prepared)
    return (DataSource(data=prepared / "train.parquet", valid=prepared / "valid.parquet", test=prepared / "test.parquet"),
            prepared / SPEC_FILE, Path(log).stem)


def _given(ctx: click.Context, names: tuple[str, ...]) -> set[str]:
    """The options of `names` given on the command line (not left at their defaults)."""
    return {name for name in names if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}


def _explicit(ctx: click.Context, params: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    given = _given(ctx, tuple(mapping))
    return {field: params[name] for name, field in mapping.items() if name in given}


@main.command("train-and-export")
@_options(DATA_OPTIONS)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Bundle folder to write (model.onnx, manifest.json, weights.pt, training.png). Default: models/<data>-<variant>. "
                   "An existing bundle there is replaced only once the new one is complete.")
@_options(MODEL_OPTIONS)
@_options(TRAINING_OPTIONS)
@click.option("--graph", type=click.Choice(FORMS), default=FORMS[0], show_default=True,
              help="Exported graph: folded (the attention unit's first layer folded for inference) or plain.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last per-epoch checkpoint (same data and settings).")
@click.option("--warm-start", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A bundle to continue: its vocabularies extended (every known key keeps its row), its weights copied, its "
                   "architecture and spec kept; training settings not given default to the continuation schedule.")
@click.option("--max-vocabulary", multiple=True, metavar="[FEATURE=]N", callback=_caps,
              help="Most keys a vocabulary may hold: N for every categorical feature, FEATURE=N for one (repeatable); the most "
                   "frequent keys are kept, the rest map to out-of-vocabulary. Overrides the spec's max_vocabulary.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.pass_context
def train_and_export_command(ctx: click.Context, **params: Any) -> None:
    """Train a DIN on a sample table, a behaviour log or the built-in data; export verified ONNX; write a model bundle.

    Under `torchrun --nproc-per-node N`, training runs data-parallel (gloo on CPU, NCCL on GPU); rank 0 writes the bundle.
    """
    from .config import WARM_START_TRAINING, resolve
    from .data.spec import load_spec, with_caps
    from .data.synthetic import SPEC_PATH
    from .pipeline import train_and_export
    from .warm_start import check_architecture, load_parent

    check_data_flags(_given(ctx, DATA_KEYS))
    parent = load_parent(params["warm_start"]) if params["warm_start"] else None
    with tempfile.TemporaryDirectory(prefix="din-export-") as scratch:
        source, spec_path, name = _data_source(Path(scratch), *(params[k] for k in DATA_KEYS), spec_known=parent is not None)
        spec = load_spec(spec_path) if spec_path else parent.bundle.spec if parent else load_spec(SPEC_PATH)
        spec = with_caps(spec, params["max_vocabulary"]) if params["max_vocabulary"] else spec
        model_flags = _explicit(ctx, params, MODEL_FLAGS)
        training_flags = {**_explicit(ctx, params, TRAINING_FLAGS), "progress": not params["quiet"]}
        if parent is not None:  # the parent's architecture; a continuation's own schedule where none is given
            check_architecture(parent.model_config, {**spec.model, **model_flags})
            model_flags = parent.model_config.to_dict()
            training_flags = {**{k: v for k, v in WARM_START_TRAINING.items() if k not in spec.training}, **training_flags}
        model_config, train_config = resolve(spec, model_flags, training_flags)
        out = params["out"] or DEFAULT_MODELS_DIR / f"{name}-{model_config.variant}"
        manifest = train_and_export(source, out, spec, model_config, train_config, resume=params["resume"], graph=params["graph"],
                                    warm_start=parent)
    if manifest is None:  # another rank of a torchrun job
        return
    click.echo(f"bundle written to {out}")
    click.echo(_summary(manifest))
    seconds = manifest["seconds"]
    rest = {name: value for name, value in seconds.items() if name != "train"}
    click.echo(f"time: training {seconds['train']:.1f} s, everything else {sum(rest.values()):.1f} s ("
               + ", ".join(f"{name} {value:.1f}" for name, value in rest.items()) + ")")


def _gauc_note(row: dict[str, Any]) -> str:
    """How many users GAUC averaged over, or why it is undefined."""
    from .training.metrics import MIN_GAUC_USERS

    users = row.get("gauc_users")
    if users is None:
        return ""
    if row.get("gauc") is None:
        return f"GAUC undefined: only {users} user(s) have both labels (it needs {MIN_GAUC_USERS})"
    return f"GAUC over {users} users"


def _metrics_text(row: dict[str, Any]) -> str:
    """'auc 0.8608, gauc 0.8568, ...': the metrics a split has (GAUC may be undefined)."""
    return ", ".join(f"{k} {row[k]:.4f}" for k in METRICS if row.get(k) is not None)


def _metrics_header(first: str, width: int) -> str:
    return f"{first:<{width}}" + "".join(f"{label:>10}" for label in METRICS.values())


def _metrics_row(first: str, width: int, row: dict[str, Any]) -> str:
    return f"{first:<{width}}" + "".join(f"{row[k]:>10.4f}" if row.get(k) is not None else f"{'-':>10}" for k in METRICS)


def _calibration_text(manifest: dict[str, Any]) -> str:
    """'calibration platt after the correction for keep_negatives 0.1': how the served probability is made."""
    fit = manifest.get("calibration") or {"method": "none", "keep_negatives": 1.0}
    correction = f" after the exact correction for keep_negatives {fit['keep_negatives']:g}" if fit["keep_negatives"] != 1 else ""
    return f"calibration {fit['method']}{correction}"


def _summary(manifest: dict[str, Any]) -> str:
    test = manifest["metrics"]["test"]
    shown = _metrics_text(test)
    note = _gauc_note(test)
    return (f"test: {shown}{f' ({note})' if note else ''} (best epoch {manifest['metrics']['best_epoch']}); "
            f"{_calibration_text(manifest)}; ONNX vs PyTorch max |diff| {manifest['onnx']['parity']['max_abs_diff']:.2e}")


@main.command("tune")
@_options(DATA_OPTIONS)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("tuned-spec.toml"), show_default=True,
              help="Where to write the best spec: the input spec plus [model] and [training] with the best settings.")
@click.option("--trials", type=click.IntRange(min=1), default=TUNE_DEFAULTS.trials, show_default=True, help="Trial budget.")
@click.option("--epochs", type=click.IntRange(min=1), default=TUNE_DEFAULTS.epochs, show_default=True,
              help="Most epochs per trial; weak trials are pruned earlier.")
@click.option("--timeout", type=click.FloatRange(min=1), default=TUNE_DEFAULTS.timeout, help="Stop starting trials after this many seconds.")
@click.option("--model", "variant", type=click.Choice(VARIANTS), default=MODEL_DEFAULTS.variant, show_default=True, help="Variant to tune.")
@click.option("--seed", type=int, default=TUNE_DEFAULTS.seed, show_default=True, help="Seed of the sampler, the split and every trial.")
@click.pass_context
def tune_command(ctx: click.Context, out: Path, trials: int, epochs: int, timeout: float | None, variant: str, seed: int,
                 **params: Any) -> None:
    """Search learning rate, embedding size, MLP sizes, dropout and regularisation with Optuna (pruning bad trials)."""
    from .data.spec import load_spec
    from .data.synthetic import SPEC_PATH
    from .training.tune import tune

    check_data_flags(_given(ctx, DATA_KEYS))
    with tempfile.TemporaryDirectory(prefix="din-export-") as scratch:
        source, spec_path, _ = _data_source(Path(scratch), *(params[k] for k in DATA_KEYS))
        summary = tune(source, load_spec(spec_path or SPEC_PATH), out, TuneConfig(trials, epochs, seed, timeout), variant)
    click.echo(f"best validation AUC {summary['best_valid_auc']:.4f} (trial {summary['best_trial']}; {summary['complete']} complete, "
               f"{summary['pruned']} pruned of {summary['trials']}); best spec written to {out}")


@main.command("report")
@BUNDLE
@click.option("--explain", type=FILE, help="Also draw the attention weights of the first row's behaviours for the candidates of "
                                          "the table's first --rows rows (DIN's explanation; din and din-seq bundles).")
@click.option("--rows", type=click.IntRange(min=1, max=50), default=5, show_default=True, help="Candidates in the --explain figure.")
@click.option("--explain-plot", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Where --explain writes its PNG [default: BUNDLE/{EXPLANATION_FILE}].")
@click.pass_context
def report_command(ctx: click.Context, bundle: Path, explain: Path | None, rows: int, explain_plot: Path | None) -> None:
    """Print a bundle's metrics (calibration too), its per-epoch history and the paths of its plots; with --explain,
    draw the attention weights of a user's behaviours for a few candidates."""
    for flag in sorted(_given(ctx, ("rows", "explain_plot"))):
        if explain is None:
            raise click.UsageError(f"--{flag.replace('_', '-')} applies to --explain TABLE")
    from din_runtime.manifest import read_manifest

    manifest = read_manifest(bundle)
    metrics, model, training = manifest["metrics"], manifest["model"], manifest["training"]
    speed = training.get("samples_per_second")
    speed_text = f"{speed:,.0f} training samples/s" if speed is not None else "no training steps"
    click.echo(f"bundle {bundle}: {model['variant']}, data {manifest['data']['source']}, "
               f"{speed_text} on {training.get('processes', 1)} process(es)")
    generation = (manifest.get("lineage") or {}).get("generation")
    if generation:
        parent = manifest["lineage"]["parent"]
        click.echo(f"warm-started (generation {generation}) from {parent['bundle']} (model sha256 {str(parent['model_sha256'])[:12]}, "
                   f"written {parent['created']})")
    click.echo(f"{'split':<6}{'rows':>8}" + _metrics_header("", 0))
    for split in ("valid", "test"):
        row = metrics[split]
        note = _gauc_note(row)
        click.echo(f"{split:<6}{row['rows']:>8}" + _metrics_row("", 0, row) + (f"   {note}" if note else ""))
    click.echo(f"{_calibration_text(manifest)}; ECE over {CALIBRATION_BINS} equal-mass bins; ratio: mean predicted / observed click rate")
    click.echo(f"{'epoch':<6}{'train loss':>12}{'valid AUC':>11}{'valid logloss':>15}")
    for entry in metrics["history"]:
        marker = "  <- best" if entry["epoch"] == metrics["best_epoch"] else ""
        loss = f"{entry['train_loss']:>12.4f}" if entry["train_loss"] is not None else f"{'(parent)':>12}"  # a warm start's epoch 0
        click.echo(f"{entry['epoch']:<6}{loss}{entry['valid_auc']:>11.4f}{entry['valid_logloss']:>15.4f}{marker}")
    click.echo(f"plot: {bundle / manifest['plot']}" if manifest["plot"] else "plot: none in this bundle")
    click.echo(f"reliability diagram (test): {bundle / manifest['reliability_plot']}" if manifest["reliability_plot"]
               else "reliability diagram: none in this bundle")
    if explain is not None:
        from .explanation import draw_explanation

        out = explain_plot or bundle / EXPLANATION_FILE
        shown = draw_explanation(bundle, explain, rows, out)
        click.echo(f"explanation of {shown} candidates for the first row's user: {out}")


@main.command("export")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Bundle folder to write.")
@click.option("--graph", type=click.Choice(FORMS), default=FORMS[0], show_default=True, help="folded (for inference) or plain.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="int8: ONNX Runtime dynamic quantisation; fp16: half precision for CUDA (float32 inputs and outputs). [default: fp32]")
@click.option("--variant", "old_precision", type=click.Choice(PRECISIONS), default=None, hidden=True,
              help="The name --precision had in 0.1.0; kept for one release.")
@click.option("--valid", type=FILE, help="Validation table to score a precision on (default: the bundle's own validation split).")
@click.option("--max-auc-drop", type=click.FloatRange(min=0), default=DEFAULT_MAX_AUC_DROP, show_default=True,
              help="Refuse a precision whose validation AUC is lower than float32's by more than this.")
@click.option("--force", is_flag=True, help="Keep a precision even past --max-auc-drop.")
@click.option("--optimize", is_flag=True, help="Save ONNX Runtime's basic (portable) offline optimisation of the graph.")
@click.pass_context
def export_command(ctx: click.Context, source: Path, out: Path, graph: str, precision: str | None, old_precision: str | None,
                   valid: Path | None, max_auc_drop: float, force: bool, optimize: bool) -> None:
    """Export a bundle folder or a weights.pt checkpoint again, without retraining: graph, precision, optimisation."""
    from .export.rebuild import export_bundle

    if precision is not None and old_precision is not None and precision != old_precision:
        raise click.UsageError(f"--precision {precision} and --variant {old_precision} disagree; give --precision alone")
    if old_precision is not None:
        click.echo("note: --variant is now --precision; --variant goes in the next release", err=True)
    precision = precision or old_precision or PRECISIONS[0]
    for flag in sorted(_given(ctx, ("valid", "max_auc_drop", "force"))):
        if precision == PRECISIONS[0]:
            raise click.UsageError(f"--{flag.replace('_', '-')} applies to --precision int8 or fp16 (the AUC check of a reduced "
                                   "precision); float32 has none")
    manifest = export_bundle(source, out, graph, precision, valid, max_auc_drop, force, optimize)
    onnx_info = manifest["onnx"]
    click.echo(f"bundle written to {out}: {graph} graph, {precision}; ONNX vs PyTorch max |diff| "
               f"{onnx_info['parity']['max_abs_diff']:.2e} (tolerance {onnx_info['parity']['atol']})")
    if onnx_info["precisions"]:
        click.echo(f"validation AUC: float32 {onnx_info['precisions']['fp32']['auc']:.4f}, "
                   f"{precision} {onnx_info['precisions'][precision]['auc']:.4f}")


@main.command("verify")
@BUNDLE
def verify_command(bundle: Path) -> None:
    """Check a bundle: output names, symbolic dimensions, output shapes, values against PyTorch over a grid of
    shapes, onnx.checker, and ONNX's reference evaluator against ONNX Runtime."""
    from .export.verify import verify_bundle

    report = verify_bundle(bundle)
    parity, reference = report["parity"], report["reference_evaluator"]
    click.echo(f"{bundle}: verified. outputs {report['outputs']}; inputs " +
               ", ".join(f"{i['name']}{i['dims']}" for i in report["inputs"]))
    click.echo(f"PyTorch parity over {len(parity['cases'])} shapes: max |diff| {parity['max_abs_diff']:.2e} <= {parity['atol']}; "
               f"onnx.checker: {report['checker']}; reference evaluator vs ONNX Runtime: max |diff| "
               f"{reference['max_abs_diff']:.2e} <= {reference['atol']}")


@main.command("inspect")
@BUNDLE
def inspect_command(bundle: Path) -> None:
    """Print a bundle's inputs, outputs, symbolic dimensions, opset, graph, precision, metrics, sizes and sha256."""
    from din_runtime.manifest import read_manifest, sha256_of

    manifest = read_manifest(bundle)
    onnx_info = manifest["onnx"]
    model_path = bundle / onnx_info["file"]
    click.echo(f"bundle {bundle}")
    click.echo(f"model: {manifest['model']['variant']}; graph {onnx_info['graph']}, precision "
               f"{onnx_info['precision']}, optimisation {onnx_info['optimization'] or 'none'}, opset {onnx_info['opset']}")
    for kind in ("inputs", "outputs"):
        for entry in onnx_info[kind]:
            click.echo(f"  {kind[:-1]:<7}{entry['name']:<20}{entry['dtype']:<9}{entry['dims']}")
    for split in ("valid", "test"):
        row = manifest["metrics"].get(split)
        if row:
            click.echo(f"{split}: {_metrics_text(row)}")
    click.echo(_calibration_text(manifest))
    for file in sorted(bundle.iterdir()):
        click.echo(f"  file {file.name:<16}{file.stat().st_size:>12,} bytes")
    actual = sha256_of(model_path) if model_path.is_file() else "missing"
    click.echo(f"sha256 {actual} ({'matches' if actual == onnx_info['sha256'] else 'DOES NOT MATCH'} the manifest)")


@main.command("triton")
@BUNDLE
@click.option("--repository", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Model repository folder (created if absent; other models in it are left alone).")
@click.option("--name", help="Model name in the repository (default: the bundle folder's name).")
@click.option("--gpu", is_flag=True, help="instance_group KIND_GPU (default KIND_CPU).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=4096, show_default=True, help="Triton's max_batch_size.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="ONNX Runtime intra-op threads per instance.")
@click.option("--raw-inputs", is_flag=True, help="The graph takes raw IDs and numbers and encodes them itself (vocabulary lookup, "
                                                 "fill, normalisation); histories come padded with a history_length input.")
def triton_command(bundle: Path, repository: Path, name: str | None, gpu: bool, max_batch_size: int, instances: int, threads: int,
                   raw_inputs: bool) -> None:
    """Write a Triton Inference Server model repository entry (config.pbtxt and 1/model.onnx) for a bundle."""
    from .export.triton import write_repository

    path = write_repository(bundle, repository, name, gpu, max_batch_size, instances, threads, raw_inputs=raw_inputs)
    click.echo(f"Triton model written to {path} ({'GPU' if gpu else 'CPU'}, max_batch_size {max_batch_size}"
               f"{', raw inputs' if raw_inputs else ''})")


@main.command("datasets")
@click.argument("name", type=click.Choice(["ml-100k"]))
@click.option("--to", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the data set's atomic files into (replaced only once complete).")
@click.option("--url", help="Where to download the archive from instead of its publisher (a mirror, or a file:// URL of a copy).")
@click.option("--md5", help="The archive's MD5 to check instead of the one its publisher gives (for a repackaged copy).")
def datasets_command(name: str, to: Path, url: str | None, md5: str | None) -> None:
    """Download a public data set, check its published checksum and write it as the atomic files the recipes in
    examples/ read (ml-100k: ml-100k.inter, ml-100k.item, ml-100k.user)."""
    from .data.datasets import DATASETS, download

    files = download(name, to, url, md5)
    click.echo(f"{name} written to {to}: " + ", ".join(f.name for f in files) + f" (cite: {DATASETS[name].citation})")


@main.command("compare")
@click.argument("old", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", type=FILE, required=True, help="Table to score with both (CSV, TSV or Parquet, either layout), e.g. "
                                                       "the newest window's test split.")
@click.option("--max-auc-drop", type=click.FloatRange(min=0), default=COMPARE_MAX_AUC_DROP, show_default=True,
              help="NEW fails when its AUC is below OLD's by more than this with 95% confidence (the whole interval "
                   "of the difference below -X).")
@click.option("--resamples", type=click.IntRange(min=100), default=COMPARE_RESAMPLES, show_default=True,
              help="Bootstrap resamples of the users.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
def compare_command(old: Path, new: Path, data: Path, max_auc_drop: float, resamples: int, seed: int, as_json: bool) -> None:
    """Score one table with two bundles through din_runtime; print AUC, GAUC, logloss and accuracy of each and the AUC
    difference with a 95% interval (paired bootstrap over users). Exit 0 when NEW is not worse than OLD by more than
    --max-auc-drop, 1 when it is, 2 on an error: a rollout script gates on it."""
    import json

    from .compare import compare

    result = compare(old, new, data, max_auc_drop, resamples, seed)
    if as_json:
        click.echo(json.dumps(result.to_dict(), allow_nan=False))
    else:
        click.echo(f"{result.rows:,} rows of {data}, {result.users:,} users")
        click.echo(_metrics_header("", 5))
        for name, row in (("old", result.old), ("new", result.new)):
            click.echo(_metrics_row(name, 5, row))
        low, high = result.interval
        click.echo(f"AUC new - old: {result.auc_difference:+.4f} (95% interval {low:+.4f} to {high:+.4f}; paired bootstrap over "
                   f"{result.users:,} users, {resamples} resamples)")
        verdict = "worse than" if result.worse else "not worse than"
        click.echo(f"NEW is {verdict} OLD by more than {max_auc_drop:g} AUC: exit {int(result.worse)}")
    if result.worse:
        raise SystemExit(1)


@main.command("evaluate")
@BUNDLE
@click.option("--data", type=FILE, required=True, help="Table to score (CSV, TSV or Parquet, either layout) with the label column.")
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="Also rank each positive row's item among this many sampled negatives: HR@K, NDCG@K (K 5, 10, 20) and MRR.")
@click.option("--items", type=FILE, help="Item table to draw --rank negatives from, a column per candidate feature "
                                         "[default: the bundle's item vocabulary].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --rank negatives.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write the reliability diagram (PNG) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_context
def evaluate_command(ctx: click.Context, bundle: Path, data: Path, rank: int | None, items: Path | None, seed: int,
                     plot: Path | None, as_json: bool) -> None:
    """Score a table with a bundle through din_runtime: AUC, GAUC, logloss, accuracy, ECE and calibration ratio;
    with --rank N, HR@K, NDCG@K and MRR of each positive among N sampled negatives."""
    import json

    from .evaluation import evaluate_bundle

    for flag in sorted(_given(ctx, ("items", "seed"))):
        if rank is None:
            raise click.UsageError(f"--{flag} applies to --rank N")
    result = evaluate_bundle(bundle, data, rank, items, seed, plot)
    if as_json:
        click.echo(json.dumps(result, allow_nan=False))
        return
    click.echo(f"{result['rows']:,} rows of {data}" + (f"; {_gauc_note(result)}" if _gauc_note(result) else ""))
    click.echo(_metrics_header("", 0))
    click.echo(_metrics_row("", 0, result))
    click.echo(f"ECE over {CALIBRATION_BINS} equal-mass bins; ratio: mean predicted / observed click rate"
               + (f"; reliability diagram: {plot}" if plot else ""))
    ranking = result.get("ranking")
    if ranking:
        click.echo(f"ranking: each of {ranking['positives']:,} positives among {ranking['negatives']} negatives from {ranking['pool']} "
                   f"(seed {ranking['seed']})")
        click.echo("".join(f"{name.upper().replace('HR', 'HR').replace('NDCG', 'NDCG'):>10}" for name in ranking if "@" in name or name == "mrr"))
        click.echo("".join(f"{value:>10.4f}" for name, value in ranking.items() if "@" in name or name == "mrr"))
