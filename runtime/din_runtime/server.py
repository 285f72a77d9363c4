"""`din-runtime serve`: bundles behind HTTP, speaking the KServe v2 / Open Inference Protocol (the protocol Triton,
KServe and Seldon speak), so one client works against this server and against Triton Inference Server.

Starlette for the routes and uvicorn as the server: both small, ASGI, and the usual pair for a Python model
server. Each route reads its body through one size-limited reader, decodes it (protocol.py), runs it on the data
plane (dataplane.py) and encodes the answer (protocol.py); this module adds only HTTP: routes, status codes and
metrics. It serves one bundle (model version 1) or a model repository in Triton's layout (repository.py), with
Triton's repository extension. Endpoints: /v2/health/live, /v2/health/ready, /v2 (server metadata),
/v2/models/NAME[/versions/V] (model metadata), /v2/models/NAME[/versions/V]/ready, POST
/v2/models/NAME[/versions/V]/infer, POST /v2/models/NAME[/versions/V]/rank (JSON {"user": {...}, "candidates":
{...}, "top_k": k, "explain": false}), POST /v2/models/NAME[/versions/V]/explain (an infer request's body; JSON
probabilities and each row's attention weights), POST /v2/repository/index, POST /v2/repository/models/NAME/load
and .../unload, and /metrics (Prometheus). Every error, an unrouted path's included, is one JSON line.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .batching import QueueFull
from .config import ServerLimits
from .dataplane import DataPlane, LoadFailed
from .protocol import (
    HEADER_LENGTH,
    BodyTooLarge,
    decode_events,
    decode_index,
    decode_infer,
    decode_rank,
    error_body,
    explain_response,
    infer_response,
    rank_response,
    read_body,
)
from .repository import Repository, Version
from .served_log import ServedLog
from .stores import BehaviourStore, StoreError

log = logging.getLogger("din_runtime.server")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
JSON = "application/json"


class Metrics:
    """The server's Prometheus metrics, in a registry of its own, labelled by model and version where they concern one."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("din_request_seconds", "Request latency by endpoint, model and version", ["endpoint", "model", "version"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("din_batch_rows", "Rows per session call", ["model", "version"], buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.queue_depth = Gauge("din_queue_depth", "Requests waiting for a version's batcher", ["model", "version"], registry=self.registry)
        self.errors = Counter("din_errors_total", "Refused or failed requests by kind", ["kind"], registry=self.registry)
        self.loads = Counter("din_model_loads_total", "Version loads by model and result (success, failure)", ["model", "result"],
                             registry=self.registry)
        self.current = Gauge("din_model_version", "The version a request without one gets, by model (0: none)", ["model"],
                             registry=self.registry)
        self.store_seconds = Histogram("din_store_seconds", "Behaviour store calls by operation", ["operation"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.events = Counter("din_events_total", "Events posted, by result (accepted, duplicate, refused)", ["result"],
                              registry=self.registry)
        self.store_behaviours = Gauge("din_store_behaviours", "Behaviours the store holds", registry=self.registry)
        self.served_rows = Counter("din_served_rows_total", "Scored rows of the served log, by result (logged: written; "
                                   "dropped: the writer's queue was full, or the write failed)", ["result"], registry=self.registry)

    def watch(self, repository: Repository, version: Version, serving: bool) -> None:
        """Follow a version as it starts or stops serving: its batch sizes and queue, and its model's current version."""
        labels = (version.model, str(version.number))
        if serving:
            batch_rows = self.batch_rows.labels(*labels)
            version.batcher.on_batch = batch_rows.observe
            self.queue_depth.labels(*labels).set_function(lambda: version.batcher.depth)
        else:
            self.queue_depth.remove(*labels)
        current = repository.models[version.model].current
        self.current.labels(version.model).set(current.number if current else 0)


# Each refusal's kind (the din_errors_total label) and HTTP status, first match wins.
REFUSALS: tuple[tuple[type[Exception], str, int], ...] = (
    (LookupError, "unknown_model", 404),
    (BodyTooLarge, "too_large", 413),
    (LoadFailed, "load_failed", 400),
    (StoreError, "store_unavailable", 503),
    (ValueError, "bad_request", 400),  # ProtocolError, InputError, RepositoryError, a bad top_k
    (QueueFull, "queue_full", 503),
)


def create_app(repository: Repository, limits: ServerLimits | None = None, poll_seconds: float | None = None,
               store: BehaviourStore | None = None, served_log: Callable[..., ServedLog] | None = None) -> Starlette:
    """The ASGI application serving the repository's models; with `poll_seconds` it rescans the repository that often;
    with `store`, requests may leave the user side out and events are taken at /v2/events; with `served_log` (a
    ServedLog factory taking on_rows), every scored row is logged, and the log is written out at shutdown.
    Routes only read, decode (protocol.py), run on the data plane (dataplane.py) and encode."""
    limits = limits or ServerLimits()
    metrics = Metrics()
    log_rows = None if served_log is None else served_log(on_rows=lambda result, count: metrics.served_rows.labels(result).inc(count))
    plane = DataPlane(repository, store, lambda operation, seconds: metrics.store_seconds.labels(operation).observe(seconds),
                      log_rows)
    if store is not None:
        metrics.store_behaviours.set_function(lambda: _held(store))
    repository.on_load = lambda model, result: metrics.loads.labels(model, result).inc()
    repository.on_change = lambda version, serving: metrics.watch(repository, version, serving)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await repository.scan()
        poller = asyncio.get_running_loop().create_task(_poll(repository, poll_seconds)) if poll_seconds else None
        app.state.repository = repository
        yield
        if poller is not None:
            poller.cancel()
        await repository.stop()
        if log_rows is not None:
            await asyncio.to_thread(log_rows.close)  # the rows of requests served so far, written before the exit

    def refuse(error: Exception, kind: str | None = None, status: int | None = None) -> Response:
        """The one error response: {"error": one line}, counted by kind."""
        if kind is None or status is None:
            kind, status = next(((k, s) for t, k, s in REFUSALS if isinstance(error, t)), ("internal", 500))
        metrics.errors.labels(kind).inc()
        return Response(error_body(error), status_code=status, media_type=JSON)

    async def body(request: Request) -> bytes:
        return await read_body(request.headers.get("content-length"), request.stream(), limits.max_body)

    def guarded(kind: str, work: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Every route's error mapping (REFUSALS; anything else a 500 for this request, never the server's end)."""
        async def handle(request: Request) -> Response:
            try:
                return await work(request)
            except Exception as error:  # noqa: BLE001 - mapped to its status; the unexpected logged as a 500
                if not any(isinstance(error, t) for t, _, _ in REFUSALS):
                    log.exception("%s failed", kind)
                return refuse(error)
        return handle

    def on_version(kind: str, work: Callable[[Request, Version], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """A model endpoint: the request runs on the version it leased at its start; latency recorded on success."""
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            with plane.lease(request.path_params["model"], request.path_params.get("version")) as version:
                response = await work(request, version)
            metrics.latency.labels(kind, version.model, str(version.number)).observe(time.perf_counter() - started)
            return response
        return guarded(kind, run)

    async def infer(request: Request, version: Version) -> Response:
        decoded = plane.identified(decode_infer(await body(request), request.headers.get(HEADER_LENGTH), plane.contract(version)))
        probabilities = await plane.infer(version, decoded)
        content, headers = infer_response(version.model, version.number, decoded, probabilities)
        return Response(content, headers=headers, media_type="application/octet-stream" if headers else JSON)

    async def explain(request: Request, version: Version) -> Response:
        decoded = plane.identified(decode_infer(await body(request), request.headers.get(HEADER_LENGTH), plane.contract(version)))
        explanation = await plane.explain(version, decoded)
        return Response(explain_response(version.model, version.number, decoded, explanation.probabilities, explanation.weights),
                        media_type=JSON)

    async def rank(request: Request, version: Version) -> Response:
        decoded = plane.identified(decode_rank(await body(request)))
        ranking = await plane.rank(version, decoded)
        return Response(rank_response(version.model, version.number, decoded, ranking.order, ranking.probabilities, ranking.weights),
                        media_type=JSON)

    async def model(request: Request, version: Version) -> Response:
        return JSONResponse(plane.model_metadata(version))

    async def model_ready(request: Request, version: Version) -> Response:
        return Response(status_code=200)

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if await asyncio.to_thread(plane.ready) else 503)  # the store's ping may wait

    async def server(request: Request) -> Response:
        return JSONResponse(plane.server_metadata())

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def events(request: Request) -> Response:
        try:
            accepted, duplicates = await plane.events(decode_events(await body(request)))
        except ValueError:
            metrics.events.labels("refused").inc()
            raise
        metrics.events.labels("accepted").inc(accepted)
        metrics.events.labels("duplicate").inc(duplicates)
        return JSONResponse({"accepted": accepted, "duplicates": duplicates})

    async def index(request: Request) -> Response:
        return JSONResponse(plane.index(ready_only=decode_index(await body(request))))

    def control(unload: bool) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            await body(request)  # read (and bounded) though unused: the protocol's load takes no parameters here
            name = request.path_params["model"]
            await (plane.unload(name) if unload else plane.load(name))
            return Response(status_code=200)
        return handle

    async def no_route(request: Request, error: Exception) -> Response:
        """Paths and methods that match no route answer like every other error: one JSON line."""
        status = getattr(error, "status_code", 404)
        message = (f"no route for {request.method} {request.url.path}" if status == 404
                   else f"{request.method} is not allowed on {request.url.path}")
        return refuse(LookupError(message), "no_route", status)

    routes = [Route("/v2/health/live", guarded("live", live)), Route("/v2/health/ready", guarded("ready", ready)),
              Route("/v2", guarded("server", server)), Route("/metrics", guarded("metrics", prometheus)),
              Route("/v2/repository/index", guarded("index", index), methods=["POST"]),
              Route("/v2/events", guarded("events", events), methods=["POST"]),
              Route("/v2/repository/models/{model}/load", guarded("load", control(unload=False)), methods=["POST"]),
              Route("/v2/repository/models/{model}/unload", guarded("unload", control(unload=True)), methods=["POST"])]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [Route(prefix, on_version("metadata", model)), Route(f"{prefix}/ready", on_version("ready", model_ready)),
                   Route(f"{prefix}/infer", on_version("infer", infer), methods=["POST"]),
                   Route(f"{prefix}/rank", on_version("rank", rank), methods=["POST"]),
                   Route(f"{prefix}/explain", on_version("explain", explain), methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: no_route, 405: no_route})


def _held(store: BehaviourStore) -> float:
    """The behaviours a store holds, for the metric; NaN while it cannot be reached (a scrape never fails for it)."""
    try:
        return float(store.count())
    except StoreError:
        return float("nan")


async def _poll(repository: Repository, seconds: float) -> None:
    """Poll mode: rescan the repository every `seconds`, a failed scan logged and tried again next time."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await repository.scan()
        except Exception:  # noqa: BLE001 - a scan's failure must not end polling, nor serving
            log.exception("repository scan failed")


def serve(repository: Repository, host: str, port: int, limits: ServerLimits | None = None, poll_seconds: float | None = None,
          store: BehaviourStore | None = None, served_log: Callable[..., ServedLog] | None = None) -> None:
    """Run until SIGINT or SIGTERM: uvicorn then stops accepting, lets requests in flight finish, and this returns
    (exit status 0; uvicorn itself would re-raise the signal after draining, ending the process by it). SIGHUP
    rescans the repository (loading, swapping and unloading as in poll mode), outside of none mode."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {number: signal.signal(number, self.handle_exit) for number in (signal.SIGINT, signal.SIGTERM)}
            loop = asyncio.get_running_loop()
            if repository.control != "none":
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(repository.scan()))
            try:
                yield
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)
                if repository.control != "none":
                    loop.remove_signal_handler(signal.SIGHUP)

    app = create_app(repository, limits, poll_seconds, store, served_log)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=30)
    DrainingServer(config).run()
