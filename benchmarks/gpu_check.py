"""The GPU check, one short command for a machine with an NVIDIA GPU (a few minutes):

    python benchmarks/gpu_check.py [--samples 20000] [--models din dien bst din-seq] [--json gpu.json]

It says what the machine offers (CUDA to torch, the execution providers of the installed ONNX Runtime, which may be
the CPU-only build), then, where CUDA is there, measures in this one process, interleaved: training samples/s of
`train()` on CUDA against the CPU for each model of the family (default settings, the built-in data),
`Predictor.predict` on the CUDA execution provider against the CPU one for each (the largest probability
difference, which must stay within 1e-5, and the latency at 1, 256 and 4096 rows). On a machine without a GPU it
says so plainly, times the CPU side alone, and exits 0, so it runs everywhere (a test runs it on CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from machine import cpu_model

from din_export.config import ModelConfig, TrainConfig
from din_export.data.source import DataSource
from din_export.data.spec import load_spec
from din_export.data.splits import load_data
from din_export.data.synthetic import SPEC_PATH, generate
from din_export.model.family import build_model
from din_export.pipeline import train_and_export
from din_export.training.train import train
from din_runtime import Predictor
from din_runtime.providers import CUDA

PARITY = 1e-5
BATCHES = (1, 256, 4096)
ROUNDS = 15


def machine() -> dict:
    cuda = torch.cuda.is_available()
    return {"cpu": cpu_model(), "torch": torch.__version__, "torch_cuda": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "onnxruntime": ort.__version__,
            "onnxruntime_providers": ort.get_available_providers()}


def training_rates(samples: int, devices: list[str], variants: list[str]) -> dict[str, dict[str, float]]:
    """Median samples/s of one epoch of train() per model and device, all interleaved (one warm-up round)."""
    data = load_data(DataSource(synthetic_samples=samples), load_spec(SPEC_PATH), seed=0)
    rates: dict[str, dict[str, list[float]]] = {variant: {device: [] for device in devices} for variant in variants}
    for round_ in range(3):
        for variant in variants:
            for device in devices:
                torch.manual_seed(0)
                model = build_model(data.schema, ModelConfig(variant=variant))
                result = train(model, data.splits["train"], data.splits["valid"], TrainConfig(epochs=1, progress=False, device=device))
                if round_:  # the first round warms each device up (CUDA context, kernels)
                    rates[variant][device].append(result.samples_per_second)
    return {variant: {device: statistics.median(values) for device, values in by_device.items()} for variant, by_device in rates.items()}


def latency_ms(call, rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def serving(bundle: Path, providers: list[str]) -> dict:
    """Per provider: the provider ONNX Runtime really uses, latency at each batch size (interleaved), and the
    largest probability difference of each provider from the CPU's."""
    predictors = {name: Predictor.load(bundle, providers=name, fallback=True) for name in providers}
    rows = {b: generate(b, seed=b).to_pydict() for b in BATCHES}
    expected = {b: predictors["cpu"].predict(rows[b]) for b in BATCHES}
    report = {name: {"in_use": p.providers[0], "max_abs_diff": max(float(np.max(np.abs(p.predict(rows[b]) - expected[b])))
                                                                    for b in BATCHES), "ms": {}}
              for name, p in predictors.items()}
    for batch in BATCHES:
        for predictor in predictors.values():  # warm-up, then interleaved rounds
            predictor.predict(rows[batch])
        times = {name: [] for name in predictors}
        for _ in range(ROUNDS):
            for name, predictor in predictors.items():
                times[name].append(latency_ms(lambda p=predictor, r=rows[batch]: p.predict(r), 1))
        for name in predictors:
            report[name]["ms"][batch] = round(statistics.median(times[name]), 3)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000, help="rows of built-in data to train on")
    parser.add_argument("--models", nargs="+", default=["din", "dien", "bst", "din-seq"], help="variants of the family to check")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    facts = machine()
    print(f"CPU {facts['cpu']}; torch {facts['torch']} (CUDA: {facts['torch_cuda']}, GPU: {facts['gpu']}); "
          f"onnxruntime {facts['onnxruntime']} providers {facts['onnxruntime_providers']}", flush=True)
    gpu_torch, gpu_ort = facts["torch_cuda"], CUDA in facts["onnxruntime_providers"]
    if not gpu_torch:
        print("no GPU found: torch.cuda.is_available() is False, so CUDA training is not measured")
    if not gpu_ort:
        print("this ONNX Runtime build offers no CUDAExecutionProvider, so CUDA serving is not measured")
    report: dict = {"machine": facts}
    devices = ["cpu", "cuda"] if gpu_torch else ["cpu"]
    report["training_samples_per_second"] = training_rates(args.samples, devices, args.models)
    for variant, rates in report["training_samples_per_second"].items():
        ratio = f" (cuda/cpu {rates['cuda'] / rates['cpu']:.2f}x)" if "cuda" in rates else ""
        print(f"training samples/s, {variant}: " + ", ".join(f"{d} {r:,.0f}" for d, r in rates.items()) + ratio, flush=True)
    report["serving"], failed = {}, False
    with tempfile.TemporaryDirectory() as scratch:
        for variant in args.models:
            bundle = Path(scratch) / variant
            train_and_export(DataSource(synthetic_samples=args.samples), bundle, None, ModelConfig(variant=variant),
                             TrainConfig(epochs=1, progress=False, device="cpu"))
            report["serving"][variant] = serving(bundle, ["cpu", "cuda"] if gpu_ort else ["cpu"])
            for name, entry in report["serving"][variant].items():
                print(f"{variant}: predict on {name} (in use: {entry['in_use']}): ms at batch {entry['ms']}; "
                      f"max |diff| from CPU {entry['max_abs_diff']:.2e}", flush=True)
            cuda = report["serving"][variant].get("cuda")
            if cuda is not None and cuda["in_use"] != CUDA:
                print(f"ONNX Runtime fell back from CUDA to {cuda['in_use']}: check the CUDA and cuDNN libraries it names above")
            if cuda is not None and cuda["in_use"] == CUDA and not cuda["max_abs_diff"] <= PARITY:
                print(f"{variant}: parity FAILED: CUDA and CPU differ by {cuda['max_abs_diff']:.2e} > {PARITY}")
                failed = True
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
