"""The din-export command line."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from .model import VARIANTS, ModelConfig
from .train import TrainConfig

DEFAULT_MODELS_DIR = Path("models")


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer sizes like 80,40, not {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"expected positive layer sizes, not {value!r}")
    return sizes


@click.group()
@click.version_option(package_name="din-export")
def main() -> None:
    """Train a Deep Interest Network, export it to ONNX, serve it with din_runtime."""


def _existing_file(help_text: str):
    return click.option(help_text.split()[0], type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                        help=" ".join(help_text.split()[1:]))


def _source_path(name: str, help_text: str):
    return click.option(name, type=str, default=None, help=help_text)


@main.command("prepare")
@click.option("--spec", "recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Recipe (TOML): the feature spec plus [log], [items], [users], [sampling] and [split] sections.")
@_source_path("--log", "Interaction log: .csv, .tsv (also RecBole's .inter), .parquet, or a glob or folder of Parquet parts.")
@_source_path("--items", "Item attribute table, joined on [items] key.")
@_source_path("--users", "User attribute table, joined on [users] key.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write train.parquet, valid.parquet, test.parquet, spec.toml and prepare.json into "
                   "(replaced only once complete).")
@click.option("--chunk-rows", type=click.IntRange(min=1000), default=200_000, show_default=True,
              help="Samples built and written per chunk; bounds memory.")
def prepare_command(recipe: Path, log: str | None, items: str | None, users: str | None, out: Path, chunk_rows: int) -> None:
    """Turn a behaviour log (and item and user tables) into train, valid and test sample tables for train-and-export."""
    from .prepare import Sources, prepare
    from .spec import SpecError
    from .tables import TableError

    if log is None:
        raise click.UsageError("--log is required: the interaction log to prepare")
    try:
        summary = prepare(recipe, Sources(Path(log), items and Path(items), users and Path(users)), out, chunk_rows)
    except (SpecError, TableError, ValueError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    rows = summary["rows"]
    click.echo(f"prepared {summary['events']} events of {summary['users']} users into {out}: "
               f"{rows['train']} train, {rows['valid']} valid, {rows['test']} test samples "
               f"({summary['negatives_drawn']} negatives drawn) in {summary['seconds']:.1f} s")


@main.command("train-and-export")
@_existing_file("--data Training sample table (.csv, .tsv or .parquet). Without it, the built-in synthetic data is used.")
@_source_path("--log", "A behaviour log instead of --data: runs `prepare` with --spec as the recipe, then trains on its output.")
@_source_path("--items", "Item attribute table for --log.")
@_source_path("--users", "User attribute table for --log.")
@_existing_file("--valid Validation table; when absent, 10% of --data is held out for it.")
@_existing_file("--test Test table; when absent, 10% of --data is held out for it.")
@_existing_file("--spec Feature spec (TOML). Required with --data; defaults to the built-in data's spec.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Bundle folder to write (model.onnx, manifest.json, weights.pt). Default: models/<data>-<variant>. "
                   "An existing bundle there is replaced only once the new one is complete.")
@click.option("--samples", type=click.IntRange(min=100), default=100_000, show_default=True,
              help="Rows of built-in synthetic data to generate (ignored with --data).")
@click.option("--model", "variant", type=click.Choice(VARIANTS), default="din", show_default=True,
              help="din: attention over the history (the local activation unit); base: mean pooling (the paper's BaseModel).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Most epochs to train.")
@click.option("--patience", type=click.IntRange(min=1), default=2, show_default=True,
              help="Stop after this many epochs without a better validation AUC; the best epoch is kept.")
@click.option("--batch-size", type=click.IntRange(min=2), default=256, show_default=True, help="Mini-batch size.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data split, initialisation and shuffling.")
@click.option("--embedding-dim", type=click.IntRange(min=1), default=16, show_default=True, help="Embedding size of every categorical feature.")
@click.option("--attention-hidden", default="80,40", show_default=True, help="Hidden sizes of the local activation unit's MLP.")
@click.option("--attention-activation", type=click.Choice(["sigmoid", "prelu", "dice", "relu"]), default="sigmoid", show_default=True,
              help="Activation inside the local activation unit.")
@click.option("--attention-weighting", type=click.Choice(["raw", "softmax"]), default="raw", show_default=True,
              help="raw: the unnormalised weights of the paper; softmax: normalised over the unpadded behaviours.")
@click.option("--mlp-hidden", default="200,80", show_default=True, help="Hidden sizes of the final MLP.")
@click.option("--activation", type=click.Choice(["prelu", "dice"]), default="prelu", show_default=True, help="Activation of the final MLP.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
def train_and_export_command(data: Path | None, log: str | None, items: str | None, users: str | None,
                             valid: Path | None, test: Path | None, spec: Path | None, out: Path | None,
                             samples: int, variant: str, epochs: int, patience: int, batch_size: int, learning_rate: float,
                             seed: int, embedding_dim: int, attention_hidden: str, attention_activation: str,
                             attention_weighting: str, mlp_hidden: str, activation: str, quiet: bool) -> None:
    """Train a DIN on a sample table, a behaviour log or the built-in data; export verified ONNX; write a model bundle."""
    from .pipeline import DataSource
    from .spec import SpecError
    from .tables import TableError

    if (data is not None or log is not None) and spec is None:
        raise click.UsageError("--data and --log need --spec, the TOML file that names the label and features")
    if data is not None and log is not None:
        raise click.UsageError("give --data (a sample table) or --log (a behaviour log), not both")
    source = DataSource(data=data, valid=valid, test=test, synthetic_samples=samples)
    out = out or DEFAULT_MODELS_DIR / f"{Path(log).stem if log else source.name}-{variant}"
    with tempfile.TemporaryDirectory(prefix="din-export-prepare-") as scratch:
        if log is not None:
            from .prepare import SPEC_FILE, Sources, prepare

            prepared = Path(scratch) / "samples"
            try:
                prepare(spec, Sources(Path(log), items and Path(items), users and Path(users)), prepared)
            except (SpecError, TableError, ValueError) as error:
                click.echo(f"error: {error}", err=True)
                sys.exit(2)
            source = DataSource(data=prepared / "train.parquet", valid=prepared / "valid.parquet", test=prepared / "test.parquet")
            spec = prepared / SPEC_FILE
        _train_and_export(source, out, spec, variant, epochs, patience, batch_size, learning_rate, seed, embedding_dim,
                          attention_hidden, attention_activation, attention_weighting, mlp_hidden, activation, quiet)


def _train_and_export(source, out: Path, spec: Path | None, variant: str, epochs: int, patience: int, batch_size: int,
                      learning_rate: float, seed: int, embedding_dim: int, attention_hidden: str, attention_activation: str,
                      attention_weighting: str, mlp_hidden: str, activation: str, quiet: bool) -> None:
    from .export import ExportError
    from .pipeline import train_and_export
    from .spec import SpecError
    from .tables import TableError

    try:
        model_config = ModelConfig(variant=variant, embedding_dim=embedding_dim, attention_hidden=_sizes(attention_hidden),
                                   attention_activation=attention_activation, attention_weighting=attention_weighting,
                                   mlp_hidden=_sizes(mlp_hidden), mlp_activation=activation)
        train_config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, patience=patience,
                                   seed=seed, progress=not quiet)
        manifest = train_and_export(source, out, spec, model_config, train_config)
    except (SpecError, TableError, ExportError, ValueError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    test_metrics = manifest["metrics"]["test"]
    summary = ", ".join(f"{k} {v:.4f}" for k, v in test_metrics.items() if k in ("auc", "gauc", "logloss", "accuracy") and v is not None)
    click.echo(f"bundle written to {out}")
    click.echo(f"test: {summary} (best epoch {manifest['metrics']['best_epoch']}); "
               f"ONNX vs PyTorch max |diff| {manifest['onnx']['parity']['max_abs_diff']:.2e}")
