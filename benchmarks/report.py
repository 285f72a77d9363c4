"""Turn one pytest-benchmark JSON file (benchmarks/test_latency.py) into the README's latency tables and a PNG plot
of latency against batch size. Every ratio is between medians of the same run.

    python benchmarks/report.py bench.json [--plot latency.png]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROWS = ("eager", "session plain", "session folded", "session int8", "predict")


def _row_name(bench: dict) -> str | None:
    name = bench["name"].split("[")[0]
    if name == "test_onnx_session":
        return f"session {bench['params']['graph']}"
    return {"test_runtime_predict": "predict", "test_runtime_encode": "encode", "test_pytorch_eager": "eager", "test_rank": "rank",
            "test_predict_replicated": "predict replicated", "test_gemm_rate": "gemm"}.get(name)


def load(path: Path) -> tuple[dict, dict, dict, float]:
    """Medians in ms by (batch, length) and by (candidates, length), FLOPs per row by (batch, length), GEMM FLOP/s."""
    batches: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    ranks: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    flops: dict[tuple[int, int], dict[str, int]] = {}
    gemm_rate = float("nan")
    for bench in json.loads(path.read_text(encoding="utf-8"))["benchmarks"]:
        row, params, median = _row_name(bench), bench["params"] or {}, bench["stats"]["median"]
        if row == "gemm":
            gemm_rate = bench["extra_info"]["flops"] / median
        elif row in ("rank", "predict replicated"):
            ranks[(params["candidates"], params["length"])][row] = median * 1e3
        elif row:
            batches[(params["batch"], params["length"])][row] = median * 1e3
            if "flops_per_row" in bench["extra_info"]:
                flops[(params["batch"], params["length"])] = bench["extra_info"]["flops_per_row"]
    return batches, ranks, flops, gemm_rate


def latency_table(batches: dict, flops: dict, gemm_rate: float) -> str:
    lines = ["| batch | length | eager | session plain | session folded | session int8 | predict | eager / predict | "
             "plain / folded | encode / predict | MFLOP/row plain / folded | floor plain / folded | folded / its floor | "
             "folded / plain floor |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (batch, length), r in sorted(batches.items()):
        per_row = flops[(batch, length)]
        plain_floor, folded_floor = (batch * per_row[graph] / gemm_rate * 1e3 for graph in ("plain", "folded"))
        lines.append(f"| {batch} | {length} | " + " | ".join(f"{r[name]:.3f}" for name in ROWS) +
                     f" | {r['eager'] / r['predict']:.2f}x | {r['session plain'] / r['session folded']:.2f}x | "
                     f"{r['encode'] / r['predict']:.0%} | "
                     f"{per_row['plain'] / 1e6:.3f} / {per_row['folded'] / 1e6:.3f} | {plain_floor:.3f} / {folded_floor:.3f} | "
                     f"{r['session folded'] / folded_floor:.2f}x | {r['session folded'] / plain_floor:.2f}x |")
    return "\n".join(lines)


def rank_table(ranks: dict) -> str:
    lines = ["| candidates | length | rank | predict on replicated rows | predict / rank |", "|---:|---:|---:|---:|---:|"]
    for (candidates, length), r in sorted(ranks.items()):
        lines.append(f"| {candidates} | {length} | {r['rank']:.3f} | {r['predict replicated']:.3f} | "
                     f"{r['predict replicated'] / r['rank']:.2f}x |")
    return "\n".join(lines)


def plot(batches: dict, path: Path) -> None:
    lengths = sorted({length for _, length in batches})
    figure, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), sharey=True)
    for axis, length in zip(axes, lengths, strict=True):
        sizes = sorted(batch for batch, shape_length in batches if shape_length == length)
        for name in ROWS:
            axis.plot(sizes, [batches[(b, length)][name] for b in sizes], marker="o", label=name)
        axis.set(xscale="log", yscale="log", xlabel="batch size", title=f"sequence length {length}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median latency (ms)")
    axes[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--plot", type=Path, help="write the latency-against-batch-size plot here (PNG)")
    args = parser.parse_args()
    batches, ranks, flops, gemm_rate = load(args.json)
    print(f"GEMM rate (ONNX Runtime, 1024^3 float32): {gemm_rate / 1e9:.1f} GFLOP/s\n")
    print("Latency, median ms\n")
    print(latency_table(batches, flops, gemm_rate))
    print("\nRanking, median ms\n")
    print(rank_table(ranks))
    if args.plot:
        plot(batches, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
