"""`prepare --since`: only events at or after a time become samples, while histories, `previous` fills and the
negatives' anti-join still see every earlier event. A day's window, for a model retrained daily."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_out_of_core import SPLITS, assert_same_files, labelled_log, positive_log

from din_export.cli import main
from din_export.data.prepare import prepare
from din_export.data.prepared import SPEC_FILE, TIME_COLUMN
from din_export.data.samples import read_table
from din_export.data.spec import load_spec


def samples(folder: Path) -> list[tuple]:
    """Every sample of a prepared folder, whatever its split, as sorted hashable rows (histories as tuples)."""
    spec = load_spec(folder / SPEC_FILE)
    table = pa.concat_tables([read_table(folder / f"{split}.parquet", spec) for split in SPLITS])
    rows = table.select(sorted(table.column_names)).to_pylist()
    return sorted((tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in row.items()) for row in rows), key=repr)


def test_a_window_of_a_labelled_log_is_the_whole_logs_samples_from_then_on(tmp_path: Path) -> None:
    """With labels nothing is drawn, so the window's samples are exactly the full run's samples at or after the
    cut, histories (reaching back before it) and `previous` fills included."""
    sources = labelled_log(tmp_path / "log")
    recipe = tmp_path / "log" / "recipe.toml"
    prepare(recipe, sources, tmp_path / "full")
    summary = prepare(recipe, sources, tmp_path / "window", since=20)
    full = [row for row in samples(tmp_path / "full") if dict(row)[TIME_COLUMN] >= 20]
    window = samples(tmp_path / "window")
    assert window == full and summary["since"] == 20
    assert any(len(dict(row)["hist_item"]) > 0 and dict(row)[TIME_COLUMN] == 20 for row in window)  # histories from before
    assert summary["events"] == 5000 and sum(summary["rows"].values()) == len(window) < 5000


@pytest.mark.parametrize("layout", ["inline", "reference"])
def test_a_window_of_positives_draws_negatives_for_its_own_events_only(layout: str, tmp_path: Path) -> None:
    sources = positive_log(tmp_path / "log")
    recipe = tmp_path / "log" / "recipe.toml"
    times = np.asarray(pq.read_table(sources.log).column("timestamp"), dtype=np.float64)
    since = float(np.quantile(times, 0.6))
    prepare(recipe, sources, tmp_path / "full", layout=layout)
    summary = prepare(recipe, sources, tmp_path / "window", layout=layout, since=since)
    window = samples(tmp_path / "window")
    label = load_spec(tmp_path / "window" / SPEC_FILE).label
    assert all(dict(row)[TIME_COLUMN] >= since for row in window)
    positives = [row for row in window if dict(row)[label] == 1]
    full_positives = [row for row in samples(tmp_path / "full") if dict(row)[label] == 1 and dict(row)[TIME_COLUMN] >= since]
    assert positives == full_positives  # the same events, with the histories the whole log gives them
    assert summary["negatives_drawn"] == summary["positives"] == len(positives) == len(window) - len(positives)
    # blocks of a few users give the same window, negatives included
    prepare(recipe, sources, tmp_path / "small", layout=layout, since=since, block_events=97)
    assert_same_files(tmp_path / "window", tmp_path / "small")


def test_since_with_a_global_time_split_cuts_the_window_and_a_bad_since_is_one_line(tmp_path: Path) -> None:
    sources = labelled_log(tmp_path / "log")
    recipe = tmp_path / "log" / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('[split]\nvalid = 2\ntest = 2', '[split]\nmode = "global_time"\nvalid = 0.2\ntest = 0.2'))
    prepare(recipe, sources, tmp_path / "window", since=20)
    spec = load_spec(tmp_path / "window" / SPEC_FILE)
    times = {split: np.asarray(read_table(tmp_path / "window" / f"{split}.parquet", spec).column(TIME_COLUMN)) for split in SPLITS}
    assert times["train"].min() >= 20 and times["train"].max() < times["valid"].min() <= times["valid"].max() < times["test"].min()
    runner = CliRunner()
    for since, message in (("soon", "--since 'soon' is not a number"), ("1e9", "no event of the log is at or after --since")):
        result = runner.invoke(main, ["prepare", "--spec", str(recipe), "--log", str(sources.log), "--items", str(sources.items),
                                      "--users", str(sources.users), "--out", str(tmp_path / "bad"), "--since", since])
        assert result.exit_code == 2 and result.output.count("\n") == 1 and message in result.output, result.output
        assert not (tmp_path / "bad").exists()
