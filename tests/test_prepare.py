"""`prepare` on real (MovieLens-100k) and generated logs: histories, leakage, negatives, splits, determinism."""

import json
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
from din_export.data.readers import read_source
from din_export.data.rules import Sources
from din_export.data.samples import TableError, read_table
from din_export.data.spec import SpecError, load_spec
from din_export.data.synthetic import LOG_SPEC_PATH, generate_log
from helpers import ML100K, ML100K_RECIPE

SPLITS = ("train", "valid", "test")


def write_log(folder: Path, events: int = 6000, seed: int = 0, parts: int = 1) -> Sources:
    log, items, users = generate_log(events, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    if parts == 1:
        pq.write_table(log, folder / "log.parquet")
        log_path = folder / "log.parquet"
    else:
        log_path = folder / "log-parts"
        log_path.mkdir()
        bounds = np.linspace(0, log.num_rows, parts + 1).astype(int)
        for i in range(parts):
            pq.write_table(log.slice(bounds[i], bounds[i + 1] - bounds[i]), log_path / f"part-{i}.parquet")
    pq.write_table(items, folder / "items.parquet")
    pq.write_table(users, folder / "users.parquet")
    return Sources(log_path, folder / "items.parquet", folder / "users.parquet")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sources, Path]:
    folder = tmp_path_factory.mktemp("log")
    sources = write_log(folder)
    prepare(LOG_SPEC_PATH, sources, folder / "samples")
    return sources, folder / "samples"


def read_splits(samples: Path) -> dict[str, pa.Table]:
    return {name: pq.read_table(samples / f"{name}.parquet") for name in SPLITS}


def reference_histories(log: pa.Table, user_col: str, item_col: str, time_col: str, users, times, max_len: int) -> list[list]:
    """The slow, obvious definition: the user's events strictly before the sample's time, log order for ties."""
    user, item, time = (log.column(c).to_numpy() for c in (user_col, item_col, time_col))
    order = np.lexsort((np.arange(len(user)), time, user))
    user, item, time = user[order], item[order], time[order]
    out = []
    for u, t in zip(users, times, strict=True):
        mask = (user == u) & (time < t)
        out.append(item[mask][-max_len:].tolist())
    return out


def check_histories(samples: Path, log: pa.Table, user_col: str, item_col: str, time_col: str, user_feature: str) -> None:
    rng = np.random.default_rng(0)
    for name, table in read_splits(samples).items():
        rows = rng.choice(table.num_rows, size=min(150, table.num_rows), replace=False)
        picked = table.take(pa.array(rows))
        expected = reference_histories(log, user_col, item_col, time_col, picked.column(user_feature).to_pylist(),
                                       picked.column("event_time").to_pylist(), 50)
        assert picked.column("hist_item_id").to_pylist() == expected, name


def test_histories_hold_only_earlier_events_on_movielens(ml100k_samples: Path) -> None:
    log = read_source(ML100K / "ml-100k.inter", ["user_id:token", "item_id:token", "timestamp:float"])
    check_histories(ml100k_samples, log, "user_id:token", "item_id:token", "timestamp:float", "user_id")


def test_histories_hold_only_earlier_events_on_generated_log(generated) -> None:
    sources, samples = generated
    check_histories(samples, pq.read_table(sources.log), "user_id", "item_id", "timestamp", "user_id")


def touched_pairs(log: pa.Table, user_col: str, item_col: str) -> set:
    return set(zip(log.column(user_col).to_pylist(), log.column(item_col).to_pylist(), strict=True))


@pytest.mark.parametrize("which", ["movielens", "generated"])
def test_negatives_are_never_items_the_user_touched(which: str, ml100k_samples: Path, generated) -> None:
    if which == "movielens":
        samples, log, cols = ml100k_samples, read_source(ML100K / "ml-100k.inter", ["user_id:token", "item_id:token"]), \
            ("user_id:token", "item_id:token")
    else:
        samples, log, cols = generated[1], pq.read_table(generated[0].log), ("user_id", "item_id")
    touched = touched_pairs(log, *cols)
    for table in read_splits(samples).values():
        labels = np.asarray(table.column("label"))
        pairs = list(zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), strict=True))
        negatives = [p for p, label in zip(pairs, labels, strict=True) if label == 0]
        assert negatives and not (set(negatives) & touched)
        assert all(p in touched for p, label in zip(pairs, labels, strict=True) if label == 1)
        assert (labels == 0).sum() == (labels == 1).sum()  # one negative per positive


def test_per_user_split_is_temporal(ml100k_samples: Path) -> None:
    tables = read_splits(ml100k_samples)
    last = {}
    for name in SPLITS:
        users = np.asarray(tables[name].column("user_id"))
        times = np.asarray(tables[name].column("event_time"))
        for u in np.unique(users)[:200]:
            first_here = times[users == u].min()
            if u in last:
                assert first_here >= last[u], (name, u)
            last[u] = times[users == u].max()
    summary = json.loads((ml100k_samples / "prepare.json").read_text())
    assert summary["events"] == 100_000 and summary["users"] == 943 and summary["items"] == 1682


def test_global_time_split_cuts_at_one_time(tmp_path: Path) -> None:
    sources = write_log(tmp_path / "log", events=3000)
    recipe = LOG_SPEC_PATH.read_text().replace('mode = "per_user"\nvalid = 1\ntest = 1', 'mode = "global_time"\nvalid = 0.2\ntest = 0.1')
    (tmp_path / "recipe.toml").write_text(recipe)
    prepare(tmp_path / "recipe.toml", sources, tmp_path / "out")
    times = {name: np.asarray(t.column("event_time")) for name, t in read_splits(tmp_path / "out").items()}
    assert times["train"].max() < times["valid"].min() <= times["valid"].max() < times["test"].min()
    assert 0.05 < len(times["test"]) / sum(map(len, times.values())) < 0.15


def test_prepare_is_deterministic_and_reads_parquet_parts(tmp_path: Path, generated) -> None:
    sources, samples = generated
    parted = write_log(tmp_path / "parted", parts=3)
    prepare(LOG_SPEC_PATH, parted, tmp_path / "again")
    for name in SPLITS:
        assert pq.read_table(tmp_path / "again" / f"{name}.parquet").equals(pq.read_table(samples / f"{name}.parquet"))


def test_attributes_missing_values_and_written_spec(generated) -> None:
    sources, samples = generated
    spec = load_spec(samples / "spec.toml")
    assert [f.name for f in spec.of_kind("sequence")] == ["hist_item_id", "hist_category"]
    assert next(f for f in spec.features if f.name == "session_depth").fill == "mean"  # 'previous' applied in prepare
    train = pq.read_table(samples / "train.parquet")
    items = pq.read_table(sources.items).to_pydict()
    category_of = dict(zip(items["item_id"], items["category"], strict=True))
    for item, category, hist_items, hist_categories in zip(*(train.column(c).to_pylist()[:300] for c in
                                                             ("item_id", "category", "hist_item_id", "hist_category")), strict=True):
        assert category == category_of[item]
        assert hist_categories == [category_of[i] for i in hist_items]
    assert train.column("category").null_count > 0  # missing categories survive as missing for their own token


def test_previous_value_fill_and_labelled_logs(tmp_path: Path) -> None:
    log = pa.table({
        "user": [1, 1, 1, 1, 2, 2], "item": [10, 11, 12, 13, 10, 14], "t": [1, 2, 3, 4, 1, 2],
        "clicked": [1, 0, 1, 1, 0, 1], "depth": [5.0, None, None, 7.0, None, 3.0],
    })
    pacsv.write_csv(log, tmp_path / "log.csv")
    (tmp_path / "recipe.toml").write_text("""
label = "label"
[log]
user = "user"
item = "item"
time = "t"
label = "clicked"
[split]
valid = 0
test = 1
[features.user]
kind = "categorical"
column = "user"
[features.item]
kind = "categorical"
column = "item"
[features.depth]
kind = "numeric"
column = "depth"
fill = "previous"
[features.hist_item]
kind = "sequence"
shares = "item"
max_len = 5
""")
    with pytest.raises(ValueError, match=r"\['valid'\] without samples"):
        prepare(tmp_path / "recipe.toml", Sources(tmp_path / "log.csv"), tmp_path / "out")
    (tmp_path / "recipe.toml").write_text((tmp_path / "recipe.toml").read_text().replace("valid = 0\ntest = 1", "valid = 1\ntest = 1"))
    prepare(tmp_path / "recipe.toml", Sources(tmp_path / "log.csv"), tmp_path / "out")
    rows = pa.concat_tables(read_splits(tmp_path / "out").values()).sort_by([("user", "ascending"), ("event_time", "ascending")]).to_pylist()
    assert [r["label"] for r in rows] == [1, 0, 1, 1, 0, 1]  # the log's labels, no negatives drawn
    assert [r["hist_item"] for r in rows] == [[], [10], [10], [10, 12], [], []]  # only clicks are behaviours
    assert [r["depth"] for r in rows] == [5.0, 5.0, 5.0, 7.0, None, 3.0]


def test_popularity_sampling_also_avoids_touched_items(tmp_path: Path) -> None:
    sources = write_log(tmp_path / "log", events=3000, seed=4)
    (tmp_path / "recipe.toml").write_text(LOG_SPEC_PATH.read_text().replace('strategy = "uniform"', 'strategy = "popularity"')
                                          .replace("negatives = 1", "negatives = 3"))
    prepare(tmp_path / "recipe.toml", sources, tmp_path / "out")
    touched = touched_pairs(pq.read_table(sources.log), "user_id", "item_id")
    table = pa.concat_tables(read_splits(tmp_path / "out").values())
    labels = np.asarray(table.column("label"))
    pairs = zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), strict=True)
    assert (labels == 0).sum() == 3 * (labels == 1).sum()
    assert not {p for p, label in zip(pairs, labels, strict=True) if label == 0} & touched


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda r: r.replace("[log]\n", "[logs]\n"), SpecError, "unknown top-level key"),
        (lambda r: r.replace('column = "price"', 'column = "cost"'), TableError, "cost"),
        (lambda r: r.replace("negatives = 1", "negatives = 0"), SpecError, "needs negatives >= 1"),
        (lambda r: r.replace('mode = "per_user"', 'mode = "random"'), SpecError, "[split] mode"),
    ],
)
def test_bad_recipes_name_the_problem(tmp_path: Path, edit, error, message: str) -> None:
    sources = write_log(tmp_path / "log", events=500)
    (tmp_path / "recipe.toml").write_text(edit(LOG_SPEC_PATH.read_text()))
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        prepare(tmp_path / "recipe.toml", sources, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_prepare_then_train_and_log_straight_into_train(tmp_path: Path, generated) -> None:
    sources, _ = generated
    small = ["--epochs", "1", "--embedding-dim", "8", "--attention-hidden", "16,8", "--mlp-hidden", "32,16", "--quiet"]
    result = CliRunner().invoke(main, ["prepare", "--spec", str(LOG_SPEC_PATH), "--log", str(sources.log), "--items", str(sources.items),
                                       "--users", str(sources.users), "--out", str(tmp_path / "samples")])
    assert result.exit_code == 0, result.output
    assert "prepared 6000 events" in result.output
    result = CliRunner().invoke(main, ["train-and-export", "--log", str(sources.log), "--items", str(sources.items), "--users",
                                       str(sources.users), "--spec", str(LOG_SPEC_PATH), "--out", str(tmp_path / "bundle"), *small])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    train = pq.read_table(tmp_path / "samples" / "train.parquet")
    items = {e["name"]: e for e in manifest["encoding"]}["item_id"]
    in_train = set(train.column("item_id").to_pylist()) | {i for h in train.column("hist_item_id").to_pylist() for i in h}
    assert set(items["keys"]) == in_train  # the vocabulary comes from the training split only
    assert {e["name"]: e for e in manifest["encoding"]}["category"]["missing_token"] is True
    result = CliRunner().invoke(main, ["prepare", "--spec", str(ML100K_RECIPE), "--log", str(sources.log), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "error:" in result.output


def both_layouts(which: str, generated, ml100k_samples: Path, tmp_path: Path) -> tuple[Path, Path, dict]:
    """(the session's inline samples, the same log prepared with --layout reference, its summary)."""
    if which == "movielens":
        sources = Sources(ML100K / "ml-100k.inter", ML100K / "ml-100k.item", ML100K / "ml-100k.user")
        recipe, inline_folder = ML100K_RECIPE, ml100k_samples
    else:
        recipe, (sources, inline_folder) = LOG_SPEC_PATH, generated
    return inline_folder, tmp_path / "reference", prepare(recipe, sources, tmp_path / "reference", layout="reference")


@pytest.mark.parametrize("which", ["movielens", "generated"])
def test_reference_layout_rebuilds_the_inline_samples_row_for_row(which: str, ml100k_samples: Path, generated, tmp_path: Path) -> None:
    """prepare --layout reference stores each user's behaviours once; reading it back gives --layout inline's tables."""
    inline_folder, out, summary = both_layouts(which, generated, ml100k_samples, tmp_path)
    assert summary["layout"] == "reference" and (out / SEQUENCE_STORE).is_file()
    spec = load_spec(out / SPEC_FILE)
    sequences = [f.name for f in spec.of_kind("sequence")]
    for name in SPLITS:
        stored = pq.read_table(out / f"{name}.parquet")
        assert not set(sequences) & set(stored.column_names)  # no history copied into a sample
        rebuilt, expected = read_table(out / f"{name}.parquet", spec), pq.read_table(inline_folder / f"{name}.parquet")
        assert rebuilt.select(expected.column_names).equals(expected), name
    store_rows = pq.read_metadata(out / SEQUENCE_STORE).num_rows
    inline_values = sum(len(pq.read_table(inline_folder / f"{name}.parquet").column(sequences[0]).combine_chunks().values) for name in SPLITS)
    assert store_rows < inline_values  # each behaviour once, not once per sample that sees it


def train_on(folder: Path, out: Path, *options: str) -> dict:
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(folder / "train.parquet"), "--valid", str(folder / "valid.parquet"),
                                       "--test", str(folder / "test.parquet"), "--spec", str(folder / SPEC_FILE), "--epochs", "2",
                                       "--embedding-dim", "4", "--out", str(out), "--quiet", *options])
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("which", ["generated", pytest.param("movielens", marks=pytest.mark.slow)])
def test_training_on_the_reference_layout_equals_training_on_inline(which: str, generated, ml100k_samples: Path, tmp_path: Path) -> None:
    """Histories gathered batch by batch from the store train exactly the model the inline tables train: same
    vocabularies, item-attribute tables, L2 frequencies, batches and metrics."""
    inline_folder, reference, _ = both_layouts(which, generated, ml100k_samples, tmp_path)
    sampled = ("--epoch-samples", "40000") if which == "movielens" else ()  # two epochs of a fresh draw each: the same steps, fewer
    from_inline = train_on(inline_folder, tmp_path / "inline-bundle", *sampled)
    from_reference = train_on(reference, tmp_path / "reference-bundle", *sampled)
    assert from_reference["encoding"] == from_inline["encoding"]
    for split in ("valid", "test"):
        for metric in ("auc", "logloss", "accuracy"):
            assert from_reference["metrics"][split][metric] == pytest.approx(from_inline["metrics"][split][metric], abs=1e-6), (split, metric)
    assert [h["train_loss"] for h in from_reference["metrics"]["history"]] == pytest.approx(
        [h["train_loss"] for h in from_inline["metrics"]["history"]], abs=1e-6)


def test_a_reference_table_without_its_store_is_a_clear_error(generated, tmp_path: Path) -> None:
    sources, _ = generated
    out = tmp_path / "reference"
    prepare(LOG_SPEC_PATH, sources, out, layout="reference")
    (out / SEQUENCE_STORE).unlink()
    missing = CliRunner().invoke(main, ["train-and-export", "--data", str(out / "train.parquet"), "--spec", str(out / SPEC_FILE),
                                        "--epochs", "1", "--out", str(tmp_path / "bundle"), "--quiet"])
    assert missing.exit_code == 2 and "sequence store" in missing.output
