"""The text-to-image model on a real Triton Inference Server (the binaries nvidia-pytriton
bundles), driven through tritonclient over HTTP on loopback."""

from __future__ import annotations

import platform
import socket

import numpy as np
import pytest
import torch

from esd_sdk.export.triton import parse_pbtxt
from esd_sdk.serving import open_pipeline
from esd_sdk.serving.triton_app import MODEL_NAME, TritonServer, to_uint8, write_text2image_repository

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                                reason="Triton's bundled server binaries are built for Linux x86_64 only")

PROMPTS = ["a red circle", "a blue square", "a striped triangle", "a green cross"]


def _inputs(http, prompt: str, seed: int, steps: int, guidance: float | None = None):
    inputs = []
    for name, dtype, value in (("prompt", "BYTES", np.array([[prompt.encode()]], dtype=object)),
                               ("seed", "INT64", np.array([[seed]], dtype=np.int64)),
                               ("steps", "INT32", np.array([[steps]], dtype=np.int32)),
                               ("guidance", "FP32", None if guidance is None else np.array([[guidance]], np.float32))):
        if value is not None:
            tensor = http.InferInput(name, list(value.shape), dtype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
    return inputs


def test_concurrent_requests_match_the_sdk_and_are_batched(edited, tmp_path):
    http = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    # One thread: torch's spinning threads crawl on a loaded 2-core machine (50x slower here).
    repo = write_text2image_repository(edited, tmp_path / "repo", max_batch_size=4, max_wait_ms=300,
                                       threads=1).directory
    config = parse_pbtxt((repo / MODEL_NAME / "config.pbtxt").read_text())
    assert config["max_batch_size"] == 4 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 300_000

    # Eight concurrent requests: two step counts, seeds and guidance per request.
    jobs = [(PROMPTS[i % 4], 100 + i, 2 if i < 6 else 3, 7.5 if i % 2 else 3.0) for i in range(8)]
    # Unloading the model took 16 s on this machine under load: leave Triton time to stop cleanly.
    server = TritonServer(repo, log_file=tmp_path / "tritonserver.log", exit_timeout_s=90).start(timeout_s=180)
    try:
        client = http.InferenceServerClient(server.http_url, concurrency=len(jobs))
        assert client.is_model_ready(MODEL_NAME)
        pending = [client.async_infer(MODEL_NAME, _inputs(http, *job)) for job in jobs]
        images = [p.get_result().as_numpy("image")[0] for p in pending]
        with pytest.raises(InferenceServerException, match="steps must be between"):
            client.infer(MODEL_NAME, _inputs(http, "a red circle", 0, 0))
        steps_only = [i for i in _inputs(http, "a red circle", 0, 2) if i.name() in ("prompt", "steps")]
        defaults = client.infer(MODEL_NAME, steps_only).as_numpy("image")  # seed and guidance: the defaults
        stats = client.get_inference_statistics(MODEL_NAME)["model_stats"][0]
        client.close()
    finally:
        code = server.stop()
    assert code == 0, server.log()[-2000:]
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        socket.create_connection((server.host, server.http_port), timeout=5)

    # Triton's dynamic batcher put several requests into one execution.
    assert max(int(b["batch_size"]) for b in stats["batch_stats"]) > 1, stats["batch_stats"]
    assert int(stats["execution_count"]) < int(stats["inference_count"])

    # The same images as the SDK's pipeline on the same seeds (batching may move a float by an ulp).
    pipe, threads = open_pipeline(edited), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = {steps: _sdk_images(pipe, jobs, steps) for steps in (2, 3)}
        want = to_uint8(pipe(["a red circle"], seeds=[0], steps=2))
    finally:
        torch.set_num_threads(threads)
    for steps in (2, 3):
        mine = [i for i, job in enumerate(jobs) if job[2] == steps]
        for i, image in zip(mine, expected[steps]):
            assert images[i].shape == image.shape == (pipe.default_size, pipe.default_size, 3)
            assert images[i].dtype == np.uint8
            assert np.abs(images[i].astype(int) - image).max() <= 1
    assert images[0].std() > 0 and not np.array_equal(images[0], images[2])  # real, distinct images
    assert np.abs(defaults[0].astype(int) - want[0]).max() <= 1  # seed 0 and the model's guidance


def _sdk_images(pipe, jobs, steps: int) -> np.ndarray:
    mine = [job for job in jobs if job[2] == steps]
    return to_uint8(pipe([j[0] for j in mine], seeds=[j[1] for j in mine], steps=steps, guidance=[j[3] for j in mine]))


def test_serve_triton_refuses_compare():
    from click.testing import CliRunner

    from esd_sdk.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--model", "toy", "--triton", "--compare"])
    assert result.exit_code == 2 and "--compare" in result.output


def test_server_refuses_a_missing_repository(tmp_path):
    from esd_sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        TritonServer(tmp_path / "nowhere")
