"""The export side's error types: every failed export or verification check is one of these, its message saying
which check failed and by how much."""

from __future__ import annotations


class ExportError(RuntimeError):
    """The exported graph failed a check; the message says which and by how much."""


class VerificationError(ExportError):
    """A bundle failed verification (`din-export verify`)."""


class OutputNameError(VerificationError):
    """The graph's outputs are not the one `probability`."""


class DimensionError(VerificationError):
    """An input is missing, out of order, or has other dimensions than its contract's (symbolic batch and seq_len)."""


class OutputShapeError(VerificationError):
    """The output's shape differs from (rows,) for some input shape."""


class ParityError(VerificationError):
    """ONNX Runtime's probabilities differ from PyTorch's by more than the precision's tolerance."""


class CheckerError(VerificationError):
    """onnx.checker's full check rejected the graph."""


class ReferenceEvaluatorError(VerificationError):
    """ONNX's reference evaluator and ONNX Runtime disagree on the graph."""
