"""A real epoch, side by side: din-export's `train()` over the whole MovieLens-100k ids+genre training split
(161,616 rows), `din-export train-and-export --epochs 1` through the CLI on the same prepared tables (reading,
fitting, training, calibration and the verified export: what a user waits for), and DeepCTR-Torch 0.3.0's DIN
(`fit` for one epoch, the settings of benchmarks/peer_deepctr.py) where it is installed, interleaved round by round
in one process (ours, CLI, peer, ours, CLI, peer, ...) so that drift hits all alike; the median of the rounds.

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 \
        python benchmarks/training_epoch.py --rounds 3   # batch 256 and the default batch
        python benchmarks/training_epoch.py --rounds 3 --compile   # and train() on the model under torch.compile
    python benchmarks/training_epoch.py --rows 2000 --rounds 1 --compile --compile-backend aot_eager   # CI's smoke

Samples per second: rows of the training split over the seconds of the whole call (train(): its batch loop and the
validation pass on 2,000 rows; the CLI: the whole command; DeepCTR: `fit`). `--compile-backend aot_eager` traces
forward and backward as inductor does but generates no kernels: the smoke's choice, which checks the compiled path
in seconds where inductor's cold compilation takes over a minute; the figures are inductor's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from click.testing import CliRunner
from machine import cpu_model

from din_export.cli import main as cli
from din_export.config import ModelConfig, TrainConfig
from din_export.data.prepare import prepare
from din_export.data.prepared import SPEC_FILE
from din_export.data.rules import Sources
from din_export.data.source import DataSource
from din_export.data.spec import load_spec
from din_export.data.splits import EncodedData, EncodedSplit, load_data
from din_export.model.din import DIN
from din_export.training.train import train

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "movielens-100k-ids-genre.toml"
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"


def head(split: EncodedSplit, rows: int | None) -> EncodedSplit:
    if rows is None:
        return split
    return EncodedSplit({name: array[:rows] for name, array in split.feed.items()}, split.labels[:rows],
                        None if split.groups is None else split.groups[:rows], split.sequences)


def peer_epoch(data, split: EncodedSplit, batch_size: int):  # noqa: ANN001, ANN201 - DeepCTR's own types
    """A closure running one DeepCTR-Torch epoch over `split`, or None where DeepCTR-Torch is not installed."""
    started = set(threading.enumerate())
    # DeepCTR's import starts a thread that looks up its latest version and prints when it cannot: kept out of the
    # table by waiting for it here
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from deepctr_torch.models import DIN as PeerDIN
            from peer_deepctr import ATTENTION, DNN, columns, inputs
        except ImportError:
            return None
        for thread in set(threading.enumerate()) - started:
            thread.join(timeout=60)
    features, histories = columns(data)
    model = PeerDIN(features, histories, att_hidden_size=ATTENTION, dnn_hidden_units=DNN, device="cpu", seed=0)
    model.compile("adam", "binary_crossentropy")
    x = {name: array[:len(split.labels)] for name, array in inputs(data, "train").items()}
    def epoch() -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # DeepCTR prints its device and sizes on every fit
            model.fit(x, split.labels, batch_size=batch_size, epochs=1, verbose=0)
    return epoch


def epoch_inputs(samples: Path, batch_size: int, rows: int | None) -> tuple[EncodedData, EncodedSplit, EncodedSplit, TrainConfig]:
    """The prepared tables encoded, the training split (its first `rows`), 2,000 validation rows, one epoch's config."""
    data = load_data(DataSource(*(samples / f"{s}.parquet" for s in ("train", "valid", "test"))), load_spec(samples / SPEC_FILE), seed=0)
    split, valid = head(data.splits["train"], rows), head(data.splits["valid"], 2000)
    return data, split, valid, TrainConfig(epochs=1, batch_size=batch_size, progress=False, device="cpu")


def warmed_model(data: EncodedData, split: EncodedSplit, valid: EncodedSplit, config: TrainConfig) -> DIN:
    """The default DIN (seed 0) after ten batches of training: allocations and kernels warm."""
    torch.manual_seed(0)
    model = DIN(data.schema, ModelConfig())
    train(model, head(split, 10 * config.batch_size), valid, config)
    return model


def measure(samples: Path, batch_size: int, rounds: int, rows: int | None, scratch: Path,
            compiled: bool = False, backend: str = "inductor") -> tuple[int, dict[str, float]]:
    """(the training rows, samples/s of each run: the median over the rounds; with `compiled`, also the same model
    under torch.compile (`backend`, dynamic shapes: the history width changes from batch to batch), its compilation
    in the warm-up from a cold cache, whose seconds are returned as "compile seconds")."""
    data, split, valid, config = epoch_inputs(samples, batch_size, rows)
    ours = warmed_model(data, split, valid, config)
    table = samples / "train.parquet" if rows is None else _head_table(samples, rows, scratch)
    arguments = ["train-and-export", "--data", str(table), "--valid", str(samples / "valid.parquet"), "--test", str(samples / "test.parquet"),
                 "--spec", str(samples / SPEC_FILE), "--epochs", "1", "--batch-size", str(batch_size), "--out", str(scratch / "bundle"), "--quiet"]
    runs = {"train()": lambda: train(ours, split, valid, config),
            "CLI": lambda: _invoke(arguments)}
    compile_seconds = None
    if compiled:
        torch._dynamo.reset()  # the other batch size's compiled graphs would be reused: every measure() compiles cold
        torch.manual_seed(0)
        fused = DIN(data.schema, ModelConfig())
        fused.compile(dynamic=True, backend=backend)
        started = time.perf_counter()
        train(fused, head(split, 10 * batch_size), valid, config)  # warm-up: compiles forward and backward
        compile_seconds = time.perf_counter() - started
        runs["train(), torch.compile"] = lambda: train(fused, split, valid, config)
    peer = peer_epoch(data, split, batch_size)
    if peer is not None:
        peer()  # warm-up (a whole epoch: DeepCTR's first one allocates)
        runs["DeepCTR-Torch"] = peer
    rates = {name: len(split.labels) / seconds for name, seconds in interleaved(runs, rounds).items()}
    if compile_seconds is not None:
        rates["compile seconds"] = compile_seconds
    return len(split.labels), rates


def interleaved(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """The median seconds of each run over `rounds` rounds, each round running every one in turn."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def _invoke(arguments: list[str]) -> None:
    result = CliRunner().invoke(cli, arguments)
    if result.exit_code != 0:
        raise RuntimeError(result.output)


def _head_table(samples: Path, rows: int, scratch: Path) -> Path:
    import pyarrow.parquet as pq

    path = scratch / "train-head.parquet"
    pq.write_table(pq.read_table(samples / "train.parquet").slice(0, rows), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=sorted({256, TrainConfig().batch_size}))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=None, help="train on the first ROWS rows only (a smoke run)")
    parser.add_argument("--compile", action="store_true", help="also train() on the model under torch.compile")
    parser.add_argument("--compile-backend", choices=("inductor", "aot_eager"), default="inductor",
                        help="torch.compile's backend (aot_eager: no kernels generated, for a quick check of the path)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}; rounds {args.rounds}"
          + (f"; torch.compile backend {args.compile_backend}" if args.compile else ""))
    compiled = ("", "") if not args.compile else (" train(), torch.compile samples/s (compile s) |", "---:|")
    print("| batch | rows | din-export train() samples/s | din-export CLI samples/s | DeepCTR-Torch samples/s | train() / DeepCTR |"
          + compiled[0])
    print("|---:|---:|---:|---:|---:|---:|" + compiled[1])
    with tempfile.TemporaryDirectory() as scratch:
        # inductor's on-disk cache would make the compile seconds those of a warm cache (a rerun of the same model)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(scratch) / "inductor-cache")
        samples = Path(scratch) / "ids-genre"
        prepare(RECIPE, Sources(ML100K / "ml-100k.inter", ML100K / "ml-100k.item"), samples)
        for batch_size in args.batch_sizes:
            rows, rate = measure(samples, batch_size, args.rounds, args.rows, Path(scratch), args.compile, args.compile_backend)
            peer = rate.get("DeepCTR-Torch")
            ours = rate["train()"]
            versus = ("not installed", "-") if peer is None else (f"{peer:,.0f}", f"{ours / peer:.2f}x")
            fused = f" {rate['train(), torch.compile']:,.0f} ({rate['compile seconds']:.0f}) |" if args.compile else ""
            print(f"| {batch_size} | {rows:,} | {ours:,.0f} | {rate['CLI']:,.0f} | {versus[0]} | {versus[1]} |{fused}", flush=True)


if __name__ == "__main__":
    main()
