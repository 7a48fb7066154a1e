"""The HTTP server of ``esd-sdk serve``: FastAPI on uvicorn in front of a `Service`.

Endpoints (the OpenAPI schema is at ``/openapi.json``, interactive docs at ``/docs``):
- ``GET /``: the review page (``static/index.html``): a prompt, a seed, the steps and the number
  of images in; the base and the edited model's images from the same seeds side by side (with
  ``--compare``), each with its latency; the erase's summary from its manifest; preset prompts.
- ``GET /summary``: what the page shows about the model, as JSON.
- ``POST /generate`` with a JSON body ``{"prompt": str, "seed": int, "steps": int, "guidance": float,
  "height": int, "width": int, "deadline_s": float, "variant": "base" | "edited", "format": "png" | "json"}``
  (only ``prompt`` is required; ``deadline_s`` defaults to the service's, ``--deadline-s``;
  ``variant`` to ``edited``, and ``base`` needs ``--compare``). ``png`` (the default) answers
  ``image/png``; ``json`` answers ``{"image": <base64 PNG>, "seed", "variant", "batch_size",
  "latency_ms", "queue_ms", "run_ms"}`` (``run_ms``: the UNet batch's own time).
- ``GET /healthz``: ``{"status": "ok", ...}``; 503 ``warming`` until the service's warm-up has
  run (so a load balancer sends no traffic to a cold replica), 503 ``draining`` once it closes.
- ``GET /metrics``: Prometheus metrics (prometheus_client): requests by endpoint, status and
  variant, a latency histogram of /generate by variant, images and batches by variant, batch
  sizes, requests dropped at their deadline, queue depth, requests in flight, warm. The service's
  counters come from one `Service.stats()` snapshot per scrape.

Errors are JSON ``{"error": "<one line>"}``: 400 for a malformed body or an argument out of
bounds, 404/405 for the wrong path or method, 413 for a body over 64 KiB, 429 when the queue is
full (with ``Retry-After``), 503 while shutting down, 504 when the request's deadline passed
before its image was ready (a request still queued then is dropped and costs no UNet step).
A failed batch answers 500 with ``{"error": ..., "request_id": ...}`` and an ``X-Request-Id``
header; the details (exception and traceback) go to the log under that id, never to the client.

The handlers are async: a request submits to the `Service` (which answers at once: accepted,
or 429) and awaits its future without holding a thread, so any number of clients can wait
while the single worker runs batches. The body is read here, not by FastAPI, so that a body
over the limit is refused before it is read and so that any Content-Type is taken as JSON
(``curl -d`` sends form-encoded). Shutdown: on SIGINT/SIGTERM uvicorn stops accepting, lets
every response in flight finish (the worker keeps running the accepted requests), and then the
app's lifespan closes the service.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import ConfigError, DeadlineExceededError, QueueFullError, ServiceClosedError
from .service import Service

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENDPOINTS = ("/", "/summary", "/generate", "/healthz", "/metrics", "/docs", "/openapi.json")
PAGE = Path(__file__).parent / "static" / "index.html"


class GenerateRequest(BaseModel):
    """The body of ``POST /generate``. Bounds (steps, size, prompt length) depend on the model and
    are checked by the service: out of bounds is a 400 that names the bound."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(description="What to draw.", examples=["a red circle"])
    seed: int = Field(0, description="Seed of the starting noise: the same seed gives the same image.")
    steps: int | None = Field(None, description="Denoising steps [the model's own].")
    guidance: float | None = Field(None, description="Classifier-free guidance scale [the model's own].")
    height: int | None = Field(None, description="Image height in pixels [the model's native size].")
    width: int | None = Field(None, description="Image width in pixels [the model's native size].")
    deadline_s: float | None = Field(None, description="Give up (504) after this many seconds [the server's].")
    variant: Literal["base", "edited"] = Field(
        "edited", description="The edited model, or the base model it was erased from (needs `serve --compare`).")
    format: Literal["png", "json"] = Field("png", description="image/png, or JSON with the PNG in base64.")


KINDS = {"string_type": "a string", "int_type": "an integer", "float_type": "a number", "bool_type": "a boolean"}


def request_error(error: ValidationError) -> str:
    """One line naming what is wrong with a /generate body (the first problem found)."""
    errors = error.errors(include_url=False)
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}: allowed are {', '.join(GenerateRequest.model_fields)}"
    e = errors[0]
    name = ".".join(map(str, e["loc"]))
    if e["type"] == "json_invalid":
        return f"body is not valid JSON ({e['ctx']['error']}): send a JSON object"
    if e["type"] == "model_type" or not name:
        return 'body must be a JSON object like {"prompt": "a red circle"}'
    if e["type"] == "missing":
        return f'missing "{name}"'
    if e["type"] == "literal_error":
        return f'"{name}" must be {e["ctx"]["expected"].replace(chr(39), chr(34))}, got {json.dumps(e["input"])}'
    if e["type"] in KINDS:
        return f'"{name}" must be {KINDS[e["type"]]}, got {json.dumps(e["input"])}'
    return f'"{name}": {e["msg"]}'


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers)


# ------------------------------------------------------------------------------------ metrics

class _ServiceCollector:
    """The service's counters, read as one `Service.stats()` snapshot per scrape."""

    def __init__(self, service: Service):
        self.service = service

    def collect(self):
        stats = self.service.stats()
        images = CounterMetricFamily("esd_images", "Images generated, by variant.", labels=["variant"])
        batches = CounterMetricFamily("esd_batches", "UNet batches run, by variant.", labels=["variant"])
        for variant in stats.images_by_variant:
            images.add_metric([variant], stats.images_by_variant[variant])
            batches.add_metric([variant], stats.batches_by_variant[variant])
        sizes = CounterMetricFamily("esd_batch_size", "Batches by number of requests batched together.",
                                    labels=["size"])
        for size, n in sorted(stats.batch_sizes.items()):
            sizes.add_metric([str(size)], n)
        yield from (images, batches, sizes)
        yield CounterMetricFamily("esd_deadline_dropped",
                                  "Requests dropped from the queue at their deadline (no UNet step).",
                                  value=stats.dropped_deadline)
        yield GaugeMetricFamily("esd_queue_depth", "Requests waiting for a batch.", value=stats.queue_depth)
        yield GaugeMetricFamily("esd_in_flight", "Requests in the running batch.", value=stats.in_flight)
        yield GaugeMetricFamily("esd_warm", "1 once the warm-up has run.", value=int(stats.warm))


class Metrics:
    """The server's Prometheus registry: its own (not the process-wide default), so that several
    servers can live in one process, as in the tests."""

    def __init__(self, service: Service):
        self.registry = CollectorRegistry()
        self.requests = Counter("esd_requests", "HTTP requests by endpoint, status code and variant (/generate).",
                                ["endpoint", "code", "variant"], registry=self.registry)
        self.latency = Histogram("esd_request_duration_seconds", "Latency of successful /generate requests.",
                                 ["variant"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_ServiceCollector(service))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CountRequests:
    """ASGI middleware: count every response (404s and 405s included) by endpoint, code and variant."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # what the client gets if the app fails before answering

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            variant = scope.get("state", {}).get("variant", "")
            self.metrics.requests.labels(endpoint, str(status), variant).inc()


# ------------------------------------------------------------------------------------ the app

def create_app(service: Service, model_name: str = "model", manifest: dict | None = None) -> FastAPI:
    """The FastAPI app serving ``service``. ``manifest``: the erase output's (``esd.json``), for
    the review page's summary of the erase and its preset prompts."""
    from ..report import manifest_summary, review_prompts

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(service.close, drain=True)  # after uvicorn has answered every request in flight

    app = FastAPI(title="esd-sdk serve", version=_version(), lifespan=lifespan,
                  description="Text-to-image with an erased concept: an ESD-edited model, and with `--compare` "
                              "the base model it was erased from. The review page is at /.")
    metrics = Metrics(service)
    app.add_middleware(_CountRequests, metrics=metrics)
    app.state.service, app.state.metrics = service, metrics
    page = PAGE.read_text(encoding="utf-8")
    pipe = service.pipeline
    review = {"model": model_name, "compare": len(service.pipelines) > 1, "variants": list(service.pipelines),
              "defaults": {"steps": pipe.defaults.num_inference_steps, "guidance": pipe.defaults.guidance_scale,
                           "size": pipe.default_size},
              "erase": manifest_summary(manifest) if manifest else None,
              "presets": review_prompts(manifest) if manifest else []}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}: use POST /generate, GET /healthz, GET /metrics or GET /"
        elif exc.status_code == 405:
            message = f"use {(exc.headers or {}).get('Allow', 'another method')} for {request.url.path}"
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, exc.headers)

    @app.get("/", response_class=HTMLResponse, summary="The review page")
    async def index():
        return HTMLResponse(page)

    @app.get("/summary", summary="What the review page shows about the model")
    async def summary():
        return review

    @app.get("/healthz", summary="Ready (200), warming up or draining (503)")
    async def healthz():
        if service.closing:
            return JSONResponse({"status": "draining"}, 503)
        stats = service.stats()
        return JSONResponse({"status": "ok" if stats.warm else "warming", "model": model_name,
                             "compare": review["compare"], "variants": review["variants"],
                             "unet": pipe.runtime.describe(), "queue_depth": stats.queue_depth,
                             "max_queue": service.max_queue, "max_batch": service.max_batch,
                             "deadline_s": service.deadline_s}, 200 if stats.warm else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/generate", summary="Generate one image", response_class=Response, responses={
        200: {"content": {"image/png": {}, "application/json": {}}, "description": "The image (format png or json)."},
        400: {"description": "Malformed body or argument out of bounds."}, 413: {"description": "Body over 64 KiB."},
        429: {"description": "Queue full: retry after Retry-After seconds."}, 503: {"description": "Shutting down."},
        504: {"description": "The deadline passed before the image was ready."}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": GenerateRequest.model_json_schema()}}}})
    async def generate(request: Request):
        start = time.perf_counter()
        body = await _read_body(request)
        if body is None:
            return _error(413, f"body is over the limit of {MAX_BODY} bytes: send a smaller JSON object",
                          {"Connection": "close"})
        try:
            args = GenerateRequest.model_validate_json(body)
        except ValidationError as e:
            return _error(400, request_error(e))
        request.state.variant = args.variant
        try:
            future = service.submit(args.prompt, args.seed, args.steps, args.guidance, args.height, args.width,
                                    args.deadline_s, args.variant)
        except ConfigError as e:
            return _error(400, str(e))
        except QueueFullError as e:
            return _error(429, str(e), {"Retry-After": "1"})
        except ServiceClosedError as e:
            return _error(503, str(e))
        try:
            result = await service.wait_async(future)  # bounded by the request's deadline
        except DeadlineExceededError as e:
            return _error(504, str(e))
        except ServiceClosedError as e:  # closed without draining
            return _error(503, str(e))
        except Exception:  # a failed batch: log the details under an id, tell the client only the id
            request_id = uuid.uuid4().hex
            logger.exception("request %s: generation failed", request_id)
            return JSONResponse({"error": f"generation failed: the server logged the details under request id "
                                          f"{request_id}; retry, or report the id", "request_id": request_id},
                                500, {"X-Request-Id": request_id})
        png = await run_in_threadpool(encode_png, result.image)
        seconds = time.perf_counter() - start
        metrics.latency.labels(args.variant).observe(seconds)
        headers = {"X-Seed": str(result.seed), "X-Variant": result.variant, "X-Batch-Size": str(result.batch_size),
                   "X-Latency-Ms": f"{seconds * 1000:.1f}"}
        if args.format == "png":
            return Response(png, media_type="image/png", headers=headers)
        return JSONResponse({"image": base64.b64encode(png).decode(), "seed": result.seed, "variant": result.variant,
                             "batch_size": result.batch_size, "latency_ms": round(seconds * 1000, 1),
                             "queue_ms": round(result.queue_seconds * 1000, 1),
                             "run_ms": round(result.run_seconds * 1000, 1)}, headers=headers)

    return app


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None if it is over MAX_BODY (refused unread when its length says so)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)


def _version() -> str:
    from .. import __version__

    return __version__


# ------------------------------------------------------------------------------------ running it

class _Uvicorn(uvicorn.Server):
    """uvicorn, with two changes for ``esd-sdk serve``: a drain is logged with what it waits
    for, and after a graceful stop on SIGINT/SIGTERM it returns instead of re-raising the
    signal (uvicorn's default, which would kill the process before the CLI reports and exits 0)."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame):
        if not self.should_exit:
            logger.warning("%s: finishing %d queued and %d running requests", signal.Signals(sig).name,
                           self.service.queue_depth, self.service.in_flight)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class EsdServer:
    """The app on uvicorn, on a socket bound when this is created (so with port 0 the real port
    is known at once, and a port in use fails here, with OSError).

        >>> server = EsdServer(service, port=0)
        >>> server.start()                          # in a thread (tests, notebooks); or run() to block
        >>> server.url                              # http://127.0.0.1:<port>
        >>> server.drain()                          # finish the requests in flight, close the service
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8000, model_name: str = "model",
                 manifest: dict | None = None):
        self.service = service
        self.app = create_app(service, model_name, manifest)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=1024)
        # backlog: a burst of clients must not find the listen queue full before the loop accepts them
        config = uvicorn.Config(self.app, log_config=None, access_log=False, backlog=1024,
                                timeout_graceful_shutdown=None)
        self.server = _Uvicorn(config, service)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (from the main thread) or `drain`, then stop gracefully."""
        self.server.run(sockets=[self.socket])

    def start(self) -> "EsdServer":
        """Serve from a background thread; returns once it accepts connections."""
        self._thread = threading.Thread(target=self.run, name="esd-http", daemon=True)
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            time.sleep(0.01)
        return self

    def drain(self, timeout: float | None = 60) -> None:
        """Graceful stop: stop accepting, finish the responses in flight, close the service."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)


def serve(service: Service, host: str = "127.0.0.1", port: int = 8000, model_name: str = "model",
          ready: Callable[[EsdServer], None] | None = None, manifest: dict | None = None) -> None:
    """Run until SIGINT/SIGTERM, then drain. ``ready(server)`` is called once it listens;
    ``manifest``: the erase output's, for the review page."""
    server = EsdServer(service, host, port, model_name, manifest)
    try:
        if ready:
            ready(server)
        server.run()
    finally:
        service.close(drain=True)  # already closed by the app's shutdown, unless startup failed
