"""Regenerate the measured tables of the docs' results pages: each measurement runs its command on this machine and
writes docs/results/generated/NAME.md, the table headed by the date, the CPU model and cores, the library versions
and the exact command, which the results pages include as they are.

    python benchmarks/results.py                  # every measurement (about 40 minutes on 2 cores)
    python benchmarks/results.py quality latency  # some
    python benchmarks/results.py --list

Each figure in a table was measured in that one run: ratios come from interleaved runs inside one process
(the benchmark's own design), never across processes or machines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "generated"
BIN = Path(sys.executable).parent
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "17179869184", "MALLOC_TRIM_THRESHOLD_": "17179869184"}  # PyTorch at its best
VERSIONS = ("torch", "onnxruntime-gpu", "onnxruntime", "numpy", "onnx", "duckdb", "pyarrow", "openvino", "pyspark")


def versions() -> str:
    found = []
    for name in VERSIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(found)


def run(command: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    """Run one command, echoing its output, and return the output; a failure stops the measurement."""
    print("$", " ".join(shlex.quote(c) for c in command), flush=True)
    result = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    sys.stdout.write(result.stdout[-4000:])
    if result.returncode:
        raise SystemExit(f"{command[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout + result.stderr


def tables_in(output: str) -> str:
    """The markdown tables (and the blank lines between them) that a script printed."""
    lines, kept = output.splitlines(), []
    for line in lines:
        if line.startswith("|"):
            kept.append(line)
        elif kept and kept[-1] != "":
            kept.append("")
    return "\n".join(kept).strip()


def manifest_row(bundle: Path, label: str) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    test, training = manifest["metrics"]["test"], manifest["training"]
    epochs = len(manifest["metrics"]["history"])
    cells = [label] + [f"{test[k]:.4f}" if test.get(k) is not None else "-" for k in ("auc", "gauc", "logloss", "accuracy")]
    cells += [f"{manifest['metrics']['best_epoch']} of {epochs}", f"{training.get('samples_per_second', 0):,.0f}",
              f"{manifest['seconds']['train']:.0f}"]
    return "| " + " | ".join(cells) + " |"


QUALITY_HEADER = ("| model | test AUC | test GAUC | test logloss | test accuracy | best epoch | training samples/s | training s |\n"
                  "|---|---:|---:|---:|---:|---:|---:|---:|")


def quality_synthetic(scratch: Path) -> tuple[str, str]:
    rows = []
    for variant in ("din", "base", "din-seq"):
        run([str(BIN / "din-export"), "train-and-export", "--model", variant, "--out", str(scratch / variant), "--quiet"])
        rows.append(manifest_row(scratch / variant, f"`{variant}`"))
    return "din-export train-and-export --model din|base|din-seq  # the built-in data, 100,000 samples, defaults", \
        QUALITY_HEADER + "\n" + "\n".join(rows)


def quality_movielens(scratch: Path) -> tuple[str, str]:
    data = scratch / "ml-100k"
    run([str(BIN / "din-export"), "prepare", "--spec", "examples/movielens-100k.toml", "--log", str(ML100K / "ml-100k.inter"),
         "--items", str(ML100K / "ml-100k.item"), "--users", str(ML100K / "ml-100k.user"), "--out", str(data)])
    rows = []
    for variant in ("din", "base", "din-seq", "dien", "bst"):
        run([str(BIN / "din-export"), "train-and-export", "--data", str(data), "--model", variant, "--out", str(scratch / variant), "--quiet"])
        rows.append(manifest_row(scratch / variant, f"`{variant}`"))
    command = ("din-export prepare --spec examples/movielens-100k.toml --log ml-100k.inter --items ml-100k.item --users "
               "ml-100k.user --out data/ml-100k && din-export train-and-export --data data/ml-100k --model din|base|din-seq|dien|bst")
    return command, QUALITY_HEADER + "\n" + "\n".join(rows)


def latency(scratch: Path) -> tuple[str, str]:
    report = scratch / "bench.json"
    run([sys.executable, "-m", "pytest", "-n", "0", "benchmarks/test_latency.py", "benchmarks/test_load_time.py", f"--benchmark-json={report}",
         "--benchmark-min-rounds=20", "-q", "-p", "no:cacheprovider"], env=MALLOC)
    output = run([sys.executable, "benchmarks/report.py", str(report), "--plot", "docs/results/latency.png"])
    rate = next(line for line in output.splitlines() if line.startswith("GEMM rate"))
    return ("MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python -m pytest -n 0 benchmarks/test_latency.py "
            "benchmarks/test_load_time.py --benchmark-json=bench.json --benchmark-min-rounds=20 && python benchmarks/report.py bench.json"), \
        f"{rate}. Times in ms, medians.\n\n" + tables_in(output)


def _benchmarks(report: Path) -> list[dict[str, Any]]:
    return json.loads(report.read_text())["benchmarks"]


def serving_race(scratch: Path) -> tuple[str, str]:
    report = scratch / "race.json"
    run([sys.executable, "-m", "pytest", "-n", "0", "benchmarks/test_serving_race.py", f"--benchmark-json={report}", "-q", "-p", "no:cacheprovider"],
        env=MALLOC)
    found = {b["name"]: b["extra_info"] for b in _benchmarks(report)}
    race = found["test_serving_race"]
    columns = ["predict", "predict, batch session", "predict, item IDs only", "encode", "predict, arrays", "session",
               "session int8", "predict int8", "torch.compile", "OpenVINO", "eager", "floor", "floor int8"]
    ratios = ["torch.compile / session", "OpenVINO / session", "session / floor", "torch.compile / predict",
              "session / session int8", "torch.compile / session int8", "torch.compile / predict int8", "session int8 / floor int8"]
    lines = ["| B x L | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for shape, row in race["ms per call"].items():
        lines.append(f"| {shape.replace('x', ' x ')} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    lines += ["", "| B x L | " + " | ".join(ratios) + " | encoding share of predict, arrays |", "|---|" + "---:|" * (len(ratios) + 1)]
    for shape, row in race["ms per call"].items():
        lines.append(f"| {shape.replace('x', ' x ')} | " + " | ".join(f"{row[r]:.2f}x" for r in ratios)
                     + f" | {row['encoding share of predict, arrays']:.1%} |")
    lines += ["", f"GEMM rates in the same rounds (1024^3 in ONNX Runtime, 2 threads): float32 {race['GEMM GFLOP/s']} GFLOP/s, "
                  f"uint8 x int8 {race['int8 GEMM GOP/s']} GOP/s."]
    rank = found["test_rank_against_replicated_predict"]
    lines += ["", "| rank, 1,000 candidates x 50 | predict on the replicated rows | rank int8 | predict / rank | rank / rank int8 |",
              "|---:|---:|---:|---:|---:|",
              f"| {rank['rank ms']:.3f} | {rank['predict replicated ms']:.3f} | {rank['rank int8 ms']:.3f} | {rank['speed-up']:.2f}x | "
              f"{rank['rank / rank int8']:.2f}x |"]
    return ("MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python -m pytest -n 0 benchmarks/test_serving_race.py "
            "--benchmark-json=race.json"), "Milliseconds per call, medians over interleaved rounds.\n\n" + "\n".join(lines)


def server_load(scratch: Path) -> tuple[str, str]:
    report = scratch / "serve.json"
    run([sys.executable, "-m", "pytest", "-n", "0", "benchmarks/test_server_load.py", f"--benchmark-json={report}", "-q", "-p", "no:cacheprovider"])
    lines = ["| clients x rows per request | batching: rows/s | p50 ms | p99 ms | no batching: rows/s | p50 ms | p99 ms | throughput ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for bench in sorted(_benchmarks(report), key=lambda b: (b["params"]["clients"], b["params"]["rows"])):
        info, params = bench["extra_info"], bench["params"]
        on, off = info["batching"], info["no batching"]
        lines.append(f"| {params['clients']} x {params['rows']} | {on['rows/s']:,} | {on['p50 ms']} | {on['p99 ms']} | {off['rows/s']:,} | "
                     f"{off['p50 ms']} | {off['p99 ms']} | {info['throughput, batching / none']:.2f} |")
    return "python -m pytest -n 0 benchmarks/test_server_load.py --benchmark-json=serve.json", "\n".join(lines)


def _recency_script(scratch: Path, *arguments: str) -> tuple[str, str]:
    output = run([sys.executable, "benchmarks/recency.py", *arguments, "--scratch", str(scratch)])
    return "python benchmarks/recency.py " + " ".join(arguments), tables_in(output)


def recency(scratch: Path) -> tuple[str, str]:
    return _recency_script(scratch, "--max-lens", "50", "200", "10", "--recency", "position", "time", "time+position", "--seeds", "0")


def max_len(scratch: Path) -> tuple[str, str]:
    """The default DIN (recency by place and age) at each max_len, 3 seeds: does a longer history help?"""
    return _recency_script(scratch, "--max-lens", "10", "50", "200", "--recency", "time+position", "--seeds", "0", "1", "2")


def family(scratch: Path) -> tuple[str, str]:
    return _recency_script(scratch, "--max-lens", "50", "--recency", "time+position", "--models", "dien", "bst", "din", "din-seq",
                           "--seeds", "0", "1", "2", "--peer-seeds", "0")


def family_speed(scratch: Path) -> tuple[str, str]:
    arguments = ["--rows", "40960", "--rounds", "3", "--serving-rounds", "30"]
    output = run([sys.executable, "benchmarks/family_speed.py", *arguments], env=MALLOC)
    return ("MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/family_speed.py "
            + " ".join(arguments)), tables_in(output)


def recurrence_export(scratch: Path) -> tuple[str, str]:
    output = run([sys.executable, "benchmarks/recurrence_export.py", "--rounds", "30"])
    parity = next(line for line in output.splitlines() if line.startswith("parity"))
    return "python benchmarks/recurrence_export.py --rounds 30", parity + "\n\n" + tables_in(output)


def store_serving(scratch: Path) -> tuple[str, str]:
    report = scratch / "store.json"
    run([sys.executable, "-m", "pytest", "-n", "0", "benchmarks/test_store_serving.py", f"--benchmark-json={report}", "-q",
         "-p", "no:cacheprovider"])
    found = {(b["name"].split("[")[0], b["params"]["server"]): b["extra_info"] for b in _benchmarks(report) if b.get("params")}
    lines = ["| backend | by user ID: p50 ms | p99 ms | history in body: p50 ms | p99 ms | p50 ratio | p99 ratio | requests each |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for backend in ("sqlite", "redis"):
        info = found[("test_rank_by_user_id_against_history_in_body", backend)]
        lines.append(f"| {backend} | {info['by ID']['p50 ms']} | {info['by ID']['p99 ms']} | {info['in body']['p50 ms']} | "
                     f"{info['in body']['p99 ms']} | {info['p50 by ID / in body']:.3f} | {info['p99 by ID / in body']:.3f} | {info['requests']} |")
    lines += ["", "| backend | events/s, one event per request | events/s, 100 per request |", "|---|---:|---:|"]
    for backend in ("sqlite", "redis"):
        info = found[("test_events_ingest_over_http", backend)]
        lines.append(f"| {backend} | {info['1 per request: events/s']:,} | {info['100 per request: events/s']:,} |")
    return "python -m pytest -n 0 benchmarks/test_store_serving.py --benchmark-json=store.json", "\n".join(lines)


def store_ingest(scratch: Path) -> tuple[str, str]:
    arguments = ["1000000", "20000000"]
    output = run([sys.executable, "benchmarks/store_ingest.py", *arguments, "--scratch", str(scratch)])
    return "python benchmarks/store_ingest.py " + " ".join(arguments), tables_in(output)


def time_to_quality(scratch: Path) -> tuple[str, str]:
    output = run([sys.executable, "benchmarks/time_to_quality.py"], env=MALLOC)
    return ("MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/time_to_quality.py",
            tables_in(output))


def int8_options(scratch: Path) -> tuple[str, str]:
    """The int8 choices on a MovieLens-100k ids+genre DIN (defaults, at most 4 epochs to bound the time)."""
    data, bundle = scratch / "ids-genre", scratch / "din"
    run([str(BIN / "din-export"), "prepare", "--spec", "examples/movielens-100k-ids-genre.toml", "--log", str(ML100K / "ml-100k.inter"),
         "--items", str(ML100K / "ml-100k.item"), "--out", str(data)])
    run([str(BIN / "din-export"), "train-and-export", "--data", str(data), "--spec", str(data / "spec.toml"), "--epochs", "4",
         "--out", str(bundle), "--quiet"])
    output = run([sys.executable, "benchmarks/int8_options.py", str(bundle)])
    command = ("din-export prepare --spec examples/movielens-100k-ids-genre.toml --log ml-100k.inter --items ml-100k.item --out ids-genre "
               "&& din-export train-and-export --data ids-genre --spec ids-genre/spec.toml --epochs 4 --out din "
               "&& python benchmarks/int8_options.py din")
    return command, tables_in(output)


def thread_pools(scratch: Path) -> tuple[str, str]:
    arguments = ["--rounds", "5"]
    output = run([sys.executable, "benchmarks/thread_pools.py", *arguments])
    return "python benchmarks/thread_pools.py " + " ".join(arguments), tables_in(output)


def swap_latency(scratch: Path) -> tuple[str, str]:
    report = scratch / "swap.json"
    run([sys.executable, "-m", "pytest", "-n", "0", "benchmarks/test_swap_latency.py", f"--benchmark-json={report}", "-q", "-p", "no:cacheprovider"])
    info = _benchmarks(report)[0]["extra_info"]
    lines = ["| requests | failed | steady p50 ms | steady p99 ms | swap p50 ms | swap p99 ms | p99 swap / steady "
             "| swap seconds (rename -> first response) |",
             "|---:|---:|---:|---:|---:|---:|---:|---|",
             f"| {info['requests']:,} | {info['failed']} | {info['steady p50 ms']} | {info['steady p99 ms']} | {info['swap p50 ms']} | "
             f"{info['swap p99 ms']} | {info['p99 swap / steady']:.2f} | {', '.join(map(str, info['swap seconds']))} |"]
    return "python -m pytest -n 0 benchmarks/test_swap_latency.py --benchmark-json=swap.json", "\n".join(lines)


def training_speed(scratch: Path) -> tuple[str, str]:
    report = scratch / "train.json"
    run([sys.executable, "-m", "pytest", "-n", "0", "benchmarks/test_training_speed.py", f"--benchmark-json={report}", "-q",
         "-p", "no:cacheprovider"])
    lines = ["| batch | folded (how din-export trains): samples/s | plain [q, k, q-k, q*k]: samples/s | folded / plain |", "|---:|---:|---:|---:|"]
    for bench in sorted(_benchmarks(report), key=lambda b: b["params"]["batch_size"]):
        info = bench["extra_info"]
        lines.append(f"| {bench['params']['batch_size']} | {info['folded samples/s']:,} | {info['plain samples/s']:,} | "
                     f"{info['folded / plain']:.2f}x |")
    return "python -m pytest -n 0 benchmarks/test_training_speed.py --benchmark-json=train.json", "\n".join(lines)


def prepare_scaling(scratch: Path) -> tuple[str, str]:
    arguments = ["1000000", "10000000", "20000000", "--inline-up-to", "10000000"]
    output = run([sys.executable, "benchmarks/prepare_scaling.py", *arguments])
    return "python benchmarks/prepare_scaling.py " + " ".join(arguments), tables_in(output)


def training_epoch(scratch: Path) -> tuple[str, str]:
    arguments = ["--rounds", "3", "--compile"]  # batch 256 and the default; train() under torch.compile beside it
    output = run([sys.executable, "benchmarks/training_epoch.py", *arguments], env=MALLOC)
    return ("MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/training_epoch.py "
            + " ".join(arguments)), output[output.index("CPU:"):].split("\n", 1)[0] + "\n\n" + tables_in(output)


def prepare_engines(scratch: Path) -> tuple[str, str]:
    arguments = ["1000000", "10000000"]
    output = run([sys.executable, "benchmarks/prepare_engines.py", *arguments])
    return "python benchmarks/prepare_engines.py " + " ".join(arguments), tables_in(output)


def training_at_scale(scratch: Path) -> tuple[str, str]:
    arguments = ["4000000", "--inline-up-to", "0", "--epoch-samples", "200000"]
    output = run([sys.executable, "benchmarks/training_at_scale.py", *arguments])
    return "python benchmarks/training_at_scale.py " + " ".join(arguments), tables_in(output)


def sort_engines(scratch: Path) -> tuple[str, str]:
    if importlib.util.find_spec("polars") is None:
        raise SystemExit("sort-engines times Polars too: pip install polars (a benchmark-only install)")
    output = run([sys.executable, "benchmarks/sort_engines.py", "20000000"])
    return "python benchmarks/sort_engines.py 20000000", tables_in(output)


def daily_retraining(scratch: Path) -> tuple[str, str]:
    parts = []
    for data, label in (("movielens", "MovieLens-100k, ids + genre"), ("generated", "the generated log, its catalogue drifting")):
        output = run([sys.executable, "benchmarks/daily_retraining.py", "--data", data, "--events", "60000", "--seeds", "0", "1", "2"])
        parts.append(f"**{label}**\n\n" + tables_in(output))
    return ("python benchmarks/daily_retraining.py --data movielens|generated --events 60000 --seeds 0 1 2",
            "AUC on the next day's events; training seconds from the manifests (the training phase alone).\n\n" + "\n\n".join(parts))


def continuation_schedules(scratch: Path) -> tuple[str, str]:
    output = run([sys.executable, "benchmarks/daily_retraining.py", "--data", "movielens", "--seeds", "0", "--schedules"])
    return "python benchmarks/daily_retraining.py --data movielens --seeds 0 --schedules", tables_in(output)


def calibration(scratch: Path) -> tuple[str, str]:
    parts = []
    for data, label in (("impressions", "The generated impression log: 500,000 impressions, about 5% clicked, a tenth of the "
                                         "non-clicks kept for training"),
                        ("movielens", "MovieLens-100k ids + genre: one sampled negative per rating, nothing downsampled")):
        output = run([sys.executable, "benchmarks/calibration.py", "--data", data, "--seeds", "0", "1", "2"])
        parts.append(f"**{label}**\n\n" + tables_in(output))
    return "python benchmarks/calibration.py --data impressions|movielens --seeds 0 1 2", "\n\n".join(parts)


def evaluation_movielens(scratch: Path) -> tuple[str, str]:
    output = run([sys.executable, "benchmarks/evaluate_variants.py", "--seed", "0"])
    return "python benchmarks/evaluate_variants.py --seed 0", tables_in(output)


@dataclass(frozen=True)
class Measurement:
    measure: Callable[[Path], tuple[str, str]]  # scratch folder -> (the command a reader reruns, the markdown)
    needs_movielens: bool = False


MEASUREMENTS = {
    "quality-synthetic": Measurement(quality_synthetic),
    "quality-movielens": Measurement(quality_movielens, needs_movielens=True),
    "training-speed": Measurement(training_speed, needs_movielens=True),
    "training-epoch": Measurement(training_epoch, needs_movielens=True),
    "latency": Measurement(latency),
    "serving-race": Measurement(serving_race),
    "server-load": Measurement(server_load),
    "swap-latency": Measurement(swap_latency),
    "thread-pools": Measurement(thread_pools),
    "int8-options": Measurement(int8_options, needs_movielens=True),
    "time-to-quality": Measurement(time_to_quality, needs_movielens=True),
    "store-serving": Measurement(store_serving, needs_movielens=True),
    "recency": Measurement(recency, needs_movielens=True),
    "max-len": Measurement(max_len, needs_movielens=True),
    "family": Measurement(family, needs_movielens=True),
    "family-speed": Measurement(family_speed, needs_movielens=True),
    "recurrence-export": Measurement(recurrence_export),
    "store-ingest": Measurement(store_ingest),
    "prepare-scaling": Measurement(prepare_scaling),
    "sort-engines": Measurement(sort_engines),
    "prepare-engines": Measurement(prepare_engines),
    "training-at-scale": Measurement(training_at_scale),
    "daily-retraining": Measurement(daily_retraining, needs_movielens=True),
    "continuation-schedules": Measurement(continuation_schedules, needs_movielens=True),
    "calibration": Measurement(calibration, needs_movielens=True),
    "evaluation-movielens": Measurement(evaluation_movielens, needs_movielens=True),
}


def write(name: str, command: str, body: str, seconds: float) -> Path:
    """The generated page fragment, written whole (a temporary file renamed over the old one)."""
    OUT.mkdir(parents=True, exist_ok=True)
    header = (f"<!-- written by `python benchmarks/results.py {name}`; rerun it rather than editing -->\n\n"
              f"*Measured {time.strftime('%Y-%m-%d')} on {cpu_model()}, {os.cpu_count()} cores; {versions()}; "
              f"{seconds / 60:.1f} minutes. Command:* `{command}`\n\n")
    target = OUT / f"{name}.md"
    temporary = target.with_suffix(".md.partial")
    temporary.write_text(header + body.strip() + "\n", encoding="utf-8")
    os.replace(temporary, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"measurements to run (default: all): {', '.join(MEASUREMENTS)}")
    parser.add_argument("--list", action="store_true", help="list the measurements and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(MEASUREMENTS))
        return
    unknown = sorted(set(args.names) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement(s) {unknown}; known: {list(MEASUREMENTS)}")
    for name in args.names or list(MEASUREMENTS):
        measurement = MEASUREMENTS[name]
        if measurement.needs_movielens and not (ML100K / "ml-100k.inter").is_file():
            print(f"skipping {name}: MovieLens-100k is not at {ML100K} (din-export datasets ml-100k --to {ML100K})")
            continue
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"results-{name}-") as scratch:
            command, body = measurement.measure(Path(scratch))
        print(f"wrote {write(name, command, body, time.perf_counter() - started)}", flush=True)


if __name__ == "__main__":
    main()
