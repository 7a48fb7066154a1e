"""The embedding API: safe from many threads, micro-batched, bounded, deadlines that cost no UNet step,
a warm-up before it is ready, a consistent stats snapshot, and it drains on close."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from esd_sdk import ConfigError, DeadlineExceededError
from esd_sdk.serving import QueueFullError, Service, ServiceClosedError, Text2ImagePipeline, open_comparison
from esd_sdk.serving.service import Stats

from .conftest import GatedRuntime, tiny_pipeline


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return tiny_pipeline(tiny_sd, steps=3)


def test_many_threads_get_their_own_images_in_shared_batches(pipe):
    jobs = [("a red circle" if i % 3 else "a blue square", i) for i in range(12)]
    expected = {seed: pipe(prompt, seeds=[seed])[0] for prompt, seed in jobs}
    results = {}
    start = threading.Barrier(len(jobs))
    with Service(pipe, max_batch=4, max_wait_ms=200) as service:
        def client(prompt, seed):
            start.wait()
            results[seed] = service.submit(prompt, seed=seed).result(60)
        threads = [threading.Thread(target=client, args=job) for job in jobs]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert sorted(results) == [seed for _, seed in jobs]
    for seed, result in results.items():
        assert result.seed == seed
        np.testing.assert_allclose(result.image, expected[seed], atol=1e-5)  # nobody got another's image
    assert max(r.batch_size for r in results.values()) > 1  # concurrent requests shared UNet batches
    stats = service.stats()
    assert stats.images == 12 and max(stats.batch_sizes) <= 4 and sum(stats.batch_sizes.values()) == stats.batches


def test_requests_that_cannot_share_a_batch_are_kept_apart(pipe):
    with Service(pipe, max_batch=8, max_wait_ms=100) as service:
        a = service.submit("a red circle", seed=1, steps=2)
        b = service.submit("a red circle", seed=1, steps=3)
        ra, rb = a.result(60), b.result(60)
    assert ra.batch_size == rb.batch_size == 1
    np.testing.assert_allclose(rb.image, pipe("a red circle", seeds=[1], steps=3)[0], atol=1e-5)


def test_full_queue_refuses_at_once_and_the_rest_completes(pipe):
    gated = GatedRuntime(pipe.runtime)
    gated_pipe = Text2ImagePipeline(pipe.base, gated, pipe.defaults)
    service = Service(gated_pipe, max_batch=1, max_wait_ms=0, max_queue=2, warmup=False)
    running = service.submit("a red circle", seed=0)
    assert gated.entered.wait(30)  # the worker holds this one in flight
    queued = [service.submit("a red circle", seed=s) for s in (1, 2)]
    with pytest.raises(QueueFullError, match="queue full .2 waiting.: retry later"):
        service.submit("a red circle", seed=3)
    assert service.queue_depth == 2 and service.in_flight == 1
    gated.gate.set()
    assert [f.result(60).seed for f in [running, *queued]] == [0, 1, 2]
    service.close()


def test_close_drains_accepted_requests_then_refuses(pipe):
    gated = GatedRuntime(pipe.runtime)
    service = Service(Text2ImagePipeline(pipe.base, gated, pipe.defaults), max_batch=1, max_wait_ms=0, warmup=False)
    futures = [service.submit("a red circle", seed=s) for s in range(3)]
    assert gated.entered.wait(30)
    closer = threading.Thread(target=service.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # waiting for the accepted requests
    with pytest.raises(ServiceClosedError):
        service.submit("a red circle")
    gated.gate.set()
    closer.join(60)
    assert [f.result(0).seed for f in futures] == [0, 1, 2]


def test_close_without_drain_fails_waiting_requests(pipe):
    gated = GatedRuntime(pipe.runtime)
    service = Service(Text2ImagePipeline(pipe.base, gated, pipe.defaults), max_batch=1, max_wait_ms=0, warmup=False)
    running = service.submit("a red circle", seed=0)
    assert gated.entered.wait(30)
    waiting = service.submit("a red circle", seed=1)
    threading.Timer(0.2, gated.gate.set).start()
    service.close(drain=False)
    assert running.result(60).seed == 0
    with pytest.raises(ServiceClosedError):
        waiting.result(0)


def test_a_failed_batch_fails_its_requests_and_the_service_goes_on(pipe):
    gated = GatedRuntime(pipe.runtime, fail=True)
    gated.gate.set()
    service = Service(Text2ImagePipeline(pipe.base, gated, pipe.defaults), max_batch=1, warmup=False)
    with pytest.raises(RuntimeError, match="device lost"):
        service.generate("a red circle", timeout=60)
    gated.fail = False
    assert service.generate("a red circle", timeout=60).shape == (32, 32, 3)
    service.close()


def test_invalid_requests_fail_in_the_callers_thread(pipe):
    with Service(pipe) as service:
        with pytest.raises(ConfigError, match="steps must be between"):
            service.submit("a red circle", steps=0)
        for bad in (0, -1, float("nan"), float("inf")):
            with pytest.raises(ConfigError, match="deadline_s must be a positive number of seconds"):
                service.submit("a red circle", deadline_s=bad)
        assert service.queue_depth == 0


class RecordingRuntime(GatedRuntime):
    """A gated real runtime that records the sample shape of every UNet call."""

    def __init__(self, runtime):
        super().__init__(runtime)
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, sample, timestep, cond):
        self.shapes.append(tuple(sample.shape))
        return super().__call__(sample, timestep, cond)


@pytest.mark.parametrize("service_deadline, request_deadline", [(None, 0.1), (0.1, None)])
def test_a_deadline_that_passes_in_the_queue_costs_no_unet_step(pipe, service_deadline, request_deadline):
    runtime = RecordingRuntime(pipe.runtime)
    service = Service(Text2ImagePipeline(pipe.base, runtime, pipe.defaults), max_batch=4, max_wait_ms=0,
                      deadline_s=service_deadline, warmup=False)
    running = service.submit("a red circle", seed=0, deadline_s=60)
    assert runtime.entered.wait(30)  # its batch holds the worker
    late = service.submit("a blue square", seed=1, deadline_s=request_deadline)
    time.sleep(0.3)  # the deadline passes while it waits
    runtime.gate.set()
    assert running.result(60).seed == 0
    with pytest.raises(DeadlineExceededError, match=r"deadline of 0.1 s passed while queued: retry later"):
        late.result(60)
    service.close()
    assert len(runtime.shapes) == pipe.defaults.num_inference_steps  # the running request's steps, none more
    stats = service.stats()
    assert (stats.dropped_deadline, stats.images, stats.batches) == (1, 1, 1)


def test_generate_timeout_withdraws_the_queued_request(pipe):
    runtime = RecordingRuntime(pipe.runtime)
    service = Service(Text2ImagePipeline(pipe.base, runtime, pipe.defaults), max_batch=1, max_wait_ms=0, warmup=False)
    running = service.submit("a red circle", seed=0)
    assert runtime.entered.wait(30)
    with pytest.raises(TimeoutError, match="deadline of 0.2 s passed while queued") as raised:
        service.generate("a blue square", seed=1, timeout=0.2)
    assert isinstance(raised.value, DeadlineExceededError)
    assert service.queue_depth == 0 and service.stats().dropped_deadline == 1  # withdrawn at once: its slot is free
    runtime.gate.set()
    assert running.result(60).seed == 0
    service.close()
    assert len(runtime.shapes) == pipe.defaults.num_inference_steps


def test_a_request_whose_deadline_passes_while_its_batch_fills_is_dropped_at_once(pipe):
    runtime = RecordingRuntime(pipe.runtime)
    runtime.gate.set()
    service = Service(Text2ImagePipeline(pipe.base, runtime, pipe.defaults), max_batch=2, max_wait_ms=3000, warmup=False)
    start = time.perf_counter()
    with pytest.raises(DeadlineExceededError, match="deadline of 0.2 s passed while queued"):
        service.generate("a red circle", timeout=0.2)  # the worker waits up to 3 s for a companion
    assert time.perf_counter() - start < 2 and service.stats().dropped_deadline == 1
    service.close()
    assert runtime.shapes == []


def test_a_batch_still_running_at_the_deadline_fails_the_wait_but_is_not_dropped(pipe):
    runtime = RecordingRuntime(pipe.runtime)
    service = Service(Text2ImagePipeline(pipe.base, runtime, pipe.defaults), max_batch=1, warmup=False)
    future = service.submit("a red circle", seed=0, deadline_s=0.5)
    assert runtime.entered.wait(30)
    with pytest.raises(DeadlineExceededError, match="deadline of 0.5 s passed while its batch ran"):
        service.wait(future)
    runtime.gate.set()
    assert future.result(60).seed == 0  # a started batch runs to the end
    service.close()
    assert service.stats().dropped_deadline == 0


def test_warm_up_runs_the_configured_sizes_before_the_service_is_warm(pipe):
    runtime = RecordingRuntime(pipe.runtime)
    service = Service(Text2ImagePipeline(pipe.base, runtime, pipe.defaults), max_batch=3, warmup=[(24, 40)])
    assert runtime.entered.wait(30)
    assert not service.warm and not service.stats().warm and not service.wait_warm(0.1)
    queued = service.submit("a red circle", seed=0, steps=1)  # accepted meanwhile, run after the warm-up
    runtime.gate.set()
    assert service.wait_warm(60) and service.stats().warm
    assert queued.result(60).image.shape == (32, 32, 3)
    service.close()
    c, f = pipe.latent_channels, pipe.vae_scale_factor
    # one guided step (two UNet samples per image) for a batch of 1 and of max_batch at 24x40, then the request
    assert runtime.shapes == [(2, c, 24 // f, 40 // f), (6, c, 24 // f, 40 // f), (2, c, 32 // f, 32 // f)]
    stats = service.stats()
    assert (stats.images, stats.batches, stats.batch_sizes) == (1, 1, {1: 1})  # the warm-up is not counted


def test_stats_is_a_frozen_snapshot_and_the_counters_are_private(pipe):
    with Service(pipe, max_batch=2, warmup=False) as service:
        service.generate("a red circle", timeout=60)
        stats = service.stats()
        stats.batch_sizes[99] = 1
        assert service.stats().batch_sizes == {1: 1}
        with pytest.raises(AttributeError):
            stats.images = 0
        assert isinstance(stats, Stats) and not any(hasattr(service, n) for n in ("images", "batches", "batch_sizes"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(warmup=[(30, 32)]), "height must be a multiple of 4"),
    (dict(deadline_s=0), "deadline_s must be a positive number of seconds, got 0"),
    (dict(max_batch=0), "max_batch and max_queue must be >= 1"),
])
def test_invalid_service_settings_are_refused(pipe, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Service(pipe, **kwargs)


@pytest.fixture(scope="module")
def pipes(edited):
    """The base and the edited tiny model, as `esd-sdk serve --compare` serves them."""
    pipes = open_comparison(edited)
    for p in pipes.values():
        p.defaults.num_inference_steps = 2
    return pipes


def test_variants_run_their_own_model_and_never_share_a_batch(pipes):
    expected = {v: p(["a red circle"] * 2, seeds=[0, 1]) for v, p in pipes.items()}
    assert np.abs(expected["base"] - expected["edited"]).max() > 1e-2  # the erase changed the images
    assert pipes["base"].vae is pipes["edited"].vae  # the shared components are held once
    with Service(pipes, max_batch=4, max_wait_ms=300, warmup=False) as service:
        futures = [(v, s, service.submit("a red circle", seed=s, variant=v)) for s in (0, 1) for v in pipes]
        results = [(v, s, f.result(60)) for v, s, f in futures]
        with pytest.raises(ConfigError, match="variant 'other' is not served here .this server has base, edited."):
            service.submit("a red circle", variant="other")
    for variant, seed, result in results:
        assert result.variant == variant and result.batch_size == 2  # seeds batched, variants kept apart
        np.testing.assert_allclose(result.image, expected[variant][seed], atol=1e-5)
    stats = service.stats()
    assert stats.images_by_variant == {"base": 2, "edited": 2} and stats.batches_by_variant == {"base": 1, "edited": 1}


def test_a_single_model_service_refuses_the_base_variant(pipe):
    with Service(pipe, warmup=False) as service:
        with pytest.raises(ConfigError, match="variant 'base' is not served here .this server has edited.*--compare"):
            service.submit("a red circle", variant="base")
        assert service.stats().images_by_variant == {"edited": 0}


def test_wait_async_keeps_the_deadline_and_withdraws_the_queued_request(pipe):
    runtime = RecordingRuntime(pipe.runtime)
    service = Service(Text2ImagePipeline(pipe.base, runtime, pipe.defaults), max_batch=1, max_wait_ms=0, warmup=False)

    async def main():
        running = service.submit("a red circle", seed=0)
        late = service.submit("a blue square", seed=1, deadline_s=0.2)
        with pytest.raises(DeadlineExceededError, match="deadline of 0.2 s passed while queued"):
            await service.wait_async(late)
        assert service.queue_depth == 0 and service.stats().dropped_deadline == 1
        runtime.gate.set()
        return await service.wait_async(running)

    assert asyncio.run(main()).seed == 0
    service.close()
    assert len(runtime.shapes) == pipe.defaults.num_inference_steps  # the dropped request cost no UNet step
