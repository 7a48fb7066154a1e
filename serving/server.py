"""A lightweight HTTP server for a `Service`: ``esd-sdk serve --model DIR``.

Endpoints:
- ``POST /generate`` with a JSON body ``{"prompt": str, "seed": int, "steps": int,
  "guidance": float, "height": int, "width": int, "deadline_s": float, "format": "png" | "json"}``
  (only ``prompt`` is required; ``deadline_s`` defaults to the service's, ``--deadline-s``).
  ``png`` (the default) answers ``image/png``; ``json`` answers
  ``{"image": <base64 PNG>, "seed", "batch_size", "latency_ms"}``.
- ``GET /healthz``: ``{"status": "ok", ...}``; 503 ``warming`` until the service's warm-up has
  run (so a load balancer sends no traffic to a cold replica), 503 ``draining`` during shutdown.
- ``GET /metrics``: Prometheus text format: request counts by endpoint and status, a latency
  histogram for /generate, images, batches and batch sizes, requests dropped at their deadline,
  queue depth, requests in flight, warm. The service's counters come from one `Service.stats()`
  snapshot.

Errors are JSON ``{"error": "<one line>"}``: 400 for a malformed body or an argument out of
bounds, 404/405 for the wrong path or method, 413 for a body over 64 KiB, 429 when the queue is
full (with ``Retry-After``), 503 while shutting down, 504 when the request's deadline passed
before its image was ready (a request still queued then is dropped and costs no UNet step).
A failed batch answers 500 with ``{"error": ..., "request_id": ...}`` and an ``X-Request-Id``
header; the details (exception and traceback) go to the log under that id, never to the client.

Why the standard library: the server's own work is parsing a small JSON body and writing a PNG;
the model, batching and back-pressure live in `Service`, which production services embed in
whatever framework they already run. `ThreadingHTTPServer` gives one thread per connection
(they block on their request's future while the single worker runs batches), needs no
dependency, and shuts down cleanly: `serve` stops accepting on SIGINT/SIGTERM, lets the
worker finish every accepted request, and joins the connection threads before returning.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from ..errors import ConfigError, DeadlineExceededError, QueueFullError, ServiceClosedError
from .service import Service, Stats

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
FIELDS = {"prompt": str, "seed": int, "steps": int, "guidance": (int, float), "height": int, "width": int,
          "deadline_s": (int, float), "format": str}
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters and a latency histogram, rendered in Prometheus' text exposition format."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            if seconds is not None:
                self.latency_sum += seconds
                self.latency_count += 1
                for i, bound in enumerate(LATENCY_BUCKETS):
                    if seconds <= bound:
                        self.buckets[i] += 1

    def render(self, stats: Stats) -> str:
        with self._lock:
            lines = ["# HELP esd_requests_total HTTP requests by endpoint and status code.",
                     "# TYPE esd_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'esd_requests_total{{endpoint="{endpoint}",code="{status}"}} {n}')
            lines += ["# HELP esd_request_duration_seconds Latency of successful /generate requests.",
                      "# TYPE esd_request_duration_seconds histogram"]
            for bound, n in zip(LATENCY_BUCKETS, self.buckets):
                lines.append(f'esd_request_duration_seconds_bucket{{le="{bound:g}"}} {n}')
            lines += [f'esd_request_duration_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                      f"esd_request_duration_seconds_sum {self.latency_sum:.6f}",
                      f"esd_request_duration_seconds_count {self.latency_count}"]
        lines += ["# HELP esd_images_total Images generated.", "# TYPE esd_images_total counter",
                  f"esd_images_total {stats.images}",
                  "# HELP esd_batches_total UNet batches run.", "# TYPE esd_batches_total counter",
                  f"esd_batches_total {stats.batches}",
                  "# HELP esd_batch_size_total Batches by number of requests batched together.",
                  "# TYPE esd_batch_size_total counter"]
        for size, n in sorted(stats.batch_sizes.items()):
            lines.append(f'esd_batch_size_total{{size="{size}"}} {n}')
        lines += ["# HELP esd_deadline_dropped_total Requests dropped from the queue at their deadline (no UNet step).",
                  "# TYPE esd_deadline_dropped_total counter",
                  f"esd_deadline_dropped_total {stats.dropped_deadline}",
                  "# HELP esd_queue_depth Requests waiting for a batch.", "# TYPE esd_queue_depth gauge",
                  f"esd_queue_depth {stats.queue_depth}",
                  "# HELP esd_in_flight Requests in the running batch.", "# TYPE esd_in_flight gauge",
                  f"esd_in_flight {stats.in_flight}",
                  "# HELP esd_warm 1 once the warm-up has run.", "# TYPE esd_warm gauge",
                  f"esd_warm {int(stats.warm)}"]
        return "\n".join(lines) + "\n"


def parse_request(body: bytes) -> tuple[dict, str]:
    """The /generate arguments and the response format; ConfigError (-> 400) names what is wrong."""
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"body is not valid JSON ({e.msg} at position {e.pos}): send a JSON object") from None
    if not isinstance(data, dict):
        raise ConfigError('body must be a JSON object like {"prompt": "a red circle"}')
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)}: allowed are {', '.join(FIELDS)}")
    if "prompt" not in data:
        raise ConfigError('missing "prompt"')
    for name, value in data.items():
        kinds = FIELDS[name]
        if not isinstance(value, kinds) or isinstance(value, bool):
            kind = {str: "a string", int: "an integer", (int, float): "a number"}[kinds]
            raise ConfigError(f'"{name}" must be {kind}, got {json.dumps(value)}')
    fmt = data.pop("format", "png")
    if fmt not in ("png", "json"):
        raise ConfigError(f'"format" must be "png" or "json", got "{fmt}"')
    return data, fmt


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    server: "EsdHTTPServer"
    protocol_version = "HTTP/1.1"
    timeout = 5  # seconds an idle keep-alive connection is kept; bounds how long a drain waits for it

    def log_message(self, format, *args):  # route the access log through logging
        logger.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.server.service.closing:
            self.send_header("Connection", "close")
            self.close_connection = True
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict, endpoint: str, headers: dict | None = None) -> None:
        self._send(status, (json.dumps(data) + "\n").encode(), "application/json", headers)
        self.server.metrics.observe(endpoint, status)

    def _error(self, status: int, message: str, endpoint: str, headers: dict | None = None) -> None:
        self._json(status, {"error": message}, endpoint, headers)

    def do_GET(self):
        service = self.server.service
        if self.path == "/healthz":
            if service.closing:
                return self._json(503, {"status": "draining"}, "/healthz")
            stats = service.stats()
            return self._json(200 if stats.warm else 503, {
                "status": "ok" if stats.warm else "warming", "model": self.server.model_name,
                "unet": service.pipeline.runtime.describe(), "queue_depth": stats.queue_depth,
                "max_queue": service.max_queue, "max_batch": service.max_batch, "deadline_s": service.deadline_s},
                "/healthz")
        if self.path == "/metrics":
            body = self.server.metrics.render(service.stats()).encode()
            self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
            return self.server.metrics.observe("/metrics", 200)
        if self.path == "/generate":
            return self._error(405, "use POST for /generate", "/generate", {"Allow": "POST"})
        return self._error(404, f"no endpoint {self.path}: use POST /generate, GET /healthz or GET /metrics", "other")

    def do_POST(self):
        if self.path != "/generate":
            if self.path in ("/healthz", "/metrics"):
                return self._error(405, f"use GET for {self.path}", self.path, {"Allow": "GET"})
            return self._error(404, f"no endpoint {self.path}: use POST /generate", "other")
        start = time.perf_counter()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._error(400, "invalid Content-Length header", "/generate")
        if length > MAX_BODY:
            self.close_connection = True
            return self._error(413, f"body is {length} bytes, the limit is {MAX_BODY}", "/generate")
        body = self.rfile.read(length)
        try:
            args, fmt = parse_request(body)
            future = self.server.service.submit(**args)
        except ConfigError as e:
            return self._error(400, str(e), "/generate")
        except QueueFullError as e:
            return self._error(429, str(e), "/generate", {"Retry-After": "1"})
        except ServiceClosedError as e:
            return self._error(503, str(e), "/generate")
        try:
            result = self.server.service.wait(future)  # bounded by the request's deadline
        except DeadlineExceededError as e:
            return self._error(504, str(e), "/generate")
        except ServiceClosedError as e:  # closed without draining
            return self._error(503, str(e), "/generate")
        except Exception:  # a failed batch: log the details under an id, tell the client only the id
            request_id = uuid.uuid4().hex
            logger.exception("request %s: generation failed", request_id)
            return self._json(500, {"error": f"generation failed: the server logged the details under request id "
                                             f"{request_id}; retry, or report the id", "request_id": request_id},
                              "/generate", {"X-Request-Id": request_id})
        png = encode_png(result.image)
        seconds = time.perf_counter() - start
        headers = {"X-Seed": str(result.seed), "X-Batch-Size": str(result.batch_size),
                   "X-Latency-Ms": f"{seconds * 1000:.1f}"}
        if fmt == "png":
            self._send(200, png, "image/png", headers)
        else:
            self._send(200, (json.dumps({"image": base64.b64encode(png).decode(), "seed": result.seed,
                                         "batch_size": result.batch_size,
                                         "latency_ms": round(seconds * 1000, 1)}) + "\n").encode(),
                       "application/json", headers)
        self.server.metrics.observe("/generate", 200, seconds)


class EsdHTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins connection threads: in-flight responses get written
    block_on_close = True
    request_queue_size = 1024  # listen backlog: a burst of clients must not find it full (socketserver's default: 5)

    def __init__(self, address: tuple[str, int], service: Service, model_name: str = "model"):
        self.service = service
        self.metrics = Metrics()
        self.model_name = model_name
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def drain(self) -> None:
        """Graceful stop: refuse new work, finish accepted requests, then close."""
        self.shutdown()  # stop the accept loop (from another thread than serve_forever's)
        self.service.close(drain=True)
        self.server_close()  # joins the connection threads, which now have their results


def serve(service: Service, host: str = "127.0.0.1", port: int = 8000, model_name: str = "model",
          ready=None) -> None:
    """Run until SIGINT/SIGTERM, then drain. ``ready(server)`` is called once it listens."""
    server = EsdHTTPServer((host, port), service, model_name)
    stopping = threading.Event()

    def stop(signum, frame):
        if not stopping.is_set():
            stopping.set()
            logger.warning("%s: finishing %d queued and %d running requests", signal.Signals(signum).name,
                           service.queue_depth, service.in_flight)
            threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready:
            ready(server)
        server.serve_forever(poll_interval=0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        service.close(drain=True)
        server.server_close()
