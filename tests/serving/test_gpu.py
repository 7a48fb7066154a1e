"""Backends on a CUDA GPU: same images as torch fp32 within the stated tolerances (skipped without one)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from esd_sdk.serving import open_pipeline
from esd_sdk.serving.bench import IMAGE_TOLERANCE

pytestmark = pytest.mark.gpu
PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def reference(edited):
    return open_pipeline(edited, device="cpu")(PROMPTS, seeds=[1, 2], steps=4)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_on_gpu(edited, reference, precision):
    images = open_pipeline(edited, device="cuda", precision=precision)(PROMPTS, seeds=[1, 2], steps=4)
    assert np.abs(images - reference).max() < IMAGE_TOLERANCE[precision]


def test_onnxruntime_cuda_with_io_binding(edited, reference, request):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    pytest.importorskip("optimum.exporters.onnx")
    request.getfixturevalue("edited_onnx")  # exported only where it can run
    images = open_pipeline(edited, backend="onnxruntime", provider="cuda")(PROMPTS, seeds=[1, 2], steps=4)
    assert np.abs(images - reference).max() < IMAGE_TOLERANCE["fp32"]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="tensorrt is not installed")
def test_tensorrt_engine_with_cuda_graphs(edited, reference, tmp_path):
    from esd_sdk.export import export_onnx
    from esd_sdk.export.tensorrt import Profile, build_engine
    from esd_sdk.serving import Text2ImagePipeline, load_runtime

    export_onnx(edited, tmp_path / "onnx")
    build_engine(tmp_path / "onnx", tmp_path / "unet.plan", precision="fp32", profile=Profile(batch=(4, 4, 4), sequence_length=16))  # tiny tokenizer: 16 tokens
    pipe = open_pipeline(edited, device="cuda")
    trt_pipe = Text2ImagePipeline(pipe.base, load_runtime(tmp_path / "unet.plan", backend="tensorrt"))
    first = trt_pipe(PROMPTS, seeds=[1, 2], steps=4)
    again = trt_pipe(PROMPTS, seeds=[1, 2], steps=4)  # replayed from the captured graph
    assert np.abs(first - reference).max() < IMAGE_TOLERANCE["fp32"]
    np.testing.assert_array_equal(first, again)
