"""Training pieces: mini-batch aware L2, checkpoint and resume after a kill, data-parallel runs, tune, report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from din_export.cli import main
from din_export.config import ModelConfig, TrainConfig, resolve
from din_export.data.spec import load_spec
from din_export.data.splits import EncodedSplit
from din_export.model.din import DIN
from din_export.pipeline import checkpoint_path
from din_export.training.train import embedding_frequencies, mini_batch_aware_l2
from din_runtime.schema import FeatureSchema

SMALL = ["--embedding-dim", "8", "--attention-hidden", "16,8", "--mlp-hidden", "32,16", "--quiet"]
ENCODING = [{"name": "item", "kind": "categorical", "key_type": "int", "keys": list(range(1, 11))},
            {"name": "hist", "kind": "sequence", "shares": "item", "max_len": 4}]


def test_mini_batch_aware_l2_touches_only_rows_in_the_batch_scaled_by_frequency() -> None:
    din = DIN(FeatureSchema.from_manifest(ENCODING), ModelConfig(embedding_dim=3, attention_hidden=(4,), mlp_hidden=(4,)))
    feed = {"item": np.array([2, 2, 3]), "hist": np.array([[2, 4, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0]])}
    frequencies = embedding_frequencies(din, EncodedSplit(feed, np.zeros(3, dtype=np.float32), None, ["hist"]))
    assert frequencies["item"][[2, 3, 4, 5]].tolist() == [3.0, 2.0, 1.0, 1.0]  # unseen rows count as 1
    penalty = mini_batch_aware_l2(din, [torch.from_numpy(feed["item"]), torch.from_numpy(feed["hist"])], frequencies)
    weight = din.embeddings["item"].weight
    expected = sum(weight[i].pow(2).sum() / frequencies["item"][i] for i in (2, 3, 4))
    assert torch.allclose(penalty, expected)
    penalty.backward()
    untouched = [i for i in range(weight.shape[0]) if i not in (2, 3, 4)]
    assert torch.all(weight.grad[untouched] == 0) and torch.all(weight.grad[[2, 3, 4]] != 0)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["din", "dien"])  # dien: its auxiliary loss draws negatives from torch's generator
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path, model: str) -> None:
    samples = {"din": "6000", "dien": "3000"}[model]
    args = ["train-and-export", "--model", model, "--samples", samples, "--epochs", "4", "--patience", "4", "--dropout", "0.2", *SMALL]
    reference = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "reference")])
    assert reference.exit_code == 0, reference.output
    out = tmp_path / "interrupted"
    # the killed epochs run at this process's thread count, as the reference and the resumed epochs do
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen([sys.executable, "-m", "din_export", *args, "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    checkpoint = checkpoint_path(out)
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be interrupted"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not out.exists()  # killed mid-training: a checkpoint, no half bundle
    assert torch.load(checkpoint, weights_only=True)["epoch"] < 4
    resumed = CliRunner().invoke(main, [*args, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    metrics = [json.loads((p / "manifest.json").read_text())["metrics"] for p in (tmp_path / "reference", out)]
    assert metrics[0] == metrics[1]
    assert not checkpoint.exists()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train-and-export", "--samples", "500", "--out", str(tmp_path / "b"), "--resume", *SMALL])
    assert result.exit_code == 2 and "--resume: no checkpoint" in result.output


@pytest.mark.slow
def test_two_processes_reach_the_single_process_auc(tmp_path: Path) -> None:
    args = ["train-and-export", "--samples", "20000", "--epochs", "3", "--batch-size", "256", *SMALL]
    single = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", "29517", "-m", "din_export", *args,
                             "--out", str(tmp_path / "double")], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    manifests = [json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("single", "double")]
    assert manifests[1]["training"]["processes"] == 2
    auc = [m["metrics"]["test"]["auc"] for m in manifests]
    assert abs(auc[0] - auc[1]) < 0.02, auc


@pytest.mark.slow
def test_tune_writes_a_spec_that_train_and_export_follows(tmp_path: Path) -> None:
    best = tmp_path / "best.toml"
    result = CliRunner().invoke(main, ["tune", "--samples", "3000", "--trials", "4", "--epochs", "2", "--out", str(best)])
    assert result.exit_code == 0, result.output
    assert "best validation AUC" in result.output
    spec = load_spec(best)
    assert {"embedding_dim", "mlp_hidden", "dropout"} <= set(spec.model) and {"learning_rate", "embedding_l2"} <= set(spec.training)
    # the search's own budget and seed stay out of the spec: training from it keeps the default epochs
    assert not {"epochs", "seed", "progress"} & set(spec.training)
    assert resolve(spec, {}, {})[1].epochs == TrainConfig().epochs
    result = CliRunner().invoke(main, ["train-and-export", "--samples", "3000", "--spec", str(best), "--epochs", "1",
                                       "--out", str(tmp_path / "bundle"), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["embedding_dim"] == spec.model["embedding_dim"]
    assert manifest["training"]["learning_rate"] == spec.training["learning_rate"]
    assert manifest["training"]["epochs"] == 1  # a flag given on the command line wins over the spec


def test_report_prints_metrics_and_the_plot(bundle: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "test" in result.output and "valid AUC" in result.output and "<- best" in result.output
    plot = bundle / "training.png"
    assert f"plot: {plot}" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_model_setting_in_spec_is_rejected(tmp_path: Path) -> None:
    from din_export.data.synthetic import SPEC_PATH

    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC_PATH.read_text() + "\n[model]\nlayers = 3\n")
    result = CliRunner().invoke(main, ["train-and-export", "--samples", "500", "--spec", str(spec), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "[model]: unknown setting 'layers' (did you mean 'encoder_layers'?)" in result.output


@pytest.mark.parametrize("schedule", ["cosine"])
def test_learning_rate_schedule_is_recorded(tmp_path: Path, schedule: str) -> None:
    result = CliRunner().invoke(main, ["train-and-export", "--samples", "800", "--epochs", "2", "--patience", "2", "--lr-schedule",
                                       schedule, "--out", str(tmp_path / "b"), *SMALL])
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "b" / "manifest.json").read_text())["metrics"]["history"]
    assert history[0]["learning_rate"] < TrainConfig().learning_rate and history[1]["learning_rate"] < history[0]["learning_rate"]


def test_epoch_samples_validates_every_so_many_samples(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train-and-export", "--samples", "3000", "--epochs", "2", "--epoch-samples", "600",
                                       "--out", str(tmp_path / "b"), *SMALL])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["training"]["epoch_samples"] == 600 and len(manifest["metrics"]["history"]) == 2
