"""Where a run's samples come from, resolved in one place that train-and-export, tune and the Python API share: a
sample table (with or without its validation and test tables), a folder `prepare` wrote, a behaviour log to
prepare first, or the built-in data; and the spec that goes with it.

Resolving reads no data: the spec is known at once (a log's is the training spec its recipe makes, exactly what
`prepare` will write), so every setting can be checked before the log is prepared or a table read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SYNTHETIC_SAMPLES
from .prepared import SPEC_FILE, SPLITS, is_prepared, split_file
from .rules import Sources, read_recipe, training_spec
from .spec import Spec, load_spec
from .synthetic import SPEC_PATH


class DataFlagError(ValueError):
    """Data options that do not go together, or one that is missing; the message names the flags."""


@dataclass
class DataSource:
    """Where the samples come from: files, or the built-in generator when no --data is given."""

    data: Path | None = None
    valid: Path | None = None
    test: Path | None = None
    synthetic_samples: int = SYNTHETIC_SAMPLES

    def __post_init__(self) -> None:
        if self.data is None and (self.valid or self.test):
            raise DataFlagError("--valid and --test need --data, the training table they belong with")

    @classmethod
    def prepared(cls, folder: Path) -> DataSource:
        """The splits of a folder `prepare` wrote."""
        return cls(*(split_file(folder, split) for split in SPLITS))

    @property
    def name(self) -> str:
        return self.data.stem if self.data else "synthetic"

    def to_dict(self) -> dict[str, Any]:
        """Recorded in the manifest so that later steps (variant checks in `export`) can reload the same splits."""
        return {"paths": {k: str(Path(v).resolve()) if v else None for k, v in (("data", self.data), ("valid", self.valid), ("test", self.test))},
                "synthetic_samples": None if self.data else self.synthetic_samples}

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> DataSource:
        paths = data.get("paths") or {}
        return cls(*(Path(paths[k]) if paths.get(k) else None for k in ("data", "valid", "test")),
                   synthetic_samples=data.get("synthetic_samples") or SYNTHETIC_SAMPLES)


@dataclass(frozen=True)
class DataFlags:
    """The data options of train-and-export and tune, and which of them were given (not left at their defaults)."""

    data: Path | None = None
    log: str | None = None
    items: str | None = None
    users: str | None = None
    valid: Path | None = None
    test: Path | None = None
    spec: Path | None = None
    samples: int = SYNTHETIC_SAMPLES
    given: frozenset[str] = field(default_factory=frozenset)

    def check(self) -> None:
        """The options that only make sense together, each combination refused in one line naming the flags."""
        given = self.given
        if "data" in given and "log" in given:
            raise DataFlagError("give --data (a sample table) or --log (a behaviour log), not both")
        for flag in ("items", "users"):
            if flag in given and "log" not in given:
                raise DataFlagError(f"--{flag} joins an attribute table to --log (a behaviour log to prepare); without --log there is "
                                    "no log to join it to (a sample table given with --data already holds its attributes)")
        for flag in ("valid", "test"):
            if flag in given and "log" in given:
                raise DataFlagError(f"--{flag} applies to --data; a log given with --log is split by the recipe's [split] section")
            if flag in given and "data" not in given:
                raise DataFlagError(f"--{flag} needs --data, the training table it belongs with")
        if "samples" in given and ("data" in given or "log" in given):
            raise DataFlagError("--samples sets the size of the built-in data; with --data or --log the data is yours")


@dataclass(frozen=True)
class ResolvedData:
    """A run's data, resolved: its spec, the name a default output folder takes, and its source (a log still to
    prepare into a scratch folder, where `log` is set)."""

    spec: Spec
    name: str
    source: DataSource | None = None
    log: Sources | None = None
    recipe: Path | None = None

    def source_in(self, scratch: Path) -> DataSource:
        """The samples: a log prepared into `scratch` first (the expensive part, after every check)."""
        if self.log is None:
            assert self.source is not None
            return self.source
        from .prepare import prepare

        assert self.recipe is not None
        prepare(self.recipe, self.log, scratch / "samples")
        return DataSource.prepared(scratch / "samples")


def resolve_data(flags: DataFlags, parent_spec: Spec | None = None) -> ResolvedData:
    """The run's data and spec from its flags. The spec: --spec where given; a prepared folder's own; a log's
    training spec from its recipe; else the parent's (a warm start) or the built-in data's."""
    flags.check()
    data = flags.data
    if data is not None and data.is_dir():  # a prepared folder: its splits and the spec prepare wrote
        if not is_prepared(data):  # its training table: a file, or a folder of Parquet parts (prepare --engine spark)
            raise DataFlagError(f"--data {data}: a folder must be one `din-export prepare` wrote ({', '.join(f'{s}.parquet' for s in SPLITS)}, "
                                f"{SPEC_FILE})")
        prepared = DataSource.prepared(data)
        source = DataSource(prepared.data, flags.valid or prepared.valid, flags.test or prepared.test)
        return ResolvedData(load_spec(flags.spec or data / SPEC_FILE), data.name, source)
    if flags.spec is None and (flags.log is not None or (data is not None and parent_spec is None)):
        raise DataFlagError("--data and --log need --spec, the TOML file that names the label and features")
    if flags.log is not None:
        assert flags.spec is not None
        spec, config = read_recipe(flags.spec)
        log = Sources(Path(flags.log), flags.items and Path(flags.items), flags.users and Path(flags.users))
        return ResolvedData(training_spec(spec, config), Path(flags.log).stem, log=log, recipe=flags.spec)
    source = DataSource(data=data, valid=flags.valid, test=flags.test, synthetic_samples=flags.samples)
    return ResolvedData(load_spec(flags.spec) if flags.spec else default_spec(parent_spec), source.name, source)


def default_spec(parent_spec: Spec | None = None) -> Spec:
    """The spec of a run that names none: a warm start's parent's, else the built-in data's."""
    return parent_spec if parent_spec is not None else load_spec(SPEC_PATH)
