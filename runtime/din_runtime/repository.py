"""A model repository in Triton's layout, REPO/NAME/VERSION/ with each version folder a bundle, served with
versions that change under traffic without a failed request.

A version is read, verified (manifest, every graph's sha256, the inputs clients see, a warm-up request through
both graphs) in a worker thread, and only then made current, by one assignment on the event loop. A request
takes its version once, at its start, and runs entirely on it, so a response never mixes two versions; a version
that is no longer served is released when its last request ends. A version that fails any check is refused with
one log line and its reason in the index, and what served before goes on serving.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batching import DynamicBatcher
from .config import ServerLimits
from .errors import BundleError
from .manifest import MANIFEST_FILE
from .predictor import Predictor
from .protocol import model_metadata

log = logging.getLogger("din_runtime.repository")
CONFIG_FILE = "config.pbtxt"  # Triton's model configuration; only its version_policy is read here
CONTROL_MODES = ("none", "poll", "explicit")  # Triton's --model-control-mode
READY, UNAVAILABLE = "READY", "UNAVAILABLE"
_VERSION_FOLDER = re.compile(r"[1-9][0-9]{0,17}")
_POLICY = re.compile(r"version_policy\s*:?\s*\{\s*(latest|specific|all)\s*:?\s*\{([^}]*)\}\s*\}", re.S)


class RepositoryError(ValueError):
    """A model name, version or load request the repository refuses; the message says which and why."""


def check_name(name: str) -> str:
    """A model name as a URL may carry it: one plain folder name, never a path (checked before any disk access)."""
    if (not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0")
            or not name.isprintable() or len(name) > 255):
        raise RepositoryError(f"model name {name!r} is not a plain folder name")
    return name


def check_version(text: str) -> int:
    """A version as a URL may carry it: a positive integer, as Triton's version folders are named."""
    if not _VERSION_FOLDER.fullmatch(text):
        raise RepositoryError(f"version {text!r} is not a positive integer")
    return int(text)


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk are served, as Triton's version_policy: the `latest` N (default 1), the `specific`
    ones listed, or `all`."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def read(cls, model_folder: Path) -> VersionPolicy:
        """The policy of a model's config.pbtxt (Triton's text format), or the default where it has none."""
        config = model_folder / CONFIG_FILE
        if not config.is_file():
            return cls()
        match = _POLICY.search(config.read_text(encoding="utf-8", errors="replace"))
        if match is None:
            return cls()
        kind, body = match.group(1), match.group(2)
        numbers = tuple(int(n) for n in re.findall(r"\d+", body))
        if kind == "latest":
            if len(numbers) != 1 or numbers[0] < 1:
                raise RepositoryError(f"{config}: version_policy latest needs num_versions >= 1")
            return cls("latest", numbers[0])
        if kind == "specific":
            if not numbers:
                raise RepositoryError(f"{config}: version_policy specific needs versions")
            return cls("specific", len(numbers), tuple(sorted(set(numbers))))
        return cls("all", 0)

    def candidates(self, available: Sequence[int]) -> list[int]:
        """The versions to try, best first: newest first for latest and all, the listed ones for specific."""
        newest_first = sorted(available, reverse=True)
        if self.kind == "specific":
            return [v for v in newest_first if v in self.versions]
        return newest_first

    def wanted(self) -> int | None:
        """How many of the candidates to serve (None: every one that loads)."""
        return self.count if self.kind == "latest" else None


@dataclass
class Version:
    """One loaded version: its predictor and its batcher, and the requests running on it."""

    model: str
    number: int
    predictor: Predictor
    batcher: DynamicBatcher
    folder: Path
    in_flight: int = 0
    retired: bool = False


@dataclass
class Model:
    """One model of the repository: the versions loaded (served), and each version's state for the index."""

    name: str
    versions: dict[int, Version] = field(default_factory=dict)
    states: dict[int, tuple[str, str]] = field(default_factory=dict)
    refused: dict[int, tuple] = field(default_factory=dict)  # version -> the folder fingerprint that failed

    @property
    def current(self) -> Version | None:
        """The newest loaded version: what a request without a version gets."""
        return self.versions[max(self.versions)] if self.versions else None


def _fingerprint(folder: Path) -> tuple:
    """What a version folder holds (names, sizes, modification times): a refused version is tried again only when
    this changes, e.g. once a copy into the repository completes."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))
    except OSError:
        return ()


def _warm_up_rows(predictor: Predictor) -> tuple[dict[str, list], dict[str, Any], dict[str, list]]:
    """A two-row batch, and one user with two candidates, of known keys (or zeros): the warm-up request."""
    schema = predictor.schema
    values: dict[str, Any] = {}
    for feature in schema.features:
        if feature.kind == "categorical":
            values[feature.name] = feature.keys[0] if len(feature.keys) else 0
        elif feature.kind == "numeric":
            values[feature.name] = 0.0
    for sequence in schema.sequences:
        values[sequence.name] = [values[sequence.shares]]
    for times in schema.times:  # one behaviour, just before the row's time
        values[times.name], values[times.at] = [0.0], 1.0
    batch = {name: [value, value] for name, value in values.items()}
    shared = set(schema.shared)
    user = {name: value for name, value in values.items() if name not in shared}
    return batch, user, {name: [values[name], values[name]] for name in shared}


def client_inputs(predictor: Predictor) -> list[dict[str, Any]]:
    """The inputs a client sends (name, datatype, shape): a new version must keep them, or clients would break."""
    return model_metadata("", predictor.schema)["inputs"]


def _release_memory() -> None:
    """Return freed heap to the system once a version's sessions are gone (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Repository:
    """The models served: read from a repository folder (or one bundle), loaded and swapped as `control` says."""

    def __init__(self, root: Path | None, limits: ServerLimits, load: Callable[[Path], Predictor], control: str = "none",
                 on_load: Callable[[str, str], None] | None = None, on_change: Callable[[Version, bool], None] | None = None,
                 single: tuple[str, Path] | None = None) -> None:
        if control not in CONTROL_MODES:
            raise RepositoryError(f"model control must be one of {CONTROL_MODES}, not {control!r}")
        self.root = None if root is None else Path(root).resolve()
        self.limits, self.load_predictor, self.control = limits, load, control
        self.on_load = on_load or (lambda model, result: None)  # (model, "success" | "failure")
        self.on_change = on_change or (lambda version, serving: None)  # a version starts (True) or stops serving
        self.single = single  # (name, bundle folder): `serve BUNDLE`, one model, version 1
        self.models: dict[str, Model] = {}
        self._lock = asyncio.Lock()
        self._releasing: set[asyncio.Task] = set()  # held so the event loop does not drop them half done

    # -- the folders ------------------------------------------------------------------------------------------
    def _inside(self, path: Path) -> Path:
        """The path, resolved, if it lies inside the repository (a symlink leaving it is refused)."""
        assert self.root is not None
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise RepositoryError(f"{path.name!r} leaves the repository")
        return resolved

    def check_model(self, name: str) -> str:
        """A model name a load or unload request gives: plain, and a model folder of this repository."""
        check_name(name)
        if self.single is not None:
            if name != self.single[0]:
                raise LookupError(f"no model '{name}' here; this server serves '{self.single[0]}'")
        elif not self._inside(self.root / name).is_dir():  # type: ignore[operator]
            raise LookupError(f"no model folder '{name}' in the repository")
        return name

    def model_names(self) -> list[str]:
        """The model folders of the repository (hidden ones, as `din-export` stages them, left out)."""
        if self.single is not None:
            return [self.single[0]]
        assert self.root is not None
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _version_folders(self, name: str) -> dict[int, Path]:
        if self.single is not None:
            return {1: self.single[1]}
        assert self.root is not None
        folder = self._inside(self.root / check_name(name))
        return {int(p.name): p for p in folder.iterdir() if p.is_dir() and _VERSION_FOLDER.fullmatch(p.name)} if folder.is_dir() else {}

    # -- loading ----------------------------------------------------------------------------------------------
    def _read_version(self, folder: Path, current: Version | None) -> Predictor:
        """Verify one version folder and warm it up (in a worker thread); any problem raises with the reason."""
        if self.single is None:
            folder = self._inside(folder)
        if not (folder / MANIFEST_FILE).is_file():
            raise BundleError(f"no {MANIFEST_FILE} (not a bundle, or still being written)")
        predictor = self.load_predictor(folder)  # the manifest, every graph's sha256, the graphs' inputs
        if current is not None and client_inputs(predictor) != client_inputs(current.predictor):
            raise BundleError(f"its inputs differ from version {current.number}'s, so clients would break")
        batch, user, candidates = _warm_up_rows(predictor)
        probabilities = predictor.predict(batch)
        if predictor.ranking_session is not None:
            probabilities = np.concatenate([probabilities, predictor.rank(user, candidates).probabilities])
        if not np.isfinite(probabilities).all():
            raise BundleError("the warm-up request gave a probability that is not finite")
        return predictor

    async def _load(self, model: Model, number: int, folder: Path) -> bool:
        """Load one version and make it servable; False (and its state UNAVAILABLE with the reason) on any failure."""
        fingerprint = _fingerprint(folder)
        if model.refused.get(number) == fingerprint:
            return False  # refused before, and nothing changed since
        try:
            predictor = await asyncio.to_thread(self._read_version, folder, model.current)
        except Exception as error:  # noqa: BLE001 - whatever a version does wrong, it is refused, never the server's end
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            model.states[number] = (UNAVAILABLE, reason)
            model.refused[number] = fingerprint
            log.warning("model '%s' version %d refused: %s", model.name, number, reason)
            self.on_load(model.name, "failure")
            return False
        batcher = DynamicBatcher(predictor.run_encoded, predictor.sequences, self.limits.max_batch, self.limits.max_delay_ms / 1000,
                                 self.limits.max_queue)
        batcher.start()
        version = Version(model.name, number, predictor, batcher, folder)
        model.versions[number] = version  # the swap: from here on, new requests may take this version
        model.states[number] = (READY, "")
        model.refused.pop(number, None)
        self.on_load(model.name, "success")
        self.on_change(version, True)
        log.info("model '%s' version %d ready", model.name, number)
        return True

    def _retire(self, model: Model, number: int, reason: str) -> None:
        """Stop giving the version to new requests; it is released when its last running request ends."""
        version = model.versions.pop(number)
        version.retired = True
        model.states[number] = (UNAVAILABLE, reason)
        self.on_change(version, False)
        if version.in_flight == 0:
            self._release(version)

    def _release(self, version: Version) -> None:
        async def stop() -> None:
            await version.batcher.stop()
            version.predictor = None  # type: ignore[assignment] - the sessions go with the last reference
            _release_memory()
        task = asyncio.get_running_loop().create_task(stop())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def sync(self, name: str) -> None:
        """Bring one model in line with its folder and policy: load what the policy wants (newest first, skipping
        versions that fail), then retire what it no longer wants, so there is no moment without a version."""
        model = self.models.setdefault(name, Model(name))
        try:
            folders = self._version_folders(name)
            policy = VersionPolicy() if self.single is not None else VersionPolicy.read(self._inside(self.root / name))  # type: ignore[operator]
        except (OSError, RepositoryError) as error:  # a bad config.pbtxt, a folder leaving REPO: nothing changes
            log.warning("model '%s': %s", name, error)
            return
        for number in list(model.states):
            if number not in folders and number not in model.versions:
                del model.states[number]  # gone from disk and not serving
        chosen: list[int] = []
        limit = policy.wanted()
        for number in policy.candidates(list(folders)):
            if limit is not None and len(chosen) >= limit:
                break
            if number in model.versions or await self._load(model, number, folders[number]):
                chosen.append(number)
        for number in list(model.versions):
            if number not in chosen and (chosen or number not in folders):
                self._retire(model, number, "unloaded: not in the version policy" if number in folders else "unloaded: its folder is gone")
        for number in folders:
            model.states.setdefault(number, (UNAVAILABLE, "not in the version policy"))

    async def scan(self, only: str | None = None) -> None:
        """Load, swap and unload to match the repository (one model with `only`); one scan at a time."""
        async with self._lock:
            names = [only] if only is not None else self.model_names()
            for name in names:
                await self.sync(name)
            if only is None:
                for name in [n for n in self.models if n not in names]:  # a model folder removed
                    await self.unload(name, "unloaded: its folder is gone")

    async def unload(self, name: str, reason: str = "unloaded") -> None:
        model = self.models.get(name)
        for number in list(model.versions) if model else []:
            self._retire(model, number, reason)  # type: ignore[arg-type]

    async def stop(self) -> None:
        for model in self.models.values():
            for version in list(model.versions.values()):
                await version.batcher.stop()

    # -- requests ---------------------------------------------------------------------------------------------
    @contextmanager
    def lease(self, name: str, version: str | None = None) -> Iterator[Version]:
        """The version a request runs on, held until the request ends (a retired version is released then)."""
        model = self.models.get(check_name(name))
        if model is None or model.current is None:
            raise LookupError(f"no model '{name}' is ready here" + (f"; models: {sorted(self.models)}" if self.models else ""))
        if version is None:
            chosen = model.current
        else:
            number = check_version(version)
            if number not in model.versions:
                raise LookupError(f"model '{name}' has no version {number} loaded; loaded: {sorted(model.versions)}")
            chosen = model.versions[number]
        chosen.in_flight += 1
        try:
            yield chosen
        finally:
            chosen.in_flight -= 1
            if chosen.retired and chosen.in_flight == 0:
                self._release(chosen)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index of Triton's extension: every model and version with its state and reason."""
        entries = []
        for name in sorted(self.models):
            for number, (state, reason) in sorted(self.models[name].states.items()):
                if not ready_only or state == READY:
                    entries.append({"name": name, "version": str(number), "state": state, "reason": reason})
        return entries
