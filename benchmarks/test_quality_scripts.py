"""The calibration, explain-cost and variant-evaluation scripts behind the quality results run at a small size on
every CI run, so they cannot rot between the runs that measure them."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import need_ml100k

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow


def run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(HERE / script), *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in output.splitlines()
            if line.startswith("| ") and not line.startswith("| served") and not line.startswith("| model") and not line.startswith("| rows")]


def test_the_calibration_script_compares_every_map() -> None:
    table = rows(run("calibration.py", "--data", "impressions", "--events", "20000", "--epochs", "1", "--seeds", "0"))
    assert [row[0] for row in table] == ["uncorrected", "correction", "platt", "isotonic"]
    ratios = {row[0]: float(row[2]) for row in table}
    assert ratios["uncorrected"] > 2 * ratios["correction"]  # a tenth of the non-clicks kept: several times too high
    assert table[0][4] == table[1][4] == table[2][4]  # a shift and Platt keep every score's order: the same AUC


def test_explain_cost_times_both_graphs(bundle: Path) -> None:
    table = rows(run("explain_cost.py", bundle, "--rows", "1", "8", "--repeats", "3"))
    assert [row[0] for row in table] == ["1", "8"] and all(float(row[1]) > 0 and float(row[2]) > 0 for row in table)


def test_the_variants_are_evaluated_alike() -> None:
    need_ml100k()
    table = rows(run("evaluate_variants.py", "--epoch-samples", "2000", "--test-rows", "300", "--negatives", "20",
                     "--variants", "din", "base"))
    assert [row[0] for row in table] == ["din", "base"]
    assert all(0 < float(row[6]) <= float(row[5]) <= 1 for row in table)  # NDCG@10 <= HR@10


def test_the_recency_script_trains_each_form_at_each_max_len() -> None:
    need_ml100k()
    output = run("recency.py", "--max-lens", "5", "--seeds", "0", "--epoch-samples", "2000", "--recency", "none", "time+position")
    table = [row for row in rows(output) if row[0].isdigit()]
    assert [row[:3] for row in table] == [["5", "din", "none"], ["5", "din", "time+position"]]
    assert all(0 < float(row[3]) <= 1 and float(row[5]) > 0 for row in table)


def test_the_family_speed_script_times_a_model_against_din() -> None:
    need_ml100k()
    output = run("family_speed.py", "--rows", "1024", "--rounds", "1", "--serving-rounds", "1", "--bundle-samples", "1000",
                 "--models", "dien")  # din joins as the reference; the others take the same paths, timed in the results run
    training = [row for row in rows(output) if row[0] in ("din", "dien", "bst", "din-seq")]
    assert [row[0] for row in training] == ["din", "dien"] and training[0][2] == "1.00x"
    latency = {row[0]: row[1:] for row in rows(output) if row[0].startswith(("predict", "rank"))}
    assert list(latency) == ["predict, 1 row", "predict, 256 rows", "rank, 1,000 candidates"]
    assert all(float(cell.split()[0]) > 0 for cells in latency.values() for cell in cells)


def test_the_recurrence_export_script_checks_and_times_both_forms() -> None:
    output = run("recurrence_export.py", "--rounds", "2")
    scan_parity = output.split("parity with PyTorch")[1].split("Scan ")[1].split(";")[0]
    assert float(scan_parity) <= 1e-5  # the form din-export writes passes at every length
    table = [row for row in rows(output) if row[0].replace(",", "").isdigit()]
    assert [row[0] for row in table] == ["1", "256", "1,000"] and all(float(row[1]) > 0 and float(row[2]) > 0 for row in table)


def test_the_epoch_benchmark_times_train_and_the_cli_side_by_side() -> None:
    need_ml100k()
    table = [row for row in rows(run("training_epoch.py", "--batch-sizes", "256", "--rounds", "1", "--rows", "2000", "--compile",
                                   "--compile-backend", "aot_eager"))  # the compiled path without inductor's minute of codegen
             if row[0].isdigit()]
    assert len(table) == 1 and table[0][:2] == ["256", "2,000"]
    assert float(table[0][2].replace(",", "")) > 0 and float(table[0][3].replace(",", "")) > 0
    assert table[0][4] == "not installed" or float(table[0][5].rstrip("x")) > 0  # DeepCTR-Torch: a benchmark-only install
    compiled, compile_seconds = table[0][6].split()
    assert float(compiled.replace(",", "")) > 0 and float(compile_seconds.strip("()")) > 0


def test_the_training_profile_sums_an_epoch_by_operator() -> None:
    need_ml100k()
    output = run("profile_training.py", "--rows", "3000", "--top", "5")
    table = [row for row in rows(output) if row[0] != "operator"]
    assert len(table) == 5 and "matrix products" in output
    shares = [float(row[2].rstrip("%")) for row in table]
    assert shares == sorted(shares, reverse=True) and all(float(row[1]) > 0 for row in table)


def test_the_time_to_quality_script_times_both_to_the_peers_best() -> None:
    """The peer runs where DeepCTR-Torch is installed (a benchmark-only install); din-export's side runs everywhere."""
    need_ml100k()
    peer = importlib.util.find_spec("deepctr_torch") is not None
    output = run("time_to_quality.py", "--train-rows", "3000", "--epochs", "1", *(["--peer-epochs", "1"] if peer else ["--target", "0.5"]))
    table = {row[0]: row[1:] for row in rows(output) if row[0].endswith("DIN")}
    assert list(table) == (["DeepCTR-Torch DIN"] if peer else []) + ["din-export DIN"]
    if peer:
        assert table["DeepCTR-Torch DIN"][1] == "1" and table["DeepCTR-Torch DIN"][3] == "1"  # its one epoch is the target
    assert float(table["din-export DIN"][2]) > 0 and "target" in output
