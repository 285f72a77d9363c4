"""Daily retraining, measured: a log cut by global time into a first stretch and then days, each day's model scored
on the next day's events, three ways, through the real CLI:

- stale: the first day's model, served unchanged;
- cold:  `train-and-export` from scratch on every event so far;
- warm:  `train-and-export --warm-start` of yesterday's warm bundle on today's events only (`prepare --since`).

Every day's cold and warm runs validate on the same last part of the day and are tested on the same next day (the
recipe's [split] becomes global_time with explicit `valid_from` / `test_from`); the test rows are scored by
din_runtime (what serves). Training seconds are the manifests' own (the training phase, without export).

    python benchmarks/daily_retraining.py --data movielens --seeds 0 1 2
    python benchmarks/daily_retraining.py --data generated --seeds 0 1 2
    python benchmarks/daily_retraining.py --data movielens --schedules   # the continuation schedules tried
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
BIN = Path(sys.executable).parent
# The first stretch, then days of equal event counts: cumulative fractions of the log's events by time.
BOUNDARIES = (0.0, 0.6, 0.7, 0.8, 0.9, 1.0)
VALID_SHARE = 0.2  # of a day's events, the last part validates (early stopping)
# The continuation schedules --schedules compares (epochs, learning rate, warm-up steps).
SCHEDULES = [(1, 1e-3, 0), (3, 1e-3, 0), (3, 5e-3, 0), (5, 1e-3, 0), (3, 5e-3, 100)]


def _movielens(folder: Path) -> tuple[Path, Path, Path]:
    """(log as Parquet, item table, recipe) for MovieLens-100k ids + genre."""
    log = pacsv.read_csv(ML100K / "ml-100k.inter", parse_options=pacsv.ParseOptions(delimiter="\t"))
    pq.write_table(log, folder / "log.parquet")
    return folder / "log.parquet", ML100K / "ml-100k.item", ROOT / "examples" / "movielens-100k-ids-genre.toml"


def _generated(folder: Path, events: int) -> tuple[Path, Path, Path]:
    """(log, item table, recipe) of the built-in generated log with a catalogue drifting over time."""
    sys.path.insert(0, str(ROOT))
    from din_export.data.synthetic import LOG_SPEC_PATH, generate_log

    log, items, users = generate_log(events, seed=11, drift=0.5)
    pq.write_table(log, folder / "log.parquet")
    pq.write_table(items, folder / "items.parquet")
    pq.write_table(users, folder / "users.parquet")
    return folder / "log.parquet", folder / "items.parquet", LOG_SPEC_PATH


def _recipe(base: Path, out: Path, valid_from: float, test_from: float) -> Path:
    """The base recipe with [split] a global-time split at explicit times."""
    text = re.sub(r"\[split\][^\[]*", f"[split]\nmode = \"global_time\"\nvalid_from = {valid_from!r}\ntest_from = {test_from!r}\n\n",
                  base.read_text())
    out.write_text(text)
    return out


def _cli(*args: str) -> str:
    result = subprocess.run([str(BIN / "din-export"), *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"din-export {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout


def _test_auc(bundle: Path, table: Path) -> float:
    sys.path.insert(0, str(ROOT))
    from din_export.scoring import bundle_table
    from din_export.training.metrics import evaluate

    scored = bundle_table(bundle, table)
    return float(evaluate(scored.labels, scored.probabilities, scored.groups)["auc"])


class Days:
    """The log cut into days: each day's prepared samples (all events so far, and the day's alone)."""

    def __init__(self, folder: Path, log: Path, items: Path, recipe: Path, users: Path | None) -> None:
        self.folder, self.log, self.items, self.recipe, self.users = folder, log, items, recipe, users
        table = pq.read_table(log)
        self.time_column = next(c for c in table.column_names if c.startswith("timestamp"))
        self.times = np.sort(table[self.time_column].to_numpy().astype(np.float64))
        self.table = table

    def at(self, fraction: float) -> float:
        """The time from which `fraction` of the events lie before it (a real event time, so ties stay together)."""
        return float(self.times[min(int(round(fraction * len(self.times))), len(self.times) - 1)])

    def prepare(self, day: int, since: bool) -> Path:
        """Samples of day `day` (0: the first stretch): train to its valid part, valid, and test = the next day."""
        start, end, after = BOUNDARIES[day], BOUNDARIES[day + 1], BOUNDARIES[day + 2]
        out = self.folder / f"day{day}-{'window' if since else 'all'}"
        if out.exists():
            return out
        log = self.folder / f"log-to-day{day + 1}.parquet"
        if not log.exists():
            column = self.table[self.time_column].to_numpy()
            pq.write_table(self.table.filter(pa.array(column < self.at(after) if after < 1 else np.ones(len(column), bool))), log)
        recipe = _recipe(self.recipe, self.folder / f"recipe-day{day}.toml", self.at(end - VALID_SHARE * (end - start if day else 0.1)),
                         self.at(end))
        args = ["prepare", "--spec", str(recipe), "--log", str(log), "--items", str(self.items), "--out", str(out)]
        if self.users is not None:
            args += ["--users", str(self.users)]
        if since:
            args += ["--since", repr(self.at(start))]
        _cli(*args)
        return out


EPOCHS: list[str] = []  # --epochs N: every training's most epochs (the smoke test's); default the CLI's own


def _train(data: Path, out: Path, seed: int, parent: Path | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    args = ["train-and-export", "--data", str(data), "--out", str(out), "--seed", str(seed), "--quiet", *EPOCHS, *extra]
    _cli(*(args + (["--warm-start", str(parent)] if parent else [])))
    return json.loads((out / "manifest.json").read_text())


def run_days(days: Days, seeds: list[int], last_day: int) -> list[dict[str, Any]]:
    """Per seed and day: stale, cold and warm AUC on the next day, and cold and warm training seconds."""
    rows = []
    for seed in seeds:
        first = _train(days.prepare(0, since=False), days.folder / f"s{seed}-cold0", seed)
        stale, warm_parent = days.folder / f"s{seed}-cold0", days.folder / f"s{seed}-cold0"
        for day in range(1, last_day + 1):
            test = days.prepare(day, since=False) / "test.parquet"
            cold = _train(days.prepare(day, since=False), days.folder / f"s{seed}-cold{day}", seed)
            warm = _train(days.prepare(day, since=True), days.folder / f"s{seed}-warm{day}", seed, warm_parent)
            warm_parent = days.folder / f"s{seed}-warm{day}"
            row = {"seed": seed, "day": day, "stale_auc": _test_auc(stale, test), "cold_auc": _test_auc(days.folder / f"s{seed}-cold{day}", test),
                   "warm_auc": _test_auc(warm_parent, test), "cold_seconds": cold["seconds"]["train"],
                   "warm_seconds": warm["seconds"]["train"], "first_seconds": first["seconds"]["train"],
                   "gained": {k: v["gained"] for k, v in warm["lineage"]["vocabularies"].items()},
                   "warm_best_epoch": warm["metrics"]["best_epoch"], "cold_best_epoch": cold["metrics"]["best_epoch"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def run_schedules(days: Days, seeds: list[int]) -> list[dict[str, Any]]:
    """Day 1's continuation under each of SCHEDULES, against day 1's cold model, on day 2's events."""
    rows = []
    for seed in seeds:
        parent = days.folder / f"s{seed}-cold0"
        if not parent.exists():
            _train(days.prepare(0, since=False), parent, seed)
        test = days.prepare(1, since=False) / "test.parquet"
        cold = _train(days.prepare(1, since=False), days.folder / f"s{seed}-cold1", seed)
        cold_auc = _test_auc(days.folder / f"s{seed}-cold1", test)
        for epochs, rate, warmup in SCHEDULES:
            out = days.folder / f"s{seed}-warm1-{epochs}-{rate}-{warmup}"
            warm = _train(days.prepare(1, since=True), out, seed, parent,
                          ("--epochs", str(epochs), "--learning-rate", str(rate), "--warmup-steps", str(warmup)))
            row = {"seed": seed, "epochs": epochs, "learning_rate": rate, "warmup_steps": warmup, "auc": _test_auc(out, test),
                   "cold_auc": cold_auc, "seconds": warm["seconds"]["train"], "cold_seconds": cold["seconds"]["train"],
                   "best_epoch": warm["metrics"]["best_epoch"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The goals' figures: warm's AUC gap to cold (mean over days and seeds), its share of cold's training time,
    and on how many days (of every seed) warm beat stale."""
    gap = float(np.mean([r["cold_auc"] - r["warm_auc"] for r in rows]))
    time_share = float(np.sum([r["warm_seconds"] for r in rows]) / np.sum([r["cold_seconds"] for r in rows]))
    beats = sum(r["warm_auc"] > r["stale_auc"] for r in rows)
    return {"cold_minus_warm_auc": gap, "warm_time_share": time_share, "warm_beats_stale": f"{beats} of {len(rows)}"}


def markdown(rows: list[dict[str, Any]], data: str) -> str:
    """Per day, means over seeds (± their standard deviation), then the goals' summary; CPU printed beside it by main."""
    lines = ["| day | stale AUC | cold AUC | warm AUC | cold train s | warm train s | keys gained (warm) |", "|---|---|---|---|---|---|---|"]
    for day in sorted({r["day"] for r in rows}):
        of_day = [r for r in rows if r["day"] == day]

        def cell(key: str, digits: int = 4, of_day: list[dict[str, Any]] = of_day) -> str:
            values = np.array([r[key] for r in of_day])
            return f"{values.mean():.{digits}f}" + (f" ± {values.std():.{digits}f}" if len(values) > 1 else "")
        gained = ", ".join(f"{k} {int(np.mean([r['gained'][k] for r in of_day]))}" for k in of_day[0]["gained"] if of_day[0]["gained"][k])
        lines.append(f"| {day} | {cell('stale_auc')} | {cell('cold_auc')} | {cell('warm_auc')} | {cell('cold_seconds', 1)} | "
                     f"{cell('warm_seconds', 1)} | {gained or '-'} |")
    result = summary(rows)
    seeds = sorted({r["seed"] for r in rows})
    lines += ["", "| data | seeds | cold − warm AUC (mean over days and seeds) | warm training time / cold's | days warm beat stale |",
              "|---|---|---:|---:|---:|",
              f"| {data} | {', '.join(map(str, seeds))} | {result['cold_minus_warm_auc']:+.4f} | {result['warm_time_share']:.3f} | "
              f"{result['warm_beats_stale']} |"]
    return "\n".join(lines) + "\n"


def schedules_markdown(rows: list[dict[str, Any]]) -> str:
    """One line per continuation schedule: its next-day AUC and training seconds beside the cold model's."""
    lines = ["| epochs | learning rate | warm-up steps | warm AUC | cold AUC | warm train s | cold train s | best epoch |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['epochs']} | {r['learning_rate']:g} | {r['warmup_steps']} | {r['auc']:.4f} | {r['cold_auc']:.4f} | "
                     f"{r['seconds']:.1f} | {r['cold_seconds']:.1f} | {r['best_epoch']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("movielens", "generated"), default="movielens")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--days", type=int, default=len(BOUNDARIES) - 3, help="Days compared (each needs the next as its test).")
    parser.add_argument("--events", type=int, default=100_000, help="Events of the generated log.")
    parser.add_argument("--schedules", action="store_true", help="Compare the continuation schedules on day 1 instead.")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    parser.add_argument("--epochs", type=int, help="Most epochs of every training (default: train-and-export's, cold and warm alike).")
    parser.add_argument("--render", type=Path, help="Print the tables of rows a run wrote with --json, and stop.")
    args = parser.parse_args()
    if args.render:
        rows = json.loads(args.render.read_text())
        print(schedules_markdown(rows) if args.schedules else markdown(rows, args.data))
        return
    if args.epochs is not None:
        EPOCHS[:] = ["--epochs", str(args.epochs)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="daily-") as scratch:
        folder = Path(scratch)
        if args.data == "movielens":
            log, items, recipe = _movielens(folder)
            users = None
        else:
            log, items, recipe = _generated(folder, args.events)
            users = folder / "users.parquet"
        days = Days(folder, log, items, recipe, users)
        rows = run_schedules(days, args.seeds) if args.schedules else run_days(days, args.seeds, args.days)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(schedules_markdown(rows) if args.schedules else markdown(rows, args.data))
    print(f"CPU: {cpu_model()}; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
