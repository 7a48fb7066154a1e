"""The HTTP server on loopback: responses, every validation error, back-pressure, metrics, drain,
deadlines (504), warm-up (/healthz), internal errors (500 with a request id, no internals), the
base and edited variants of --compare, the review page's data and the OpenAPI schema."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import re
import threading

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from esd_sdk.artifact import load_manifest
from esd_sdk.serving import Service, Text2ImagePipeline, open_comparison
from esd_sdk.serving.server import EsdServer

from .conftest import GatedRuntime, tiny_pipeline
from .test_service import RecordingRuntime


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return tiny_pipeline(tiny_sd, steps=2)


def start(pipe, wait_warm: bool = True, manifest: dict | None = None, **service_kwargs) -> EsdServer:
    server = EsdServer(Service(pipe, **service_kwargs), port=0, model_name="tiny", manifest=manifest).start()
    if wait_warm:
        assert server.service.wait_warm(60)
    return server


@pytest.fixture(scope="module")
def server(pipe):
    server = start(pipe, max_batch=4, max_wait_ms=20)
    yield server
    server.drain()


def request(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(*server.socket.getsockname()[:2], timeout=60)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.headers, data  # headers: case-insensitive


def test_generate_png_and_json_give_the_same_image(server, pipe):
    status, headers, png = request(server, "POST", "/generate", {"prompt": "a red circle", "seed": 4})
    assert status == 200 and headers["Content-Type"] == "image/png" and headers["X-Seed"] == "4"
    image = np.asarray(Image.open(io.BytesIO(png))) / 255
    expected = pipe("a red circle", seeds=[4])[0]
    assert image.shape == (32, 32, 3) and np.abs(image - expected).max() <= 1 / 255 + 1e-6
    status, headers, body = request(server, "POST", "/generate", {"prompt": "a red circle", "seed": 4, "format": "json"})
    data = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert base64.b64decode(data["image"]) == png and data["seed"] == 4 and data["batch_size"] >= 1


@pytest.mark.parametrize("body, message", [
    ("{not json", "body is not valid JSON"),
    ("[1, 2]", "body must be a JSON object"),
    ({"seed": 1}, 'missing "prompt"'),
    ({"prompt": "a", "sed": 1}, "unknown field.*sed"),
    ({"prompt": 3}, '"prompt" must be a string'),
    ({"prompt": "a", "seed": "1"}, '"seed" must be an integer'),
    ({"prompt": "a", "steps": True}, '"steps" must be an integer'),
    ({"prompt": "a", "guidance": "high"}, '"guidance" must be a number'),
    ({"prompt": "a", "format": "gif"}, '"format" must be "png" or "json"'),
    ({"prompt": "a", "variant": "other"}, '"variant" must be "base" or "edited"'),
    ({"prompt": "a", "variant": "base"}, "variant 'base' is not served here .this server has edited.*--compare"),
    ({"prompt": ""}, "non-empty"),
    ({"prompt": "a" * 1001}, "1001 characters, the limit is 1000"),
    ({"prompt": "a", "steps": 0}, "steps must be between 1 and 150"),
    ({"prompt": "a", "steps": 500}, "steps must be between 1 and 150"),
    ({"prompt": "a", "guidance": -1}, "guidance must be between 0 and 30"),
    ({"prompt": "a", "height": 30}, "height must be a multiple of 4"),
    ({"prompt": "a", "width": 4096}, "width must be a multiple of 4"),
    ({"prompt": "a", "seed": -5}, "seed must be between 0"),
    ({"prompt": "a", "deadline_s": "1"}, '"deadline_s" must be a number'),
    ({"prompt": "a", "deadline_s": 0}, "deadline_s must be a positive number of seconds"),
    ({"prompt": "a", "deadline_s": -2.5}, "deadline_s must be a positive number of seconds"),
])
def test_bad_requests_get_400_with_the_reason(server, body, message):
    status, headers, data = request(server, "POST", "/generate", body)
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert re.search(message, json.loads(data)["error"])


def test_wrong_path_method_and_size(server):
    assert request(server, "GET", "/nope")[0] == 404
    status, headers, _ = request(server, "GET", "/generate")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, data = request(server, "POST", "/metrics", {})
    assert status == 405 and headers["Allow"] == "GET" and json.loads(data)["error"] == "use GET for /metrics"
    status, _, data = request(server, "POST", "/generate", "x" * (64 * 1024 + 1))
    assert status == 413 and "limit of 65536 bytes" in json.loads(data)["error"]
    status, _, data = request(server, "POST", "/generate", '{"prompt": "a red circle"}',  # what curl -d sends
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and data.startswith(b"\x89PNG")


def _metrics(server) -> dict[tuple, float]:
    """Every sample of /metrics, parsed by prometheus_client: (name, sorted labels) -> value."""
    text = request(server, "GET", "/metrics")[2].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(counts: dict, name: str, **labels) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in counts.items() if n == name and set(labels.items()) <= set(ls))


def test_health_and_prometheus_metrics(server):
    status, _, data = request(server, "GET", "/healthz")
    health = json.loads(data)
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny" and health["max_batch"] == 4
    assert health["compare"] is False and health["variants"] == ["edited"]
    before = _metrics(server)
    request(server, "POST", "/generate", {"prompt": "a blue square"})
    request(server, "POST", "/generate", {"prompt": "a", "steps": 0})
    status, headers, data = request(server, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
    assert "# TYPE esd_request_duration_seconds histogram" in data.decode()
    counts = _metrics(server)
    for code in ("200", "400"):
        assert _value(counts, "esd_requests_total", endpoint="/generate", code=code, variant="edited") == \
            _value(before, "esd_requests_total", endpoint="/generate", code=code, variant="edited") + 1
    assert _value(counts, "esd_request_duration_seconds_count", variant="edited") == \
        _value(counts, "esd_request_duration_seconds_bucket", variant="edited", le="+Inf") >= 1
    assert _value(counts, "esd_images_total", variant="edited") == _value(before, "esd_images_total") + 1
    assert _value(counts, "esd_deadline_dropped_total") == 0 and _value(counts, "esd_warm") == 1
    assert ("esd_queue_depth", ()) in counts and ("esd_in_flight", ()) in counts


def _concurrent_posts(server, bodies):
    results = [None] * len(bodies)

    def post(i):
        results[i] = request(server, "POST", "/generate", bodies[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    [t.start() for t in threads]
    return threads, results


def test_full_queue_answers_429_and_accepted_requests_complete(pipe):
    gated = GatedRuntime(pipe.runtime)
    server = start(Text2ImagePipeline(pipe.base, gated, pipe.defaults), max_batch=1, max_wait_ms=0, max_queue=2,
                   warmup=False)
    first, first_result = _concurrent_posts(server, [{"prompt": "a red circle", "seed": 0}])
    assert gated.entered.wait(30)
    threads, results = _concurrent_posts(server, [{"prompt": "a red circle", "seed": s} for s in range(1, 7)])
    for _ in range(200):  # until all six were answered or queued
        if server.service.queue_depth == 2 and sum(r is not None for r in results) == 4:
            break
        threading.Event().wait(0.05)
    gated.gate.set()
    [t.join(60) for t in threads + first]
    statuses = sorted(r[0] for r in results + first_result)
    assert statuses == [200, 200, 200, 429, 429, 429, 429]
    rejected = next(r for r in results if r[0] == 429)
    assert rejected[1]["Retry-After"] == "1" and "queue full" in json.loads(rejected[2])["error"]
    server.drain()


def test_drain_finishes_in_flight_requests_then_stops(pipe):
    gated = GatedRuntime(pipe.runtime)
    server = start(Text2ImagePipeline(pipe.base, gated, pipe.defaults), max_batch=1, max_wait_ms=0, warmup=False)
    threads, results = _concurrent_posts(server, [{"prompt": "a red circle", "seed": s} for s in range(3)])
    assert gated.entered.wait(30)
    for _ in range(200):
        if server.service.queue_depth + server.service.in_flight == 3:
            break
        threading.Event().wait(0.05)
    drainer = threading.Thread(target=server.drain)
    drainer.start()
    threading.Timer(0.3, gated.gate.set).start()
    drainer.join(60)
    [t.join(60) for t in threads]
    assert [r[0] for r in results] == [200, 200, 200]
    with pytest.raises(OSError):
        request(server, "GET", "/healthz")


def test_a_deadline_that_passes_in_the_queue_answers_504_and_costs_no_unet_step(pipe):
    runtime = RecordingRuntime(pipe.runtime)
    server = start(Text2ImagePipeline(pipe.base, runtime, pipe.defaults), max_batch=4, max_wait_ms=0, deadline_s=0.3,
                   warmup=False)
    first, first_result = _concurrent_posts(server, [{"prompt": "a red circle", "deadline_s": 60}])  # overrides 0.3
    assert runtime.entered.wait(30)  # its batch holds the worker
    status, _, body = request(server, "POST", "/generate", {"prompt": "a blue square"})  # the server's 0.3 s
    assert status == 504 and "deadline of 0.3 s passed while queued" in json.loads(body)["error"]
    assert server.service.queue_depth == 0
    runtime.gate.set()
    first[0].join(60)
    assert first_result[0][0] == 200
    assert len(runtime.shapes) == pipe.defaults.num_inference_steps  # the first request's steps, none more
    counts = _metrics(server)
    assert _value(counts, "esd_deadline_dropped_total") == 1
    assert _value(counts, "esd_requests_total", endpoint="/generate", code="504") == 1
    server.drain()


def test_a_cold_start_answers_warming_until_the_warm_up_ran(pipe):
    runtime = RecordingRuntime(pipe.runtime)
    server = start(Text2ImagePipeline(pipe.base, runtime, pipe.defaults), wait_warm=False, max_batch=2)
    assert runtime.entered.wait(30)  # the warm-up is running
    status, _, body = request(server, "GET", "/healthz")
    assert status == 503 and json.loads(body)["status"] == "warming"
    assert _value(_metrics(server), "esd_warm") == 0
    runtime.gate.set()
    assert server.service.wait_warm(60)
    status, _, body = request(server, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    c, f, size = pipe.latent_channels, pipe.vae_scale_factor, pipe.default_size
    # one guided step (two UNet samples per image) for a batch of 1 and of max_batch at the model's size
    assert runtime.shapes == [(2, c, size // f, size // f), (4, c, size // f, size // f)]
    assert request(server, "POST", "/generate", {"prompt": "a red circle"})[0] == 200
    assert _value(_metrics(server), "esd_images_total") == 1  # the warm-up is not counted
    server.drain()


class SecretFailure(GatedRuntime):
    def __call__(self, sample, timestep, cond):
        raise RuntimeError("secret internals at /srv/models/unet.py:42")


def test_a_failed_batch_answers_500_with_a_request_id_and_no_internals(pipe, caplog):
    caplog.set_level(logging.ERROR)
    server = start(Text2ImagePipeline(pipe.base, SecretFailure(pipe.runtime), pipe.defaults), warmup=False)
    status, headers, body = request(server, "POST", "/generate", {"prompt": "a red circle"})
    data = json.loads(body)
    assert status == 500 and headers["Content-Type"] == "application/json"
    assert not any(word in body.decode() for word in ("secret", "RuntimeError", "Traceback", "unet.py"))
    request_id = data["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id) and headers["X-Request-Id"] == request_id
    assert request_id in data["error"]
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert len(logged) == 1 and "secret internals" in str(logged[0].exc_info[1])
    assert request(server, "GET", "/healthz")[0] == 200  # the server goes on
    server.drain()


def test_compare_serves_base_and_edited_from_the_same_seeds(edited):
    pipes = open_comparison(edited)
    for p in pipes.values():
        p.defaults.num_inference_steps = 2
    server = start(pipes, manifest=load_manifest(edited), max_batch=2, max_wait_ms=200)
    health = json.loads(request(server, "GET", "/healthz")[2])
    assert health["compare"] is True and health["variants"] == ["base", "edited"]
    images = {}
    for variant in ("base", "edited"):
        status, headers, body = request(server, "POST", "/generate",
                                        {"prompt": "a red circle", "seed": 3, "variant": variant, "format": "json"})
        data = json.loads(body)
        assert status == 200 and headers["X-Variant"] == data["variant"] == variant and data["run_ms"] > 0
        images[variant] = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["image"])))) / 255
        expected = pipes[variant]("a red circle", seeds=[3])[0]
        assert np.abs(images[variant] - expected).max() <= 1 / 255 + 1e-6  # each variant is its own model
    assert np.abs(images["base"] - images["edited"]).mean() > 0.01
    status, _, body = request(server, "POST", "/generate", {"prompt": "", "variant": "base"})
    assert status == 400 and "non-empty" in json.loads(body)["error"]  # validation applies to both
    counts = _metrics(server)
    for variant in ("base", "edited"):
        assert _value(counts, "esd_images_total", variant=variant) == 1
        assert _value(counts, "esd_request_duration_seconds_count", variant=variant) == 1
    assert _value(counts, "esd_requests_total", endpoint="/generate", code="400", variant="base") == 1
    summary = json.loads(request(server, "GET", "/summary")[2])
    assert summary["compare"] is True and summary["variants"] == ["base", "edited"]
    assert summary["erase"]["concepts"] == ["circle"] and summary["erase"]["method"] == "x"
    assert summary["erase"]["eta"] == load_manifest(edited)["config"]["negative_guidance"]
    assert summary["defaults"]["size"] == 32
    assert summary["presets"] == [{"label": "erased", "prompt": "circle"}]  # no prompt set names it: the concept
    server.drain()


def test_review_page_and_openapi_docs(server):
    status, headers, page = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="prompt"' in page and b"/generate" in page and b"<script" in page
    status, _, body = request(server, "GET", "/openapi.json")
    schema = json.loads(body)
    assert status == 200 and {"/generate", "/healthz", "/metrics", "/summary", "/"} <= set(schema["paths"])
    request_schema = schema["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert request_schema["required"] == ["prompt"] and request_schema["additionalProperties"] is False
    assert set(request_schema["properties"]) == {"prompt", "seed", "steps", "guidance", "height", "width",
                                                 "deadline_s", "variant", "format"}
    status, headers, body = request(server, "GET", "/docs")
    assert status == 200 and b"openapi.json" in body


def test_cli_compare_needs_an_erase_output_on_torch(edited):
    from click.testing import CliRunner

    from esd_sdk.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--model", "toy", "--compare"])
    assert result.exit_code == 1 and "toy is not an erase output" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, ["serve", "--model", str(edited), "--compare", "--backend", "onnxruntime"])
    assert result.exit_code == 2 and "--compare runs both UNets on the torch backend" in result.output
