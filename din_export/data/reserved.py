"""Names the project gives to graph values and table columns itself, which no feature may therefore take."""

from __future__ import annotations

from din_runtime.manifest import LENGTH_INPUT, OUTPUT_NAME, WEIGHTS_NAME

HISTORY_FIRST, HISTORY_END = "history_first", "history_end"  # a reference-layout sample's window into the store
RESERVED_NAMES = {
    OUTPUT_NAME: "the name of every graph's output",
    WEIGHTS_NAME: "the second output of explain.onnx",
    LENGTH_INPUT: "an input of the raw-input graph (din-export triton --raw-inputs)",
    HISTORY_FIRST: "a column of reference-layout sample tables",
    HISTORY_END: "a column of reference-layout sample tables",
}
