"""`din-runtime predict BUNDLE INPUT OUTPUT`: score a CSV (or, with pyarrow installed, Parquet) table in chunks.

Needs nothing beyond the runtime's own dependencies for CSV: rows stream through the standard library's csv
reader, so memory stays flat in the input's size. The output (CSV: the ID column and `probability`) is written
to a temporary file beside OUTPUT and renamed into place when complete (din_runtime.files).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import click

from . import __version__
from . import thread_pool as thread_pools
from .commands import OneLineErrors, from_renamed, renamed_flag
from .completion import check_fields, fields_of
from .config import (
    BATCH_SESSION_ROWS,
    READ_ROWS,
    SERVE_HOST,
    SERVE_PORT,
    SERVED_LOG_MAX_ROWS,
    SERVED_LOG_MAX_SECONDS,
    SERVED_LOG_QUEUE_ROWS,
    ServerLimits,
)
from .errors import InputError
from .files import write_atomic
from .manifest import MANIFEST_FILE, read_manifest, schema_of
from .predictor import Predictor
from .providers import CHOICES
from .repository import CONTROL_MODES, Repository, check_name
from .served_log import ServedLog
from .stores import KEEP, StoreFields, open_store

LIMITS = ServerLimits()  # the serve options' defaults
PROVIDERS_HELP = ("auto: CUDA where usable, else the CPU; cuda: an error unless CUDA is in use; openvino: OpenVINO's execution "
                  "provider (din-runtime[openvino]), an error unless it is in use.")


def _csv_chunks(path: Path, rows: int) -> Iterator[dict[str, list]]:
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        while chunk := list(islice(reader, rows)):
            yield {name: [row[name] for row in chunk] for name in reader.fieldnames or []}  # the encoder reads '' as missing


def _parquet_chunks(path: Path, rows: int) -> Iterator[dict[str, Any]]:
    """Each chunk's columns as numpy arrays, list columns as Ragged (flat values and offsets): no Python object per
    value (`to_pydict()` made one per history entry; this reads a 161,616-row file in 6.3 s instead of 7.1)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .arrow import to_numpy, to_ragged
    except ImportError:
        raise InputError("input", "reading Parquet needs pyarrow (pip install pyarrow); CSV needs nothing more") from None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
        columns: dict[str, Any] = {}
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            listed = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            columns[name] = to_ragged(column) if listed else to_numpy(column)
        yield columns


def score(bundle: Path, source: Path, target: Path, id_column: str | None, read_rows: int, providers: str, progress: bool) -> int:
    """Score every row of `source` into `target`, `read_rows` rows read at a time; returns the number of rows."""
    # The session sees at most BATCH_SESSION_ROWS rows at a time: its activations (rows x history x attention width
    # floats) and ONNX Runtime's arena, which keeps its largest size, are what bound memory, not the rows read.
    predictor = Predictor.load(bundle, providers=providers, session_rows=BATCH_SESSION_ROWS)
    chunks = _parquet_chunks(source, read_rows) if source.suffix.lower() in (".parquet", ".pq") else _csv_chunks(source, read_rows)
    done = 0

    def write(temporary: Path) -> None:
        nonlocal done
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow([id_column or "row", "probability"])
            for columns in chunks:
                if id_column is not None and id_column not in columns:
                    raise InputError(id_column, f"{source}: the ID column is not in the input")
                try:
                    probabilities = predictor.predict(columns)
                except InputError as error:  # the file, and the row counted from the file's first data row
                    raise InputError(error.feature, f"{source}: {error.problem}", None if error.row is None else done + error.row) from None
                ids = columns[id_column] if id_column else range(done, done + len(probabilities))
                writer.writerows(zip(ids, (f"{p:.7g}" for p in probabilities), strict=True))
                done += len(probabilities)
                if progress:
                    print(f"\r{done:,} rows scored", end="", file=sys.stderr, flush=True)

    write_atomic(target, write)
    if progress:
        print(file=sys.stderr)
    return done


@click.group(cls=OneLineErrors)
@click.version_option(__version__, package_name="din-runtime")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def main(debug: bool) -> None:
    """Serve din-export bundles with ONNX Runtime."""


@main.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("input", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--id-column", help="Input column written beside each probability (default: the row number).")
@click.option("--read-rows", type=click.IntRange(min=1), default=READ_ROWS, show_default=True, callback=from_renamed,
              help="Rows read and scored at a time.")
@renamed_flag("--chunk-rows", "--read-rows", "read_rows", type=click.IntRange(min=1))
@click.option("--providers", type=click.Choice(CHOICES), default="auto", show_default=True,
              help=PROVIDERS_HELP)
@click.option("--quiet", is_flag=True, help="No progress line.")
def predict_command(bundle: Path, input: Path, output: Path, id_column: str | None, read_rows: int, providers: str, quiet: bool) -> None:
    """Score a CSV or Parquet table in chunks into OUTPUT (CSV: the ID column and probability)."""
    try:
        rows = score(bundle, input, output, id_column, read_rows, providers, not quiet)
    except csv.Error as error:
        raise InputError("input", f"{input}: not readable as CSV ({error})") from None
    click.echo(f"{rows:,} rows scored into {output}")


@main.command("serve")
@click.argument("source", metavar="BUNDLE_OR_REPOSITORY", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default=SERVE_HOST, show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=SERVE_PORT, show_default=True)
@click.option("--name", help="A bundle's model name in the URLs (default: the bundle folder's name, as `din-export triton` names it).")
@click.option("--model-control", type=click.Choice(CONTROL_MODES), default=None,
              help="A repository's model control, as Triton's: none (what is there at start, fixed), poll (rescanned every "
                   "--poll seconds), explicit (changed by the load and unload endpoints only). Default: poll with --poll, else none.")
@click.option("--poll", "poll_seconds", type=click.FloatRange(min=0.1), default=None,
              help="Rescan the repository every this many seconds (poll mode).")
@click.option("--max-batch", type=click.IntRange(min=1), default=LIMITS.max_batch, show_default=True,
              help="Most rows gathered from concurrent requests into one session call; 1 turns dynamic batching off.")
@click.option("--max-delay-ms", type=click.FloatRange(min=0), default=LIMITS.max_delay_ms, show_default=True,
              help="Extra wait after a batch's first request for others to join it. At 0, a batch is whatever arrived "
                   "while the previous session call ran: no wait when idle, batches under load.")
@click.option("--max-queue", type=click.IntRange(min=1), default=LIMITS.max_queue, show_default=True,
              help="Requests waiting beyond this many are refused with 503.")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=LIMITS.max_body_mb, show_default=True,
              help="Larger request bodies are refused with 413.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads (default: its own choice).")
@click.option("--thread-pool", type=click.Choice(thread_pools.MODES), default="per-session", show_default=True,
              help="per-session: each session its own pool of --threads, stopped from spinning after each call, and a "
                   "1-thread one for small calls; shared: every model, version and graph runs on one pool of --threads, so "
                   "more models add no threads (faster for large requests, slower for single rows: its pool spins).")
@click.option("--providers", type=click.Choice(CHOICES), default="auto", show_default=True, help=PROVIDERS_HELP)
@click.option("--store", "store_url", help="A behaviour store (sqlite:///PATH, or redis://HOST:PORT/DB shared by replicas): "
                                           "requests may leave the user's histories and attributes out (filled for each "
                                           "row's user, as of parameters.as_of), and POST /v2/events adds behaviours. A "
                                           "new store takes its fields from the model.")
@click.option("--keep", type=click.IntRange(min=1), default=KEEP, show_default=True,
              help="With a new --store: most behaviours kept per user (the most recent).")
@click.option("--log-requests", "log_folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Log every scored row (request id, time, model, version, the features as the model received them, the "
                   "probability) as Parquet under DIR/MODEL/VERSION/, for `din-export prepare --served DIR`.")
@click.option("--log-max-rows", type=click.IntRange(min=1), default=SERVED_LOG_MAX_ROWS, show_default=True,
              help="With --log-requests: a file per model version every this many rows...")
@click.option("--log-max-seconds", type=click.FloatRange(min=0.01), default=SERVED_LOG_MAX_SECONDS, show_default=True,
              help="...or once its oldest row is this old, whichever comes first.")
@click.option("--log-queue-rows", type=click.IntRange(min=1), default=SERVED_LOG_QUEUE_ROWS, show_default=True,
              help="With --log-requests: rows waiting for the writer beyond this many are dropped and counted, never waited for.")
def serve_command(source: Path, host: str, port: int, name: str | None, model_control: str | None, poll_seconds: float | None,
                  max_batch: int, max_delay_ms: float, max_queue: int, max_body_mb: float, threads: int | None, thread_pool: str,
                  providers: str, store_url: str | None, keep: int, log_folder: Path | None, log_max_rows: int, log_max_seconds: float,
                  log_queue_rows: int) -> None:
    """Serve a bundle, or a model repository in Triton's layout (REPO/NAME/VERSION/, each version a bundle), over HTTP
    with the KServe v2 protocol (Triton's): infer, rank, health, metadata, the repository extension, /metrics."""
    try:
        from .server import serve
    except ImportError as error:
        raise click.ClickException(f"serve needs the server extra: pip install 'din-runtime[serve]' ({error})") from None
    limits = ServerLimits(max_batch, max_delay_ms, max_queue, max_body_mb)
    control = model_control or ("poll" if poll_seconds is not None else "none")
    if control == "poll" and poll_seconds is None:
        raise click.UsageError("--model-control poll needs --poll SECONDS, how often to rescan")
    if poll_seconds is not None and control != "poll":
        raise click.UsageError(f"--poll rescans in poll mode; --model-control {control} does not poll")

    if thread_pool == "shared":  # before the first session of the process: ONNX Runtime sizes the pool once
        thread_pools.share(threads)
    store = None if store_url is None else open_store(store_url, keep=keep, new_fields=store_fields_for(source))

    def load(folder: Path) -> Predictor:
        predictor = Predictor.load(folder, providers=providers, threads=threads)
        if store is not None:  # a version the store cannot serve is refused with the reason, like any bad version
            check_fields(predictor.schema, predictor.manifest["spec"].get("user") or "", store.fields)
        return predictor

    if (source / MANIFEST_FILE).is_file():  # one bundle: model version 1, checked now so a bad one is one line
        if model_control is not None or poll_seconds is not None:
            raise click.UsageError("--model-control and --poll apply to a model repository; this is one bundle")
        predictor = load(source)
        name = check_name(name or source.resolve().name)
        repository = Repository(None, limits, lambda folder: predictor, single=(name, source))
        click.echo(f"serving {source} as model '{name}' on http://{host}:{port} ({predictor.providers[0]})", err=True)
    else:
        if name is not None:
            raise click.UsageError("--name names a bundle's model; in a repository the folders name the models")
        repository = Repository(source, limits, load, control)
        models = repository.model_names()
        if not models:
            raise click.UsageError(f"{source} holds neither {MANIFEST_FILE} (a bundle) nor model folders (a repository)")
        click.echo(f"serving the repository {source} ({len(models)} model(s): {', '.join(models)}; model control {control}) "
                   f"on http://{host}:{port}", err=True)
    served_log = None
    if log_folder is not None:
        try:
            import pyarrow  # noqa: F401 - the log's files are Parquet
        except ImportError:
            raise click.UsageError("--log-requests needs pyarrow: pip install 'din-runtime[parquet]'") from None
        served_log = partial(ServedLog, log_folder, log_max_rows, log_max_seconds, log_queue_rows)
    try:
        serve(repository, host, port, limits, poll_seconds, store, served_log)
    finally:
        if store is not None:
            store.close()


def store_fields_for(source: Path) -> StoreFields:
    """A new store's fields from the bundle, or from a repository's first model's newest version."""
    bundle = source
    if not (source / MANIFEST_FILE).is_file():
        versions = sorted((p for model in sorted(source.iterdir()) if model.is_dir() and not model.name.startswith(".")
                           for p in model.iterdir() if p.is_dir() and p.name.isdigit() and (p / MANIFEST_FILE).is_file()),
                          key=lambda p: (p.parent.name, int(p.name)))
        if not versions:
            raise click.UsageError(f"--store: {source} holds no bundle to take a new store's fields from")
        bundle = versions[-1]
    manifest = read_manifest(bundle)
    return fields_of(schema_of(manifest), manifest["spec"].get("user") or "")
