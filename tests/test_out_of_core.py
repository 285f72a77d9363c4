"""`prepare` out of core: DuckDB sorts the log (spilling past --memory-limit), numpy handles blocks of whole users.
Neither the block size, nor the memory limit, nor the file format, nor the layout may change a single sample."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from din_export.cli import main
from din_export.data.prepare import prepare
from din_export.data.prepared import SEQUENCE_STORE, SPEC_FILE
from din_export.data.rules import Sources
from din_export.data.samples import read_table
from din_export.data.spec import load_spec
from din_export.data.synthetic import LOG_SPEC_PATH, generate_log

SPLITS = ("train", "valid", "test")
LABELLED_RECIPE = """
label = "label"
[log]
user = "user"
item = "item"
time = "t"
label = "clicked"
[items]
key = "item"
[users]
key = "user"
[split]
valid = 2
test = 2
[features.user]
kind = "categorical"
column = "user"
[features.item]
kind = "categorical"
column = "item"
[features.category]
kind = "categorical"
source = "items"
column = "category"
[features.age]
kind = "numeric"
source = "users"
column = "age"
[features.depth]
kind = "numeric"
column = "depth"
fill = "previous"
[features.hist_item]
kind = "sequence"
shares = "item"
max_len = 8
[features.hist_category]
kind = "sequence"
shares = "category"
max_len = 5
"""


def labelled_log(folder: Path, events: int = 5000, seed: int = 3) -> Sources:
    """Clicks and non-clicks (only clicks are behaviours) of users with text keys, at coarse times (many ties),
    with item and user attributes that have gaps."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = np.array([f"{prefix}{n}" for n, prefix in zip(range(150), ["u", "U", "é", "Z"] * 40, strict=False)])
    pq.write_table(pa.table({
        "user": pa.array(names[rng.integers(0, len(names), events)]),
        "item": pa.array(rng.integers(1, 400, events)),
        "t": pa.array(rng.integers(0, 40, events)),
        "clicked": pa.array((rng.random(events) < 0.6).astype(np.int64)),
        "depth": pa.array(rng.integers(1, 9, events).astype(np.float64), mask=rng.random(events) < 0.3),
    }), folder / "log.parquet")
    pq.write_table(pa.table({"item": np.arange(1, 420), "category": pa.array([f"c{i % 13}" for i in range(419)], mask=rng.random(419) < 0.1)}),
                   folder / "items.parquet")
    pq.write_table(pa.table({"user": names, "age": pa.array(rng.integers(18, 70, len(names)), mask=rng.random(len(names)) < 0.1)}),
                   folder / "users.parquet")
    (folder / "recipe.toml").write_text(LABELLED_RECIPE)
    return Sources(folder / "log.parquet", folder / "items.parquet", folder / "users.parquet")


def positive_log(folder: Path, events: int = 6000) -> Sources:
    """A generated log of positives (negatives to draw) with the built-in recipe's attributes and 'previous' fill."""
    log, items, users = generate_log(events, seed=5)
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in (("log", log), ("items", items), ("users", users)):
        pq.write_table(table, folder / f"{name}.parquet")
    (folder / "recipe.toml").write_text(LOG_SPEC_PATH.read_text())
    return Sources(folder / "log.parquet", folder / "items.parquet", folder / "users.parquet")


LOGS = {"labelled": labelled_log, "positives": positive_log}


def assert_same_files(one: Path, other: Path) -> None:
    files = sorted(p.name for p in one.glob("*.parquet"))
    assert files == sorted(p.name for p in other.glob("*.parquet"))
    for name in files:
        assert pq.read_table(one / name).equals(pq.read_table(other / name)), name


def same_summary(one: dict, other: dict) -> bool:
    return {k: v for k, v in one.items() if k not in ("seconds", "sort_spilled_bytes")} == {
        k: v for k, v in other.items() if k not in ("seconds", "sort_spilled_bytes")}


@pytest.mark.parametrize("which", sorted(LOGS))
def test_blocks_of_a_few_users_change_no_sample(which: str, tmp_path: Path) -> None:
    """Blocks of about 97 events (whole users each; negatives drawn per block) give the samples of one block."""
    sources = LOGS[which](tmp_path / "log")
    recipe = tmp_path / "log" / "recipe.toml"
    for layout in ("inline", "reference"):
        whole = prepare(recipe, sources, tmp_path / f"whole-{layout}", layout=layout)
        small = prepare(recipe, sources, tmp_path / f"small-{layout}", layout=layout, block_events=97)
        assert_same_files(tmp_path / f"whole-{layout}", tmp_path / f"small-{layout}")
        assert same_summary(whole, small)


def test_a_log_larger_than_the_sort_memory_spills_and_changes_no_sample(tmp_path: Path) -> None:
    """600,000 events sorted within 24 MB: DuckDB writes part of the sort to disk, the samples stay the same, and
    the spill is gone afterwards."""
    sources = positive_log(tmp_path / "log", events=600_000)
    recipe = tmp_path / "log" / "recipe.toml"
    roomy = prepare(recipe, sources, tmp_path / "roomy", layout="reference")
    tight = prepare(recipe, sources, tmp_path / "tight", layout="reference", memory_limit="24MB")
    assert roomy["sort_spilled_bytes"] == 0 and tight["sort_spilled_bytes"] > 0
    assert_same_files(tmp_path / "roomy", tmp_path / "tight")
    assert same_summary(roomy, tight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "roomy", "tight"]


@pytest.mark.parametrize("which", sorted(LOGS))
def test_reference_layout_rebuilds_inline_row_for_row_with_ties_labels_and_attributes(which: str, tmp_path: Path) -> None:
    sources = LOGS[which](tmp_path / "log")
    recipe = tmp_path / "log" / "recipe.toml"
    prepare(recipe, sources, tmp_path / "inline")
    prepare(recipe, sources, tmp_path / "reference", layout="reference")
    spec = load_spec(tmp_path / "reference" / SPEC_FILE)
    for name in SPLITS:
        expected = pq.read_table(tmp_path / "inline" / f"{name}.parquet")
        rebuilt = read_table(tmp_path / "reference" / f"{name}.parquet", spec)
        assert rebuilt.select(expected.column_names).equals(expected), name
    assert (tmp_path / "reference" / SEQUENCE_STORE).is_file()


def test_labelled_log_keeps_ties_out_of_histories_and_only_clicks_in(tmp_path: Path) -> None:
    sources = labelled_log(tmp_path / "log", events=800)
    prepare(tmp_path / "log" / "recipe.toml", sources, tmp_path / "out")
    log = pq.read_table(sources.log).to_pydict()
    clicks: dict[str, list[tuple[int, int, int]]] = {}
    for row, (user, item, t, clicked) in enumerate(zip(log["user"], log["item"], log["t"], log["clicked"], strict=True)):
        if clicked:
            clicks.setdefault(user, []).append((t, row, item))
    samples = pa.concat_tables(pq.read_table(tmp_path / "out" / f"{name}.parquet") for name in SPLITS)
    assert samples.num_rows == len(log["user"])  # a labelled log: no negatives drawn
    for user, time, history in zip(*(samples.column(c).to_pylist() for c in ("user", "event_time", "hist_item")), strict=True):
        expected = [item for t, _, item in sorted(clicks.get(user, [])) if t < time][-8:]
        assert history == expected


def test_a_csv_log_gives_the_parquet_logs_samples(tmp_path: Path) -> None:
    sources = positive_log(tmp_path / "log")
    pacsv.write_csv(pq.read_table(sources.log), tmp_path / "log.csv")
    recipe = tmp_path / "log" / "recipe.toml"
    prepare(recipe, sources, tmp_path / "from-parquet", layout="reference")
    prepare(recipe, Sources(tmp_path / "log.csv", sources.items, sources.users), tmp_path / "from-csv", layout="reference")
    assert_same_files(tmp_path / "from-parquet", tmp_path / "from-csv")


def test_a_bad_memory_limit_is_a_one_line_error(tmp_path: Path) -> None:
    sources = positive_log(tmp_path / "log", events=500)
    result = CliRunner().invoke(main, ["prepare", "--spec", str(tmp_path / "log" / "recipe.toml"), "--log", str(sources.log),
                                       "--items", str(sources.items), "--users", str(sources.users), "--out", str(tmp_path / "out"),
                                       "--memory-limit", "plenty"])
    assert result.exit_code == 2
    assert "memory limit 'plenty' is not a size" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_the_splits_share_one_encoded_store_in_mapped_pages(tmp_path: Path) -> None:
    """Train, valid and test point into one store: it is read and encoded once, into memory-mapped pages."""
    from din_export.data.source import DataSource
    from din_export.data.splits import load_data

    sources = positive_log(tmp_path / "log")
    out = tmp_path / "reference"
    prepare(tmp_path / "log" / "recipe.toml", sources, out, layout="reference")
    data = load_data(DataSource(out / "train.parquet", out / "valid.parquet", out / "test.parquet"), load_spec(out / SPEC_FILE), 0)
    for name in ("hist_item_id", "hist_category"):
        stores = [data.splits[split].windows[name].values for split in SPLITS]
        assert stores[0] is stores[1] is stores[2]
        assert isinstance(stores[0].base, np.memmap) and len(stores[0]) == pq.read_metadata(out / SEQUENCE_STORE).num_rows


@pytest.mark.slow
def test_train_and_export_takes_the_prepared_folder(tmp_path: Path) -> None:
    """--data FOLDER reads the folder's three splits and spec.toml: the same model as naming each file."""
    import json

    sources = positive_log(tmp_path / "log")
    out = tmp_path / "prepared"
    prepare(tmp_path / "log" / "recipe.toml", sources, out, layout="reference")
    common = ["--epochs", "1", "--embedding-dim", "4", "--quiet"]
    runner = CliRunner()
    by_folder = runner.invoke(main, ["train-and-export", "--data", str(out), "--out", str(tmp_path / "a"), *common])
    by_files = runner.invoke(main, ["train-and-export", "--data", str(out / "train.parquet"), "--valid", str(out / "valid.parquet"),
                                    "--test", str(out / "test.parquet"), "--spec", str(out / SPEC_FILE), "--out", str(tmp_path / "b"), *common])
    assert by_folder.exit_code == 0 and by_files.exit_code == 0, by_folder.output + by_files.output
    manifests = [json.loads((tmp_path / name / "manifest.json").read_text()) for name in "ab"]
    assert manifests[0]["metrics"]["test"] == manifests[1]["metrics"]["test"]
    assert manifests[0]["data"]["paths"]["valid"] == str((out / "valid.parquet").resolve())
    not_prepared = runner.invoke(main, ["train-and-export", "--data", str(tmp_path / "log"), "--out", str(tmp_path / "c"), *common])
    assert not_prepared.exit_code == 2 and "a folder must be one `din-export prepare` wrote" in not_prepared.output
