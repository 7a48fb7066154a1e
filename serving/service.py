"""A thread-safe front for a pipeline: requests from any number of threads, micro-batched into
one UNet batch, with a bounded queue for back-pressure. This is the object to embed in a service.

    >>> service = Service(Text2ImagePipeline(base, runtime), max_batch=8, max_wait_ms=5)
    >>> image = service.generate("a red circle", seed=7)          # blocking, from any thread
    >>> future = service.submit("a blue square", seed=8)          # or a concurrent.futures.Future
    >>> service.close()                                           # finishes what was accepted, then stops

One worker thread owns the pipeline. It takes the oldest waiting request, waits at most
``max_wait_ms`` for others that can share its batch (same steps and size; seeds and guidance
may differ), and runs up to ``max_batch`` of them as one pipeline call. Under load the queue
refills while a batch runs, so batches fill without waiting. When ``max_queue`` requests are
already waiting, `submit` raises `QueueFullError` at once instead of letting latency grow
without bound (the HTTP server answers 429).

Batching does not change results beyond floating-point noise: each image's starting noise
comes from its own seed, and every operation is per-sample.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ..errors import QueueFullError, ServiceClosedError
from .pipeline import Text2ImagePipeline

logger = logging.getLogger(__name__)




@dataclass
class Request:
    prompt: str
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None

    def key(self) -> tuple:
        """Requests with the same key can share a batch."""
        return (self.steps, self.height, self.width)


@dataclass
class Result:
    image: np.ndarray  # (H, W, 3) floats in [0, 1]
    seed: int
    batch_size: int  # how many requests shared the UNet batch
    queue_seconds: float  # from submit to the start of its batch
    run_seconds: float  # the batch's pipeline call


@dataclass
class _Item:
    request: Request
    future: Future
    submitted: float = field(default_factory=time.perf_counter)


class Service:
    """Micro-batching, thread-safe access to a `Text2ImagePipeline`."""

    def __init__(self, pipeline: Text2ImagePipeline, max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 64):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._items: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._in_flight = 0
        self.batches = 0
        self.images = 0
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._worker = threading.Thread(target=self._run, name="esd-service", daemon=True)
        self._worker.start()

    # --- what callers use -------------------------------------------------------------
    def submit(self, prompt: str, seed: int = 0, steps: int | None = None, guidance: float | None = None,
               height: int | None = None, width: int | None = None) -> Future:
        """Queue one image. Raises `ConfigError` for invalid arguments (checked here, in the
        caller's thread), `QueueFullError` or `ServiceClosedError`; the future holds a `Result`."""
        pipe = self.pipeline
        request = Request(prompt, seed, pipe.defaults.num_inference_steps if steps is None else steps,
                          pipe.defaults.guidance_scale if guidance is None else guidance,
                          height or pipe.default_size, width or pipe.default_size)
        pipe.check([request.prompt], [request.seed], request.steps, [request.guidance], request.height, request.width)
        item = _Item(request, Future())
        with self._cond:
            if self._closing:
                raise ServiceClosedError("the service is shutting down: send the request to another replica")
            if len(self._items) >= self.max_queue:
                raise QueueFullError(f"queue full ({self.max_queue} waiting): retry later")
            self._items.append(item)
            self._cond.notify()
        return item.future

    def generate(self, prompt: str, seed: int = 0, steps: int | None = None, guidance: float | None = None,
                 height: int | None = None, width: int | None = None, timeout: float | None = None) -> np.ndarray:
        """One image (H, W, 3) in [0, 1]; blocks until it is ready."""
        return self.submit(prompt, seed, steps, guidance, height, width).result(timeout).image

    @property
    def queue_depth(self) -> int:
        return len(self._items)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def closing(self) -> bool:
        return self._closing

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests. With ``drain``, finish every accepted request first;
        otherwise fail the waiting ones with `ServiceClosedError`."""
        with self._cond:
            self._closing = True
            if not drain:
                while self._items:
                    self._items.popleft().future.set_exception(ServiceClosedError("the service was closed"))
            self._cond.notify_all()
        self._worker.join(timeout)

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the worker ---------------------------------------------------------------------
    def _take_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._items:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._items.popleft()
            batch = [first]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                for item in list(self._items):
                    if item.request.key() == first.request.key():
                        self._items.remove(item)
                        batch.append(item)
                        if len(batch) == self.max_batch:
                            break
                remaining = deadline - time.perf_counter()
                if len(batch) == self.max_batch or remaining <= 0 or self._closing:
                    break
                self._cond.wait(remaining)
            self._in_flight = len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if not batch:
                self._in_flight = 0
                continue
            start = time.perf_counter()
            requests = [item.request for item in batch]
            first = requests[0]
            try:
                images = self.pipeline([r.prompt for r in requests], seeds=[r.seed for r in requests], steps=first.steps,
                                       guidance=[r.guidance for r in requests], height=first.height, width=first.width)
            except BaseException as e:  # the callers get the error; the worker keeps serving
                logger.exception("batch of %d failed", len(batch))
                for item in batch:
                    item.future.set_exception(e)
            else:
                run = time.perf_counter() - start
                for item, image in zip(batch, images):
                    item.future.set_result(Result(image, item.request.seed, len(batch), start - item.submitted, run))
                self.batches += 1
                self.images += len(batch)
                self.batch_sizes[len(batch)] += 1
            finally:
                self._in_flight = 0
