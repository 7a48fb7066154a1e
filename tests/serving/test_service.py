"""The embedding API: safe from many threads, micro-batched, bounded, and it drains on close."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from esd_sdk import ConfigError
from esd_sdk.serving import QueueFullError, Service, ServiceClosedError, Text2ImagePipeline

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
    assert service.images == 12 and max(service.batch_sizes) <= 4


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
    service = Service(gated_pipe, max_batch=1, max_wait_ms=0, max_queue=2)
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
    service = Service(Text2ImagePipeline(pipe.base, gated, pipe.defaults), max_batch=1, max_wait_ms=0)
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
    service = Service(Text2ImagePipeline(pipe.base, gated, pipe.defaults), max_batch=1, max_wait_ms=0)
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
    service = Service(Text2ImagePipeline(pipe.base, gated, pipe.defaults), max_batch=1)
    with pytest.raises(RuntimeError, match="device lost"):
        service.generate("a red circle", timeout=60)
    gated.fail = False
    assert service.generate("a red circle", timeout=60).shape == (32, 32, 3)
    service.close()


def test_invalid_requests_fail_in_the_callers_thread(pipe):
    with Service(pipe) as service:
        with pytest.raises(ConfigError, match="steps must be between"):
            service.submit("a red circle", steps=0)
        assert service.queue_depth == 0
