"""`din-runtime serve`: bundles behind HTTP, speaking the KServe v2 / Open Inference Protocol (the protocol Triton,
KServe and Seldon speak), so one client works against this server and against Triton Inference Server.

Starlette for the routes and uvicorn as the server: both small, ASGI, and the usual pair for a Python model
server; the event loop parses and encodes requests, each version's dynamic batcher runs its session in a worker
thread. It serves one bundle (model version 1) or a model repository in Triton's layout (repository.py), with
Triton's repository extension. Endpoints: /v2/health/live, /v2/health/ready, /v2 (server metadata),
/v2/models/NAME[/versions/V] (model metadata), /v2/models/NAME[/versions/V]/ready, POST
/v2/models/NAME[/versions/V]/infer, POST /v2/models/NAME[/versions/V]/rank (JSON {"user": {...}, "candidates":
{...}, "top_k": k, "explain": false}), POST /v2/models/NAME[/versions/V]/explain (an infer request's body; JSON
probabilities and each row's attention weights), POST /v2/repository/index, POST /v2/repository/models/NAME/load and .../unload, and /metrics
(Prometheus).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import __version__
from .batching import QueueFull, ServerLimits
from .protocol import HEADER_LENGTH, ProtocolError, error_body, id_lists, infer_response, model_metadata, parse_infer_request
from .repository import Repository, RepositoryError, Version

log = logging.getLogger("din_runtime.server")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class BodyTooLarge(ValueError):
    pass


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


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body of {int(declared):,} bytes is larger than the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is larger than the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(repository: Repository, limits: ServerLimits | None = None, poll_seconds: float | None = None) -> Starlette:
    """The ASGI application serving the repository's models; with `poll_seconds` it rescans the repository that often."""
    limits = limits or ServerLimits()
    metrics = Metrics()
    repository.on_load = lambda model, result: metrics.loads.labels(model, result).inc()
    repository.on_change = lambda version, serving: metrics.watch(repository, version, serving)
    max_body = limits.max_body

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await repository.scan()
        poller = asyncio.get_running_loop().create_task(_poll(repository, poll_seconds)) if poll_seconds else None
        app.state.repository = repository
        yield
        if poller is not None:
            poller.cancel()
        await repository.stop()

    def refuse(kind: str, status: int, error: Exception) -> Response:
        metrics.errors.labels(kind).inc()
        return Response(error_body(error), status_code=status, media_type="application/json")

    def endpoint(kind: str, work: Callable[[Request, Version], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """One error mapping for every model endpoint: 404 unknown model or version, 413 body too large, 400 bad
        request (the runtime's InputError names feature and row; a name that is no plain folder name), 503 queue
        full, 500 anything else; latency recorded on success, by the version that answered."""
        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            try:
                with repository.lease(request.path_params["model"], request.path_params.get("version")) as version:
                    response = await work(request, version)
            except LookupError as error:
                return refuse("unknown_model", 404, error)
            except BodyTooLarge as error:
                return refuse("too_large", 413, error)
            except ValueError as error:  # ProtocolError, InputError, RepositoryError, invalid JSON, a bad top_k
                return refuse("bad_request", 400, error)
            except QueueFull as error:
                return refuse("queue_full", 503, error)
            except Exception as error:  # noqa: BLE001 - a failure inside the session is this request's 500, not the server's end
                log.exception("%s failed", kind)
                return refuse("internal", 500, error)
            metrics.latency.labels(kind, version.model, str(version.number)).observe(time.perf_counter() - started)
            log.debug("%s answered in %.2f ms", kind, (time.perf_counter() - started) * 1e3)
            return response
        return handle

    async def request_columns(request: Request, version: Version) -> tuple[dict, dict]:
        """An infer request's columns for the encoder (histories of integer IDs sent as BYTES made ID lists) and header."""
        body = await _read_body(request, max_body)
        columns, header = parse_infer_request(body, request.headers.get(HEADER_LENGTH.lower()))
        for history in version.integer_histories:  # BYTES in, int IDs out
            if isinstance(columns.get(history), list) and all(isinstance(element, str) for element in columns[history]):
                columns[history] = id_lists(columns[history])
        return columns, header

    async def infer(request: Request, version: Version) -> Response:
        columns, header = await request_columns(request, version)
        predictor = version.predictor
        feed = predictor.encode(columns)
        rows = len(next(iter(feed.values())))
        probabilities = await version.batcher.submit(feed, rows) if rows else np.zeros(0, dtype=np.float32)
        content, headers = infer_response(version.model, header, probabilities, version.number)
        return Response(content, headers=headers, media_type="application/octet-stream" if headers else "application/json")

    async def rank(request: Request, version: Version) -> Response:
        try:
            body = json.loads(await _read_body(request, max_body))
        except json.JSONDecodeError as error:
            raise ProtocolError(f"the request is not valid JSON ({error})") from None
        if not isinstance(body, dict) or not isinstance(body.get("user"), dict) or not isinstance(body.get("candidates"), dict):
            raise ProtocolError('expected {"user": {...}, "candidates": {...}, "top_k": k}')
        explained = body.get("explain", False)
        if not isinstance(explained, bool):
            raise ProtocolError(f"'explain' must be true or false, not {explained!r}")
        ranking = await asyncio.to_thread(version.predictor.rank, body["user"], body["candidates"], body.get("top_k"), explained)
        answer = {"model_name": version.model, "model_version": str(version.number), "order": ranking.order.tolist(),
                  "probabilities": ranking.probabilities.astype(np.float64).tolist()}
        if ranking.weights is not None:
            answer["weights"] = [row.astype(np.float64).tolist() for row in ranking.weights]
        return JSONResponse(answer)

    async def explain(request: Request, version: Version) -> Response:
        columns, header = await request_columns(request, version)
        explanation = await asyncio.to_thread(version.predictor.explain, columns)
        body = {"model_name": version.model, "model_version": str(version.number),
                "probabilities": explanation.probabilities.astype(np.float64).tolist(),
                "weights": [row.astype(np.float64).tolist() for row in explanation.weights]}
        return JSONResponse({**({"id": header["id"]} if "id" in header else {}), **body})

    async def model(request: Request, version: Version) -> Response:
        versions = sorted(repository.models[version.model].versions)
        return JSONResponse(model_metadata(version.model, version.predictor.schema, versions))

    async def model_ready(request: Request, version: Version) -> Response:
        return Response(status_code=200)

    async def ok(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        serving = any(m.current is not None for m in repository.models.values())
        return Response(status_code=200 if serving else 503)

    async def server(request: Request) -> Response:
        return JSONResponse({"name": "din-runtime", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def index(request: Request) -> Response:
        body = await request.body()
        try:
            asked = json.loads(body) if body.strip() else {}
        except json.JSONDecodeError as error:
            return refuse("bad_request", 400, ProtocolError(f"the request is not valid JSON ({error})"))
        return JSONResponse(repository.index(ready_only=isinstance(asked, dict) and bool(asked.get("ready"))))

    def control(unload: bool) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            if repository.control != "explicit":
                return refuse("bad_request", 400, RepositoryError(
                    f"explicit model {'unload' if unload else 'load'} is not allowed with --model-control {repository.control}"))
            try:
                name = repository.check_model(request.path_params["model"])
            except (RepositoryError, LookupError) as error:
                return refuse("bad_request" if isinstance(error, RepositoryError) else "unknown_model",
                              400 if isinstance(error, RepositoryError) else 404, error)
            if unload:
                await repository.unload(name)
            else:
                await repository.scan(name)
                if repository.models[name].current is None:
                    reasons = [r for _, (state, r) in sorted(repository.models[name].states.items()) if r]
                    return refuse("load_failed", 400, RepositoryError(f"model '{name}' did not load: {'; '.join(reasons) or 'no version folder'}"))
            return Response(status_code=200)
        return handle

    routes = [Route("/v2/health/live", ok), Route("/v2/health/ready", ready), Route("/v2", server), Route("/metrics", prometheus),
              Route("/v2/repository/index", index, methods=["POST"]),
              Route("/v2/repository/models/{model}/load", control(unload=False), methods=["POST"]),
              Route("/v2/repository/models/{model}/unload", control(unload=True), methods=["POST"])]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [Route(prefix, endpoint("metadata", model)), Route(f"{prefix}/ready", endpoint("ready", model_ready)),
                   Route(f"{prefix}/infer", endpoint("infer", infer), methods=["POST"]),
                   Route(f"{prefix}/rank", endpoint("rank", rank), methods=["POST"]),
                   Route(f"{prefix}/explain", endpoint("explain", explain), methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


async def _poll(repository: Repository, seconds: float) -> None:
    """Poll mode: rescan the repository every `seconds`, a failed scan logged and tried again next time."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await repository.scan()
        except Exception:  # noqa: BLE001 - a scan's failure must not end polling, nor serving
            log.exception("repository scan failed")


def serve(repository: Repository, host: str, port: int, limits: ServerLimits | None = None, poll_seconds: float | None = None) -> None:
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

    app = create_app(repository, limits, poll_seconds)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=30)
    DrainingServer(config).run()
