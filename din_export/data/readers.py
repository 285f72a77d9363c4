"""The one reader of tables: CSV, TSV (also RecBole's atomic files), Parquet, or a glob or folder of Parquet parts,
for behaviour logs, item and user tables and sample tables alike. pyarrow does the parsing: its CSV reader is
multithreaded and typed, and Parquet list columns arrive as offsets plus flat values."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from din_runtime.errors import first_line

from ..errors import TableError

TAB_SEPARATED = {".tsv", ".txt", ".inter", ".item", ".user"}  # .inter/.item/.user: RecBole's atomic files
COMMA_SEPARATED = {".csv"}
PARQUET = {".parquet", ".pq"}


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


def csv_options(file: Path, columns: list[str] | None, column_types: dict[str, pa.DataType] | None = None) -> dict[str, Any]:
    """How a CSV or TSV file is parsed (tab-separated files have no quoting), reading only `columns` (None: all),
    with `column_types` where given (sequence cells stay text, to be split)."""
    tab = file.suffix.lower() in TAB_SEPARATED
    convert = pacsv.ConvertOptions(include_columns=columns or [], column_types=column_types or {})
    return {"parse_options": pacsv.ParseOptions(delimiter="\t" if tab else ",", quote_char=False if tab else '"'),
            "convert_options": convert}


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """pyarrow's reading errors as one-line TableErrors naming the source."""
    try:
        yield
    except KeyError as error:
        raise TableError(f"{path}: a column named in the recipe is absent ({error.args[0]})") from None
    except (pa.ArrowInvalid, OSError) as error:
        raise TableError(f"{path}: cannot be read ({first_line(error)})") from None


def checked_files(path: str | Path, columns: list[str] | None) -> tuple[list[Path], bool]:
    """(the source's files, whether they are Parquet), checked: one known format, and Parquet parts holding
    `columns` (CSV columns are checked as they are read)."""
    files = source_files(path)
    suffixes = {f.suffix.lower() for f in files}
    unknown = sorted(suffixes - TAB_SEPARATED - COMMA_SEPARATED - PARQUET)
    if unknown:
        raise TableError(f"{path}: unknown table format {unknown[0]!r}; use .csv, .tsv or .parquet (or a folder or glob of Parquet parts)")
    if suffixes <= PARQUET and columns is not None:
        names = pads.dataset([str(f) for f in files], format="parquet").schema.names
        absent = [c for c in columns if c not in names]
        if absent:
            raise TableError(f"{path}: column(s) {absent} named in the recipe are absent (found {names})")
        return files, True
    if len(suffixes) > 1:
        raise TableError(f"{path}: mixed file types {sorted(suffixes)}")
    return files, False


def read_source(path: str | Path, columns: list[str] | None = None, column_types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Read `columns` (None: every column) from a table; the format follows the file suffix."""
    with reading(path):
        files, parquet = checked_files(path, columns)
        if parquet or {f.suffix.lower() for f in files} <= PARQUET:
            return pads.dataset([str(f) for f in files], format="parquet").to_table(columns=columns)
        return pa.concat_tables([pacsv.read_csv(file, **csv_options(file, columns, column_types)) for file in files])
