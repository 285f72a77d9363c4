"""Error types the runtime raises: each names what is wrong and where, so callers never see an ONNX Runtime trace."""

from __future__ import annotations


class InputError(ValueError):
    """A feature value handed to the predictor cannot be encoded."""

    def __init__(self, feature: str, problem: str, row: int | None = None) -> None:
        self.feature = feature
        self.row = row
        self.problem = problem
        where = f"feature '{feature}'" if row is None else f"feature '{feature}', row {row}"
        super().__init__(f"{where}: {problem}")


class BundleError(ValueError):
    """A model bundle is missing, damaged or of a format this runtime cannot read."""


class ProviderError(RuntimeError):
    """An execution provider that was asked for is not the one ONNX Runtime actually uses."""


def first_line(error: BaseException) -> str:
    """An error's message cut to its first line (its type's name when it has no message): what a user is shown."""
    return (str(error).splitlines() or [type(error).__name__])[0]
