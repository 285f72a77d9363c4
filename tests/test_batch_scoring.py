"""`din-runtime predict`: a table scored in chunks equals Predictor.predict on the same rows."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from din_export.data.synthetic import generate
from din_runtime import Predictor


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "din_runtime", "predict", *map(str, args)], capture_output=True, text=True, timeout=120)


def read_scores(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    return rows[0], np.array([float(r[1]) for r in rows[1:]], dtype=np.float32)


def test_csv_and_parquet_scored_in_chunks_match_predict(bundle: Path, tmp_path: Path) -> None:
    table = generate(300, seed=11)
    expected = Predictor.load(bundle, providers="cpu").predict({n: table.column(n).to_pylist() for n in table.column_names})
    text_table = table
    for name in ("hist_item_id", "hist_cate_id"):
        joined = pc.binary_join(pc.cast(table.column(name), pa.list_(pa.string())), " ")
        text_table = text_table.set_column(text_table.column_names.index(name), name, joined)
    pacsv.write_csv(text_table, tmp_path / "in.csv")
    pq.write_table(table, tmp_path / "in.parquet")
    for source in ("in.csv", "in.parquet"):
        result = run(bundle, tmp_path / source, tmp_path / "out.csv", "--id-column", "user_id", "--read-rows", "37", "--providers", "cpu")
        assert result.returncode == 0, result.stderr
        assert "300 rows scored" in result.stdout
        header, scores = read_scores(tmp_path / "out.csv")
        assert header == ["user_id", "probability"]
        assert np.max(np.abs(scores - expected)) <= 1e-6


def test_bad_rows_fail_with_one_line_and_leave_no_output(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("user_id,item_id,cate_id,price,hist_item_id,hist_cate_id\n1,2,3,cheap,1 2,3 4\n")
    result = run(bundle, tmp_path / "bad.csv", tmp_path / "out.csv", "--quiet")
    assert result.returncode == 2 and "feature 'price', row 0" in result.stderr and result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out.csv").exists()
