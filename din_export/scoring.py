"""A table as a bundle reads it, scored through din_runtime (the code that serves the bundle): the one way
`compare`, `evaluate` and `report --explain` score a table. The table is read once, its raw columns made once, the
bundle's Predictor loaded once, and every row scored at most once."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from din_runtime.manifest import read_manifest

from .data.samples import labels, raw_columns, read_table
from .data.spec import Spec, spec_from_dict
from .data.splits import groups_of
from .errors import SpecError


@dataclass
class BundleTable:
    """One table with one bundle: the bundle's spec and Predictor, the table's raw columns, its labels and users, and
    (on first use) every row's served probability."""

    bundle: Path
    spec: Spec
    table: pa.Table = field(repr=False)
    predictor: Any = field(repr=False)  # din_runtime.Predictor
    columns: dict[str, Any] = field(repr=False)

    @property
    def rows(self) -> int:
        return self.table.num_rows

    @cached_property
    def labels(self) -> np.ndarray:
        return labels(self.table, self.spec)

    @cached_property
    def groups(self) -> np.ndarray | None:
        """Each row's user as a group number (GAUC, the users a bootstrap resamples); None where the spec names no user."""
        return groups_of(self.columns, self.spec)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """Every row's click probability as the bundle serves it (float64, for metrics)."""
        return self.predictor.predict(self.columns).astype(np.float64)


def bundle_table(bundle: Path, data: Path | pa.Table, providers: str = "cpu") -> BundleTable:
    """`data` (a table file, either layout, or a table already read with this bundle's spec) with the bundle's spec
    and Predictor; a column the spec names but the table lacks is one line naming both."""
    from din_runtime import Predictor

    bundle = Path(bundle)
    spec = spec_from_dict(read_manifest(bundle)["spec"])
    table = read_table(Path(data), spec) if isinstance(data, (str, Path)) else data
    missing = [name for name in [spec.label, *spec.names] if name not in table.column_names]
    if missing:
        raise SpecError(f"{bundle}: the table lacks column(s) {missing} this bundle's spec names")
    return BundleTable(bundle, spec, table, Predictor.load(bundle, providers=providers), raw_columns(table, spec))
