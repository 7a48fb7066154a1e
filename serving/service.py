"""A thread-safe front for a pipeline: requests from any number of threads, micro-batched into
one UNet batch, with a bounded queue for back-pressure, per-request deadlines and a warm-up.
This is the object to embed in a service.

    >>> service = Service(Text2ImagePipeline(base, runtime), max_batch=8, max_wait_ms=5, deadline_s=30)
    >>> service.wait_warm()                                       # optional: the warm-up has run
    >>> image = service.generate("a red circle", seed=7)          # blocking, from any thread
    >>> future = service.submit("a blue square", seed=8)          # or a concurrent.futures.Future
    >>> result = service.wait(future)                             # bounded by the request's deadline
    >>> service.stats()                                           # one consistent snapshot of the counters
    >>> service.close()                                           # finishes what was accepted, then stops

A service may hold several variants of the model, e.g. the base and the edited one for a review
side by side (``esd-sdk serve --compare``): ``Service({"base": base_pipe, "edited": edited_pipe})``,
then ``submit(..., variant="base")``. They share the worker, the queue (and so the back-pressure)
and the deadlines; a batch holds requests for one variant only. One worker running every
variant's batches, rather than one per variant, also keeps the variants from competing for the
same cores, so each batch's run time is its own model's.

One worker thread owns the pipeline. It takes the oldest waiting request, waits at most
``max_wait_ms`` for others that can share its batch (same steps and size; seeds and guidance
may differ), and runs up to ``max_batch`` of them as one pipeline call. Under load the queue
refills while a batch runs, so batches fill without waiting. When ``max_queue`` requests are
already waiting, `submit` raises `QueueFullError` at once instead of letting latency grow
without bound (the HTTP server answers 429).

Deadlines: each request may carry one (``deadline_s`` seconds from submit; the service's
``deadline_s`` is the default, None for none). A request whose deadline passes while it is
queued is dropped before it costs a UNet step: the worker checks when it takes a batch and
again just before running it, and `wait` (hence `generate(timeout=)`) withdraws a request it
gives up on from the queue. Either way the future fails with `DeadlineExceededError` (HTTP 504).
A batch that has started runs to the end.

Warm-up: the first call per shape pays for `torch.compile`, CUDA-graph capture or kernel
autotuning. Before serving, the worker runs a one-step batch of 1 and of ``max_batch`` images
for each ``warmup`` size (by default the model's own) and each variant; `warm` says when that is
done (the HTTP server's /healthz answers 503 until then). Requests sent meanwhile wait in the queue.

Batching does not change results beyond floating-point noise: each image's starting noise
comes from its own seed, and every operation is per-sample.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DeadlineExceededError, QueueFullError, ServiceClosedError
from .pipeline import Text2ImagePipeline

logger = logging.getLogger(__name__)

DEFAULT_VARIANT = "edited"  # the name of a service's only pipeline: the served model


@dataclass
class Request:
    prompt: str
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    variant: str = "edited"

    def key(self) -> tuple:
        """Requests with the same key can share a batch."""
        return (self.variant, self.steps, self.height, self.width)


@dataclass
class Result:
    image: np.ndarray  # (H, W, 3) floats in [0, 1]
    seed: int
    batch_size: int  # how many requests shared the UNet batch
    queue_seconds: float  # from submit to the start of its batch
    run_seconds: float  # the batch's pipeline call
    variant: str = "edited"  # the model that made it


@dataclass(frozen=True)
class Stats:
    """The service's counters at one instant, read under its lock: safe to keep and iterate."""

    images: int  # images generated
    batches: int  # pipeline calls run for requests (the warm-up's are not counted)
    images_by_variant: dict[str, int]  # images by variant (every variant served, 0 if none yet)
    batches_by_variant: dict[str, int]  # batches by variant
    batch_sizes: dict[int, int]  # batches by number of requests in them (a copy)
    queue_depth: int  # requests waiting for a batch
    in_flight: int  # requests in the running batch
    dropped_deadline: int  # requests whose deadline passed before they ran: they cost no UNet step
    warm: bool  # the warm-up has finished


class _Pending(Future):
    """A queued request: the `Future` its caller holds, with its submit time and deadline."""

    def __init__(self, request: Request, deadline_s: float | None):
        super().__init__()
        self.request = request
        self.submitted = time.perf_counter()
        self.deadline_s = deadline_s
        self.deadline = None if deadline_s is None else self.submitted + deadline_s

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class Service:
    """Micro-batching, thread-safe access to a `Text2ImagePipeline`, or to several variants of a model.

    Args:
        pipeline: what runs the batches; or pipelines by variant name, e.g. ``{"base": ..., "edited": ...}``
            (one pipeline alone is the variant ``"edited"``: the served model).
        max_batch: requests per UNet batch.
        max_wait_ms: how long the worker waits for companions to a request.
        max_queue: waiting requests beyond which `submit` raises `QueueFullError`.
        deadline_s: the default deadline of a request, in seconds from submit (None: none).
        warmup: True for the pipeline's default size, False for none, or (height, width) sizes:
            each gets a one-step batch of 1 and of ``max_batch`` images before `warm` is set.
    """

    def __init__(self, pipeline: Text2ImagePipeline | Mapping[str, Text2ImagePipeline], max_batch: int = 8,
                 max_wait_ms: float = 5.0, max_queue: int = 64, deadline_s: float | None = None,
                 warmup: bool | Sequence[tuple[int, int]] = True):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ConfigError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        _check_deadline(deadline_s)
        self.pipelines = dict(pipeline) if isinstance(pipeline, Mapping) else {DEFAULT_VARIANT: pipeline}
        if not self.pipelines:
            raise ConfigError("no pipeline given: pass one, or a dict of them by variant name")
        self.default_variant = DEFAULT_VARIANT if DEFAULT_VARIANT in self.pipelines else next(iter(self.pipelines))
        self.pipeline = self.pipelines[self.default_variant]  # the served model (what /healthz describes)
        if warmup is True:
            warmup = [(self.pipeline.default_size, self.pipeline.default_size)]
        self.warmup = [(int(h), int(w)) for h, w in (warmup or [])]
        for pipe in self.pipelines.values():
            for h, w in self.warmup:
                pipe.check(["warm-up"] * max_batch, [0] * max_batch, 1, [pipe.defaults.guidance_scale] * max_batch,
                           h, w)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.deadline_s = deadline_s
        self._items: collections.deque[_Pending] = collections.deque()
        self._gathering: list[_Pending] = []  # the batch the worker is waiting (unlocked) to fill
        self._cond = threading.Condition()  # guards the queue and every counter below
        self._closing = False
        self._in_flight = 0
        self._batches = collections.Counter({name: 0 for name in self.pipelines})
        self._images = collections.Counter({name: 0 for name in self.pipelines})
        self._batch_sizes: collections.Counter[int] = collections.Counter()
        self._dropped_deadline = 0
        self._warm = threading.Event()
        self._worker = threading.Thread(target=self._run, name="esd-service", daemon=True)
        self._worker.start()

    # --- what callers use -------------------------------------------------------------
    def submit(self, prompt: str, seed: int = 0, steps: int | None = None, guidance: float | None = None,
               height: int | None = None, width: int | None = None, deadline_s: float | None = None,
               variant: str | None = None) -> Future:
        """Queue one image of ``variant`` (default: the served model). Raises `ConfigError` for
        invalid arguments (checked here, in the caller's thread), `QueueFullError` or
        `ServiceClosedError`; the future holds a `Result`, or fails with `DeadlineExceededError`
        if ``deadline_s`` (default: the service's) passes while the request waits."""
        variant = self.default_variant if variant is None else variant
        if variant not in self.pipelines:
            raise ConfigError(f"variant '{variant}' is not served here (this server has {', '.join(self.pipelines)}): "
                              "`esd-sdk serve --compare` serves the base model next to the edited one")
        pipe = self.pipelines[variant]
        request = Request(prompt, seed, pipe.defaults.num_inference_steps if steps is None else steps,
                          pipe.defaults.guidance_scale if guidance is None else guidance,
                          height or pipe.default_size, width or pipe.default_size, variant)
        pipe.check([request.prompt], [request.seed], request.steps, [request.guidance], request.height, request.width)
        _check_deadline(deadline_s)
        item = _Pending(request, self.deadline_s if deadline_s is None else deadline_s)
        with self._cond:
            if self._closing:
                raise ServiceClosedError("the service is shutting down: send the request to another replica")
            if len(self._items) >= self.max_queue:
                raise QueueFullError(f"queue full ({self.max_queue} waiting): retry later")
            self._items.append(item)
            self._cond.notify()
        return item

    def wait(self, future: Future, timeout: float | None = None) -> Result:
        """The `Result` of a future from `submit`, waiting until its request's deadline or
        ``timeout`` seconds, whichever comes first (neither: as long as it takes). Past that,
        `DeadlineExceededError` is raised; a request still queued is withdrawn, so it costs no
        UNet step, and one whose batch has started is left to finish unseen."""
        limit, seconds = self._limit(future, timeout)
        try:
            return future.result(limit)
        except FutureTimeout:
            return self._give_up(future, seconds)

    async def wait_async(self, future: Future, timeout: float | None = None) -> Result:
        """`wait` for asyncio code (the HTTP server): awaits the result without holding a thread,
        so any number of requests can wait at once."""
        limit, seconds = self._limit(future, timeout)
        waiting = asyncio.wrap_future(future)
        try:  # shield: a timeout must not cancel the request itself; _give_up decides its fate
            return await asyncio.wait_for(asyncio.shield(waiting), limit)
        except (TimeoutError, asyncio.TimeoutError):  # the wait's timeout, or a DeadlineExceededError of the request's
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # reported below, not by asyncio
            return self._give_up(future, seconds)

    def _limit(self, future: Future, timeout: float | None) -> tuple[float | None, float | None]:
        """How long to wait for ``future`` from now, and the promise that is (for the message)."""
        limit = seconds = None
        if future.deadline is not None:
            limit, seconds = max(0.0, future.deadline - time.perf_counter()), future.deadline_s
        if timeout is not None and (limit is None or timeout < limit):
            limit = seconds = timeout
        return limit, seconds

    def _give_up(self, future: Future, seconds: float) -> Result:
        """The wait is over: the result if it has just come, else withdraw the request."""
        if future.done():  # it failed with a TimeoutError of its own (a dropped request's), or just finished
            return future.result()
        if self._withdraw(future, seconds):
            raise future.exception() from None
        raise DeadlineExceededError(f"deadline of {seconds:g} s passed while its batch ran: allow a longer "
                                    "deadline_s or ask for fewer steps") from None

    def generate(self, prompt: str, seed: int = 0, steps: int | None = None, guidance: float | None = None,
                 height: int | None = None, width: int | None = None, timeout: float | None = None,
                 variant: str | None = None) -> np.ndarray:
        """One image (H, W, 3) in [0, 1] of ``variant`` (default: the served model); blocks until it
        is ready. ``timeout`` is the request's deadline (if shorter than the service's): past it the
        request is dropped from the queue and `DeadlineExceededError`, a `TimeoutError`, is raised."""
        deadline_s = min((d for d in (timeout, self.deadline_s) if d is not None), default=None)
        return self.wait(self.submit(prompt, seed, steps, guidance, height, width, deadline_s, variant)).image

    def stats(self) -> Stats:
        """One consistent snapshot of the counters (what /metrics renders)."""
        with self._cond:
            return Stats(self._images.total(), self._batches.total(), dict(self._images), dict(self._batches),
                         dict(self._batch_sizes), len(self._items), self._in_flight, self._dropped_deadline,
                         self._warm.is_set())

    @property
    def queue_depth(self) -> int:
        return len(self._items)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def warm(self) -> bool:
        """The warm-up has finished (or there was none): the first request of each warm-up size
        pays no compilation or graph capture."""
        return self._warm.is_set()

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Block until the warm-up has finished; False if ``timeout`` passed first."""
        return self._warm.wait(timeout)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests. With ``drain``, finish every accepted request first;
        otherwise fail the waiting ones with `ServiceClosedError`."""
        with self._cond:
            self._closing = True
            if not drain:
                while self._items:
                    item = self._items.popleft()
                    if item.set_running_or_notify_cancel():
                        item.set_exception(ServiceClosedError("the service was closed"))
            self._cond.notify_all()
        self._worker.join(timeout)

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the worker ---------------------------------------------------------------------
    def _withdraw(self, item: _Pending, seconds: float) -> bool:
        """Take a request its caller gave up on out of the queue, or out of the batch the worker
        is gathering; False if its batch has started."""
        with self._cond:
            for waiting in (self._items, self._gathering):
                if item in waiting:
                    waiting.remove(item)  # from the queue: frees its slot at once
                    self._drop(item, seconds)
                    return True
            return False

    def _drop(self, item: _Pending, seconds: float | None = None) -> None:
        """Fail a request whose deadline passed before it ran (call with the lock held)."""
        if item.set_running_or_notify_cancel():
            seconds = item.deadline_s if seconds is None else seconds
            item.set_exception(DeadlineExceededError(f"deadline of {seconds:g} s passed while queued: retry later "
                                                     "or allow a longer deadline_s"))
            self._dropped_deadline += 1

    def _drop_expired(self) -> None:
        """Drop every queued request whose deadline has passed (call with the lock held)."""
        now = time.perf_counter()
        for item in [item for item in self._items if item.expired(now)]:
            self._items.remove(item)
            self._drop(item)

    def _take_batch(self) -> list[_Pending] | None:
        with self._cond:
            while True:
                self._drop_expired()
                if self._items:
                    break
                if self._closing:
                    return None
                self._cond.wait()
            first = self._items.popleft()
            batch = self._gathering = [first]
            gather_until = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                for item in list(self._items):
                    if item.request.key() == first.request.key():
                        self._items.remove(item)
                        batch.append(item)
                        if len(batch) == self.max_batch:
                            break
                remaining = gather_until - time.perf_counter()
                if len(batch) == self.max_batch or remaining <= 0 or self._closing:
                    break
                self._cond.wait(remaining)
            self._gathering = []
            now, running = time.perf_counter(), []
            for item in batch:  # the wait for companions may have outlasted a deadline
                if item.expired(now):
                    self._drop(item)
                elif item.set_running_or_notify_cancel():  # False: the caller cancelled it
                    running.append(item)
            self._in_flight = len(running)
            return running

    def _warm_up(self) -> None:
        n = self.max_batch
        try:
            for variant, pipe in self.pipelines.items():
                for height, width in self.warmup:
                    for size in sorted({1, n}):
                        if self._closing:
                            return
                        start = time.perf_counter()
                        pipe(["warm-up"] * size, seeds=list(range(size)), steps=1, height=height, width=width)
                        logger.info("warmed up %s %dx%d, batch %d, in %.2f s", variant, height, width, size,
                                    time.perf_counter() - start)
        except Exception:  # no worse than no warm-up: requests will meet the same error and report it
            logger.exception("warm-up failed; serving anyway")
        finally:
            self._warm.set()

    def _run(self) -> None:
        self._warm_up()
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            start = time.perf_counter()
            requests = [item.request for item in batch]
            first = requests[0]
            try:
                pipe = self.pipelines[first.variant]  # a batch holds one variant (Request.key)
                images = pipe([r.prompt for r in requests], seeds=[r.seed for r in requests], steps=first.steps,
                              guidance=[r.guidance for r in requests], height=first.height, width=first.width)
            except BaseException as e:  # the callers get the error; the worker keeps serving
                logger.exception("batch of %d failed", len(batch))
                for item in batch:
                    item.set_exception(e)
            else:
                run = time.perf_counter() - start
                # Count first, then answer: a caller that reads the stats after its result sees its images.
                with self._cond:
                    self._batches[first.variant] += 1
                    self._images[first.variant] += len(batch)
                    self._batch_sizes[len(batch)] += 1
                for item, image in zip(batch, images):
                    item.set_result(Result(image, item.request.seed, len(batch), start - item.submitted, run,
                                           first.variant))
            finally:
                with self._cond:
                    self._in_flight = 0


def _check_deadline(deadline_s: float | None) -> None:
    if deadline_s is not None and not 0 < deadline_s < math.inf:
        raise ConfigError(f"deadline_s must be a positive number of seconds, got {deadline_s}")
