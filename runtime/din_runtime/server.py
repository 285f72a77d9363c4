"""`din-runtime serve`: a bundle behind HTTP, speaking the KServe v2 / Open Inference Protocol (the protocol Triton,
KServe and Seldon speak), so one client works against this server and against Triton Inference Server.

Starlette for the routes and uvicorn as the server: both small, ASGI, and the usual pair for a Python model
server; the event loop parses and encodes requests, the dynamic batcher runs the session in a worker thread.
Endpoints: /v2/health/live, /v2/health/ready, /v2 (server metadata), /v2/models/NAME[/versions/1] (model
metadata), /v2/models/NAME[/versions/1]/ready, POST /v2/models/NAME[/versions/1]/infer, POST
/v2/models/NAME/rank (JSON {"user": {...}, "candidates": {...}, "top_k": k}) and /metrics (Prometheus).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import __version__
from .batching import DynamicBatcher, QueueFull, ServerLimits
from .predictor import Predictor
from .protocol import HEADER_LENGTH, ProtocolError, error_body, id_lists, infer_response, model_metadata, parse_infer_request

log = logging.getLogger("din_runtime.server")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class BodyTooLarge(ValueError):
    pass


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("din_request_seconds", "Request latency by endpoint", ["endpoint"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_rows = Histogram("din_batch_rows", "Rows per session call", buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("din_queue_depth", "Requests waiting for the batcher", registry=self.registry)
        self.errors = Counter("din_errors_total", "Refused or failed requests by kind", ["kind"], registry=self.registry)


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


def create_app(predictor: Predictor, name: str, limits: ServerLimits | None = None) -> Starlette:
    """The ASGI application serving `predictor` as model `name`."""
    limits = limits or ServerLimits()
    metrics = Metrics()
    max_body = limits.max_body
    metadata = model_metadata(name, predictor.schema)
    schema = predictor.schema
    integer_histories = [s.name for s in schema.sequences if schema[s.shares].key_type == "int"]  # BYTES in, int IDs out
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher = DynamicBatcher(predictor.run_encoded, predictor.sequences, limits.max_batch, limits.max_delay_ms / 1000, limits.max_queue,
                                 on_batch=metrics.batch_rows.observe)
        batcher.start()
        state["batcher"] = batcher
        metrics.queue_depth.set_function(lambda: batcher.depth)
        yield
        await batcher.stop()

    def refuse(kind: str, status: int, error: Exception) -> Response:
        metrics.errors.labels(kind).inc()
        return Response(error_body(error), status_code=status, media_type="application/json")

    def model_or_404(request: Request) -> Response | None:
        if request.path_params["model"] != name:
            return refuse("unknown_model", 404, LookupError(f"no model '{request.path_params['model']}' here; this server serves '{name}'"))
        return None

    def endpoint(kind: str, work: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """One error mapping for every model endpoint: 404 unknown model, 413 body too large, 400 bad request (the
        runtime's InputError names feature and row), 503 queue full, 500 anything else; latency recorded on success."""
        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            if (missing := model_or_404(request)) is not None:
                return missing
            try:
                response = await work(request)
            except BodyTooLarge as error:
                return refuse("too_large", 413, error)
            except ValueError as error:  # ProtocolError, InputError, invalid JSON, a bad top_k
                return refuse("bad_request", 400, error)
            except QueueFull as error:
                return refuse("queue_full", 503, error)
            except Exception as error:  # noqa: BLE001 - a failure inside the session is this request's 500, not the server's end
                log.exception("%s failed", kind)
                return refuse("internal", 500, error)
            metrics.latency.labels(kind).observe(time.perf_counter() - started)
            log.debug("%s answered in %.2f ms", kind, (time.perf_counter() - started) * 1e3)
            return response
        return handle

    async def infer(request: Request) -> Response:
        body = await _read_body(request, max_body)
        columns, header = parse_infer_request(body, request.headers.get(HEADER_LENGTH.lower()))
        for history in integer_histories:
            if isinstance(columns.get(history), list) and all(isinstance(element, str) for element in columns[history]):
                columns[history] = id_lists(columns[history])
        feed = predictor.encode(columns)
        rows = len(next(iter(feed.values())))
        probabilities = await state["batcher"].submit(feed, rows) if rows else np.zeros(0, dtype=np.float32)
        content, headers = infer_response(name, header, probabilities)
        return Response(content, headers=headers, media_type="application/octet-stream" if headers else "application/json")

    async def rank(request: Request) -> Response:
        try:
            body = json.loads(await _read_body(request, max_body))
        except json.JSONDecodeError as error:
            raise ProtocolError(f"the request is not valid JSON ({error})") from None
        if not isinstance(body, dict) or not isinstance(body.get("user"), dict) or not isinstance(body.get("candidates"), dict):
            raise ProtocolError('expected {"user": {...}, "candidates": {...}, "top_k": k}')
        ranking = await asyncio.to_thread(predictor.rank, body["user"], body["candidates"], body.get("top_k"))
        return JSONResponse({"order": ranking.order.tolist(), "probabilities": ranking.probabilities.astype(np.float64).tolist()})

    async def model(request: Request) -> Response:
        return model_or_404(request) or JSONResponse(metadata)

    async def model_ready(request: Request) -> Response:
        return model_or_404(request) or Response(status_code=200)

    async def ok(request: Request) -> Response:
        return Response(status_code=200)

    async def server(request: Request) -> Response:
        return JSONResponse({"name": "din-runtime", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/v2/health/live", ok), Route("/v2/health/ready", ok), Route("/v2", server), Route("/metrics", prometheus)]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [Route(prefix, model), Route(f"{prefix}/ready", model_ready),
                   Route(f"{prefix}/infer", endpoint("infer", infer), methods=["POST"])]
    routes.append(Route("/v2/models/{model}/rank", endpoint("rank", rank), methods=["POST"]))
    return Starlette(routes=routes, lifespan=lifespan)


def serve(predictor: Predictor, name: str, host: str, port: int, limits: ServerLimits | None = None) -> None:
    """Run until SIGINT or SIGTERM: uvicorn then stops accepting, lets requests in flight finish, and this returns
    (exit status 0; uvicorn itself would re-raise the signal after draining, ending the process by it)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {number: signal.signal(number, self.handle_exit) for number in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)

    app = create_app(predictor, name, limits)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=30)
    DrainingServer(config).run()
