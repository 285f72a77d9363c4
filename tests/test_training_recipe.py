"""The training recipe's pieces: the folded attention unit trains with the plain form's gradients, warm-up and
schedule, history augmentation, the device option, and a log of one line per epoch when stderr is a file."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from din_export.cli import main
from din_export.config import ModelConfig, TrainConfig
from din_export.data.splits import EncodedSplit
from din_export.model.base import in_form
from din_export.model.din import DIN
from din_export.training import augment
from din_export.training.distributed import World
from din_export.training.train import _batches, _epoch_rows, _steps_per_epoch, batch_tensors, learning_rate_factor
from din_runtime.schema import FeatureSchema

ENCODING = [{"name": "user", "kind": "categorical", "key_type": "int", "keys": list(range(1, 30))},
            {"name": "item", "kind": "categorical", "key_type": "int", "keys": list(range(1, 50))},
            {"name": "cate", "kind": "categorical", "key_type": "int", "keys": list(range(1, 8))},
            {"name": "price", "kind": "numeric", "fill": 0.0, "shift": 0.0, "scale": 1.0},
            {"name": "hist_item", "kind": "sequence", "shares": "item", "max_len": 12},
            {"name": "hist_cate", "kind": "sequence", "shares": "cate", "max_len": 12}]
SMALL = ["--embedding-dim", "8", "--attention-hidden", "16,8", "--mlp-hidden", "32,16"]


def batch(rows: int = 9, steps: int = 12, seed: int = 0) -> list[torch.Tensor]:
    """Encoded inputs with an empty history, a full one and ragged ones between."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, steps + 1, rows)
    lengths[0], lengths[-1] = 0, steps
    present = np.arange(steps)[None, :] < lengths[:, None]
    return [torch.from_numpy(a) for a in (
        rng.integers(1, 31, rows), rng.integers(1, 51, rows), rng.integers(1, 9, rows), rng.standard_normal(rows).astype(np.float32),
        np.where(present, rng.integers(1, 51, (rows, steps)), 0), np.where(present, rng.integers(1, 9, (rows, steps)), 0))]


@pytest.mark.parametrize("settings", [{}, {"attention_activation": "dice", "mlp_activation": "dice"},
                                      {"attention_weighting": "softmax", "attention_activation": "prelu"}, {"variant": "din-seq"}])
def test_folded_attention_trains_with_the_plain_forms_gradients(settings: dict) -> None:
    torch.manual_seed(0)
    din = DIN(FeatureSchema.from_manifest(ENCODING), ModelConfig(embedding_dim=6, attention_hidden=(10, 5), mlp_hidden=(12,), **settings))
    assert din.pooling.form == "folded"  # what training uses by default
    inputs, labels = batch(), torch.from_numpy(np.random.default_rng(1).integers(0, 2, 9).astype(np.float32))
    gradients = {}
    for form in ("folded", "plain"):
        din.pooling.form = form
        din.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(din.train()(*inputs), labels).backward()
        gradients[form] = {name: p.grad.clone() for name, p in din.named_parameters() if p.grad is not None}
    assert gradients["folded"].keys() == gradients["plain"].keys()
    assert any(name.startswith("pooling.score.0") for name in gradients["folded"])
    for name, folded in gradients["folded"].items():
        torch.testing.assert_close(folded, gradients["plain"][name], rtol=1e-4, atol=1e-6, msg=name)


def test_forms_share_parameters_and_agree_in_inference() -> None:
    torch.manual_seed(0)
    din = DIN(FeatureSchema.from_manifest(ENCODING), ModelConfig(embedding_dim=6, attention_hidden=(10, 5), mlp_hidden=(12,)))
    plain = in_form(din, "plain")
    assert plain.state_dict().keys() == din.state_dict().keys() and plain.pooling.form == "plain"
    with torch.inference_mode():
        torch.testing.assert_close(din.eval()(*batch()), plain(*batch()), rtol=0, atol=1e-5)


def test_warmup_then_cosine_reaches_zero_at_the_last_step() -> None:
    factor = learning_rate_factor(TrainConfig(epochs=2, warmup_steps=4, lr_schedule="cosine"), steps_per_epoch=10)
    assert [round(factor(s), 3) for s in range(4)] == [round(0.25 * (s + 1) * 0.5 * (1 + np.cos(np.pi * s / 20)), 3) for s in range(4)]
    assert factor(19) > 0 and factor(20) == pytest.approx(0, abs=1e-12)
    for rows, batch_size, size in [(1000, 256, 1), (1025, 256, 1), (1026, 256, 1), (1027, 256, 2), (1028, 256, 2), (256, 256, 2)]:
        world = World(rank=0, size=size)  # the schedule's length is the number of batches train() will take
        assert _steps_per_epoch(rows, batch_size, world) == len(_batches(np.random.default_rng(0), rows, batch_size, world, rows))
    constant = learning_rate_factor(TrainConfig(warmup_steps=0, lr_schedule="constant"), steps_per_epoch=10)
    assert {constant(s) for s in (0, 5, 500)} == {1.0}


def test_epoch_samples_draws_a_fresh_part_of_the_split_each_epoch() -> None:
    rng, world = np.random.default_rng(0), World()
    epochs = [np.concatenate(_batches(rng, 10_000, 256, world, _epoch_rows(10_000, TrainConfig(epoch_samples=1_000)))) for _ in range(2)]
    for rows in epochs:
        assert len(rows) == 1_000 and len(np.unique(rows)) == 1_000 and rows.max() < 10_000
    assert len(np.intersect1d(*epochs)) < 300  # two independent draws of a tenth overlap by about a tenth
    assert _steps_per_epoch(_epoch_rows(10_000, TrainConfig(epoch_samples=1_000)), 256, world) == 4
    assert _epoch_rows(500, TrainConfig(epoch_samples=1_000)) == 500 and _epoch_rows(500, TrainConfig()) == 500
    with pytest.raises(ValueError, match="epoch_samples"):
        TrainConfig(epoch_samples=-1)


@pytest.mark.parametrize("kind", ["crop", "mask"])
def test_augmentation_keeps_order_and_alignment_and_only_removes(kind: str) -> None:
    rng = np.random.default_rng(0)
    lengths = np.array([0, 1, 5, 12, 12, 7])
    present = np.arange(12)[None, :] < lengths[:, None]
    items = np.where(present, np.arange(1, 13)[None, :] + 100 * np.arange(6)[:, None], 0)
    histories = {"hist_item": items, "hist_cate": np.where(present, items % 7 + 1, 0)}
    keep = augment.keep_positions(kind, 0.5, lengths, 12, rng)
    out = augment.apply(histories, keep)
    for row in range(6):
        kept = out["hist_item"][row][out["hist_item"][row] != 0]
        assert np.array_equal(kept, items[row][keep[row]])  # the kept behaviours, in their order
        assert np.all(out["hist_item"][row][len(kept):] == 0)  # left-aligned, padded after
        assert np.array_equal(out["hist_cate"][row][:len(kept)], kept % 7 + 1)  # the same behaviours in every sequence
        if kind == "crop" and len(kept):
            assert kept[-1] == items[row][lengths[row] - 1]  # a crop keeps the most recent behaviour
    assert augment.keep_positions("mask", 0.0, lengths, 12, rng) is None


def test_augmented_batches_differ_between_epochs_and_stay_valid() -> None:
    feed = {"hist_item": np.tile(np.arange(1, 11), (64, 1)), "item": np.arange(64)}
    split = EncodedSplit(feed, np.zeros(64, dtype=np.float32), None, ["hist_item"])
    rng = np.random.default_rng(0)
    first, second = (batch_tensors(split, np.arange(64), augmentation=("mask", 0.3, rng))[0].numpy() for _ in range(2))
    assert not np.array_equal(first, second)
    assert 0.5 < (first != 0).mean() / 1.0 < 0.9  # about 30% of the behaviours dropped
    assert np.array_equal(batch_tensors(split, np.arange(64))[0].numpy(), feed["hist_item"])  # no augmentation: unchanged


@pytest.mark.slow
def test_log_has_one_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "din_export", "train-and-export", "--samples", "3000", "--epochs", "3",
                             "--patience", "3", "--out", str(tmp_path / "b"), *SMALL], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and not any("it/s" in line for line in lines)
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], lines
    assert all("valid AUC" in line and "samples/s" in line for line in lines)


def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        result = CliRunner().invoke(main, ["train-and-export", "--samples", "800", "--epochs", "1", "--device", "cuda",
                                           "--out", str(tmp_path / "b"), "--quiet", *SMALL])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "b" / "manifest.json").read_text())["training"]["device_used"].startswith("cuda")
        return
    result = CliRunner().invoke(main, ["train-and-export", "--samples", "800", "--device", "cuda", "--out", str(tmp_path / "b"), *SMALL])
    assert result.exit_code == 2 and "device 'cuda'" in result.output and "no CUDA GPU" in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_auto_device_trains_on_the_cpu_here_and_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train-and-export", "--samples", "800", "--epochs", "1", "--augmentation", "crop",
                                       "--augmentation-rate", "0.3", "--warmup-steps", "3", "--out", str(tmp_path / "b"), "--quiet", *SMALL])
    assert result.exit_code == 0, result.output
    training = json.loads((tmp_path / "b" / "manifest.json").read_text())["training"]
    assert training["device_used"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert (training["augmentation"], training["augmentation_rate"], training["warmup_steps"]) == ("crop", 0.3, 3)
