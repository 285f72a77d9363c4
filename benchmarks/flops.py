"""Floating-point operations per row of a DIN bundle's graphs, counted from its manifest, for the latency report's
floor: the time those operations need at the GEMM rate measured in the same run.

Counted: the multiply-adds of matrix products (2 FLOPs each), which are nearly all of DIN's arithmetic.
Not counted: activations, bias additions, masking, gathers, which the floor therefore leaves out.
"""

from __future__ import annotations

from typing import Any

GRAPH_KINDS = ("plain", "folded", "rank")


def _chain(sizes: list[int]) -> int:
    """Multiply-adds of a stack of linear layers with these widths, input first."""
    return sum(a * b for a, b in zip(sizes, sizes[1:], strict=False))


def flops_per_row(manifest: dict[str, Any], length: int, graph: str) -> int:
    """FLOPs per row (per candidate, for rank) at a history of `length` behaviours, for a din-variant bundle.

    plain:  per behaviour the first layer over [q, k, q-k, q*k] (4E x H1), the rest of the unit, the weighted sum.
    folded: per behaviour (E+1) x H1 (the per-row matrix with its mask row), per row the candidate term E x H1.
    rank:   per candidate and behaviour (E+1) x H1 (the history's table with its ones row); nothing per row.
    """
    if graph not in GRAPH_KINDS:
        raise ValueError(f"graph must be one of {GRAPH_KINDS}, not {graph!r}")
    model, encoding = manifest["model"], manifest["encoding"]
    if model["variant"] != "din":
        raise ValueError(f"FLOPs are counted for the din variant only, not {model['variant']!r}")
    dim = int(model["embedding_dim"])
    sequences = [f for f in encoding if f["kind"] == "sequence"]
    shared = {f["shares"] for f in sequences}
    context = [f for f in encoding if f["kind"] == "categorical" and f["name"] not in shared]
    numerics = [f for f in encoding if f["kind"] == "numeric"]
    behaviour = dim * len(sequences)
    hidden = [int(h) for h in model["attention_hidden"]]
    first_in = 4 * behaviour if graph == "plain" else behaviour + 1
    per_behaviour = _chain([first_in, *hidden, 1]) + behaviour
    per_row = behaviour * hidden[0] if graph == "folded" else 0
    mlp_in = dim * len(context) + 2 * behaviour + len(numerics)
    return 2 * (length * per_behaviour + per_row + _chain([mlp_in, *map(int, model["mlp_hidden"]), 1]))
