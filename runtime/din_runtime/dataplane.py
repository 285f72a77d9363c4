"""The data plane: what the server does with a decoded request, apart from HTTP (as KServe's ModelServer hands its
protocol's requests to a DataPlane, which hands them to the model).

The routes (server.py) read and decode a body (protocol.py), lease the version the request runs on, and call one
method here; each method runs the request on that version (its dynamic batcher for infer, its Predictor for rank
and explain) and returns plain results for the protocol to encode. The repository's control (load, unload, the
index) is reached through it too, so the routes hold no logic of their own. Features the server supplies itself
(a user's behaviours held server-side) join a request's columns here, before the model sees them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from . import __version__
from .completion import complete, complete_user
from .errors import InputError
from .predictor import Explanation, Predictor, Ranking
from .protocol import Contract, InferRequest, RankRequest, model_metadata
from .repository import Repository, RepositoryError, Version
from .served_log import Served, ServedLog, new_request_id
from .stores import BehaviourStore, checked_events

EXTENSIONS = ("binary_tensor_data", "model_repository")  # the protocol extensions this server speaks


class TimedStore:
    """A behaviour store whose calls report their seconds (the server's store latency metric); otherwise the store."""

    def __init__(self, store: BehaviourStore, on_call: Callable[[str, float], None]) -> None:
        self.inner, self.on_call = store, on_call
        self.fields, self.keep = store.fields, store.keep

    def _timed(self, operation: str, work: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return work(*args)
        finally:
            self.on_call(operation, time.perf_counter() - started)

    def add(self, events: Any) -> tuple[int, int]:
        return self._timed("add", self.inner.add, events)

    def user_side(self, users: Any, as_of: Any, limit: int, attribute_users: Any) -> Any:
        return self._timed("read", self.inner.user_side, users, as_of, limit, attribute_users)

    def count(self) -> int:
        return self.inner.count()

    def ping(self) -> bool:
        return self.inner.ping()


class LoadFailed(RepositoryError):
    """An explicit load request whose model did not load (HTTP 400, its reasons in the message)."""


class DataPlane:
    """Runs decoded requests on the repository's versions; with a behaviour store, fills the user side each request
    leaves out and takes events."""

    def __init__(self, repository: Repository, store: BehaviourStore | None = None,
                 on_store: Callable[[str, float], None] | None = None, served_log: ServedLog | None = None) -> None:
        self.repository = repository
        self.served_log = served_log
        self.store = None if store is None else TimedStore(store, on_store or (lambda operation, seconds: None))
        self._contracts: weakref.WeakKeyDictionary[Predictor, Contract] = weakref.WeakKeyDictionary()

    # -- health and metadata ----------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """Ready once any model has a version to serve, and while the behaviour store (if any) answers."""
        serving = any(model.current is not None for model in self.repository.models.values())
        return serving and (self.store is None or self.store.ping())

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {"name": "din-runtime", "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, version: Version) -> dict[str, Any]:
        return model_metadata(version.model, version.predictor.schema, sorted(self.repository.models[version.model].versions))

    def contract(self, version: Version) -> Contract:
        """What the version's clients send (protocol.Contract), derived once per loaded version."""
        predictor = version.predictor
        contract = self._contracts.get(predictor)
        if contract is None:
            contract = self._contracts[predictor] = Contract.of(predictor.schema)
        return contract

    def lease(self, model: str, version: str | None) -> AbstractContextManager[Version]:
        """The version a request runs on, held until the request ends (repository.Repository.lease)."""
        return self.repository.lease(model, version)

    # -- inference --------------------------------------------------------------------------------------------------
    def identified(self, request: Any) -> Any:
        """The request with an id where the served log needs one and the client gave none (answered in the
        response's `id`, so the client can report the request's clicks by it)."""
        if self.served_log is not None and request.id is None:
            return dataclasses.replace(request, id=new_request_id())
        return request

    def _check_as_of(self, as_of: float | None) -> None:
        if self.store is None and as_of is not None:
            raise InputError("as_of", "applies to histories from a behaviour store; this server has none (serve --store URL)")

    async def _completed(self, version: Version, columns: dict[str, Any], as_of: float | None) -> dict[str, Any]:
        self._check_as_of(as_of)
        if self.store is None:
            return columns
        return await asyncio.to_thread(complete, columns, version.predictor.schema, self.store, as_of)

    def _log(self, version: Version, request: Any, columns: dict[str, Any], probabilities: np.ndarray) -> None:
        """Hand the scored rows to the served log (never waits: a full queue drops and counts them)."""
        if self.served_log is not None and len(probabilities):
            self.served_log.record(Served(str(request.id), request.as_of if request.as_of is not None else time.time(),
                                          version.model, version.number, version.predictor.encoder, columns, probabilities))

    async def infer(self, version: Version, request: InferRequest) -> np.ndarray:
        """Each row's click probability: the request completed from the store where it leaves the user side out,
        encoded on its own (a bad value is this request's error, naming its row), then scored with whatever else
        the version's batcher gathers."""
        columns = await self._completed(version, request.columns, request.as_of)
        feed = version.predictor.encode(columns)
        rows = len(next(iter(feed.values())))
        probabilities = await version.batcher.submit(feed, rows) if rows else np.zeros(0, dtype=np.float32)
        self._log(version, request, columns, probabilities)
        return probabilities

    async def explain(self, version: Version, request: InferRequest) -> Explanation:
        columns = await self._completed(version, request.columns, request.as_of)
        explanation = await asyncio.to_thread(version.predictor.explain, columns)
        self._log(version, request, columns, explanation.probabilities)
        return explanation

    async def rank(self, version: Version, request: RankRequest) -> Ranking:
        """The candidates best first; the user's row completed from the store once (one read for the user)."""
        user, candidates = request.user, request.candidates
        self._check_as_of(request.as_of)

        def run() -> tuple[dict[str, Any], Ranking]:  # the store's read and the scoring on one worker thread: one hop
            completed = user if self.store is None else complete_user(user, version.predictor.schema, self.store, request.as_of,
                                                                      list(candidates))
            return completed, version.predictor.rank(completed, candidates, request.top_k, request.explain)

        user, ranking = await asyncio.to_thread(run)
        if self.served_log is not None:
            count = len(ranking.scores)
            rows = {**candidates, **{name: [value] * count for name, value in user.items() if name not in candidates}}
            self._log(version, request, rows, ranking.scores)
        return ranking

    async def events(self, events: list[Any]) -> tuple[int, int]:
        """Store the events, all or nothing: (accepted, duplicates)."""
        if self.store is None:
            raise LookupError("this server holds no behaviour store (serve --store URL)")
        checked = checked_events(events, self.store.fields)
        return await asyncio.to_thread(self.store.add, checked)

    # -- the repository ---------------------------------------------------------------------------------------------
    def index(self, ready_only: bool) -> list[dict[str, str]]:
        return self.repository.index(ready_only)

    async def load(self, name: str) -> None:
        """Load (or reload) a model under explicit control; LoadFailed with its versions' reasons where none loads."""
        name = self._controlled(name, "load")
        await self.repository.scan(name)
        model = self.repository.models[name]
        if model.current is None:
            reasons = [reason for _, (_, reason) in sorted(model.states.items()) if reason]
            raise LoadFailed(f"model '{name}' did not load: {'; '.join(reasons) or 'no version folder'}")

    async def unload(self, name: str) -> None:
        await self.repository.unload(self._controlled(name, "unload"))

    def _controlled(self, name: str, action: str) -> str:
        if self.repository.control != "explicit":
            raise RepositoryError(f"explicit model {action} is not allowed with --model-control {self.repository.control}")
        return self.repository.check_model(name)
