"""What `din-export prepare` reads: the [log], [items], [users], [sampling] and [split] sections of a recipe,
and the log and attribute files themselves (CSV, TSV, Parquet, or a glob or folder of Parquet parts)."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from din_runtime.commands import first_line

from .spec import SpecError
from .tables import TableError

TAB_SEPARATED = {".tsv", ".txt", ".inter", ".item", ".user"}  # .inter/.item/.user: RecBole's atomic files
PARQUET = {".parquet", ".pq"}
SPLIT_MODES = ("per_user", "global_time")
STRATEGIES = ("uniform", "popularity")


@dataclass(frozen=True)
class SplitConfig:
    """per_user: each user's last `test` events to test, the `valid` before them to validation (an int is a count,
    a float below 1 a fraction of the user's events). global_time: events from the time quantile 1 - test on go to
    test, from 1 - test - valid to validation; or explicit `valid_from` / `test_from` timestamps."""

    mode: str = "per_user"
    valid: float = 1
    test: float = 1
    valid_from: float | None = None
    test_from: float | None = None


@dataclass(frozen=True)
class SamplingConfig:
    negatives: int = 1
    strategy: str = "uniform"
    seed: int = 0


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
        raise SpecError(f"[{name}]: unknown key(s) {unknown}; expected some of {sorted(allowed)}")
    return section


def _amount(section: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (isinstance(value, float) and value >= 1):
        raise SpecError(f"[{section}] {key} must be a count (integer >= 0) or a fraction (0 <= x < 1), not {value!r}")
    return value


def log_config_from_dict(data: dict[str, Any]) -> LogConfig:
    """Validate the prepare sections of a recipe; every error names the section and key."""
    if "log" not in data:
        raise SpecError("a recipe for `prepare` needs a [log] section naming the user, item and time columns")
    log = _table(data, "log", {"user", "item", "time", "label", "label_min"})
    for key in ("user", "item", "time"):
        if not isinstance(log.get(key), str):
            raise SpecError(f"[log] {key} must name a column of the log")
    items = _table(data, "items", {"key"})
    users = _table(data, "users", {"key"})
    sampling = _table(data, "sampling", {"negatives", "strategy", "seed"})
    split = _table(data, "split", {"mode", "valid", "test", "valid_from", "test_from"})
    negatives = sampling.get("negatives", 0 if "label" in log else 1)
    if not isinstance(negatives, int) or negatives < 0:
        raise SpecError(f"[sampling] negatives must be an integer >= 0, not {negatives!r}")
    if "label" in log and negatives:
        raise SpecError("[sampling] negatives: the log has labels ([log] label), so no negatives are drawn; set negatives = 0")
    if "label" not in log and not negatives:
        raise SpecError("[sampling] negatives: a log without labels holds only positives and needs negatives >= 1")
    strategy = sampling.get("strategy", "uniform")
    if strategy not in STRATEGIES:
        raise SpecError(f"[sampling] strategy must be one of {STRATEGIES}, not {strategy!r}")
    mode = split.get("mode", "per_user")
    if mode not in SPLIT_MODES:
        raise SpecError(f"[split] mode must be one of {SPLIT_MODES}, not {mode!r}")
    if mode == "per_user" and ("valid_from" in split or "test_from" in split):
        raise SpecError("[split] valid_from / test_from apply to mode = 'global_time'")
    return LogConfig(
        user=log["user"], item=log["item"], time=log["time"], label=log.get("label"), label_min=log.get("label_min"),
        item_key=items.get("key"), user_key=users.get("key"),
        sampling=SamplingConfig(negatives=negatives, strategy=strategy, seed=int(sampling.get("seed", 0))),
        split=SplitConfig(mode=mode, valid=_amount("split", "valid", split.get("valid", 1 if mode == "per_user" else 0.1)),
                          test=_amount("split", "test", split.get("test", 1 if mode == "per_user" else 0.1)),
                          valid_from=split.get("valid_from"), test_from=split.get("test_from")),
    )


def source_files(path: str | Path) -> list[Path]:
    """The files a source names: one file, a folder's files, or a glob's matches, in name order."""
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text))
    elif Path(text).is_dir():
        files = sorted(p for p in Path(text).iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    else:
        files = [Path(text)]
    if not files or not all(f.is_file() for f in files):
        raise TableError(f"{path}: no such file, folder or matching files")
    return files


def csv_options(file: Path, columns: list[str]) -> dict[str, Any]:
    """How a CSV or TSV file is parsed (tab-separated files have no quoting), reading only `columns`."""
    tab = file.suffix.lower() in TAB_SEPARATED
    return {"parse_options": pacsv.ParseOptions(delimiter="\t" if tab else ",", quote_char=False if tab else '"'),
            "convert_options": pacsv.ConvertOptions(include_columns=columns)}


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """pyarrow's reading errors as one-line TableErrors naming the source."""
    try:
        yield
    except KeyError as error:
        raise TableError(f"{path}: a column named in the recipe is absent ({error.args[0]})") from None
    except (pa.ArrowInvalid, OSError) as error:
        raise TableError(f"{path}: cannot be read ({first_line(error)})") from None


def checked_files(path: str | Path, columns: list[str]) -> tuple[list[Path], bool]:
    """(the source's files, whether they are Parquet), checked: one format, and Parquet parts holding `columns`
    (CSV columns are checked as they are read)."""
    files = source_files(path)
    suffixes = {f.suffix.lower() for f in files}
    if suffixes <= PARQUET:
        names = pads.dataset([str(f) for f in files], format="parquet").schema.names
        absent = [c for c in columns if c not in names]
        if absent:
            raise TableError(f"{path}: column(s) {absent} named in the recipe are absent (found {names})")
        return files, True
    if len(suffixes) > 1:
        raise TableError(f"{path}: mixed file types {sorted(suffixes)}")
    return files, False


def read_source(path: str | Path, columns: list[str]) -> pa.Table:
    """Read only `columns` from a log or attribute table; the format follows the file suffix."""
    with reading(path):
        files, parquet = checked_files(path, columns)
        if parquet:
            return pads.dataset([str(f) for f in files], format="parquet").to_table(columns=columns)
        return pa.concat_tables([pacsv.read_csv(file, **csv_options(file, columns)) for file in files])
