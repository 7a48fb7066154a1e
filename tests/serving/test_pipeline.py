"""The pipeline on every backend: same images as diffusers for the same seeds, validation, loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esd_sdk import ConfigError, GenerationConfig, ModelNotFoundError, StaleExportError, generate, load_base
from esd_sdk.serving import OnnxRuntime, Text2ImagePipeline, TorchRuntime, UNetRuntime, load_runtime, open_pipeline

PROMPTS = ["a red circle", "a blue square"]


def test_torch_pipeline_reproduces_diffusers(tiny_sd):
    base = load_base(tiny_sd)
    expected = generate(base, PROMPTS, n=2, seed=5, config=GenerationConfig(num_inference_steps=4, guidance_scale=3))
    pipe = Text2ImagePipeline(base, load_runtime(base.unet))
    got = pipe([p for p in PROMPTS for _ in range(2)], seeds=[5, 6, 5, 6], steps=4, guidance=3)
    assert got.shape == expected.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_sdxl_pipeline_reproduces_diffusers(tiny_sdxl):
    base = load_base(tiny_sdxl)
    expected = generate(base, PROMPTS, n=1, seed=1, config=GenerationConfig(num_inference_steps=3, guidance_scale=5))
    got = Text2ImagePipeline(base, load_runtime(base.unet))(PROMPTS, seeds=[1, 1], steps=3, guidance=5)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_onnxruntime_matches_torch_and_the_edit_is_served(edited, edited_onnx):
    ort_pipe = open_pipeline(edited, backend="onnxruntime")
    torch_pipe = open_pipeline(edited)
    assert isinstance(ort_pipe.runtime, OnnxRuntime) and isinstance(torch_pipe.runtime, TorchRuntime)
    assert isinstance(ort_pipe.runtime, UNetRuntime)
    # the base UNet is not held twice: replaced by the served one, or freed (meta) under ORT
    assert torch_pipe.base.pipeline.unet is torch_pipe.runtime.unet
    assert ort_pipe.base.pipeline.unet.device.type == "meta"
    a = ort_pipe(PROMPTS, seeds=[3, 4], steps=4)
    b = torch_pipe(PROMPTS, seeds=[3, 4], steps=4)
    assert np.abs(a - b).max() < 1e-3  # the stated tolerance for fp32 backends
    base_images = open_pipeline(json.loads((edited / "esd.json").read_text())["base_model"])(PROMPTS, seeds=[3, 4],
                                                                                              steps=4)
    assert np.abs(b - base_images).max() > 1e-3  # the erase output's UNet is the one served


def test_batching_does_not_change_an_image(tiny_sd):
    base = load_base(tiny_sd)
    pipe = Text2ImagePipeline(base, load_runtime(base.unet))
    batch = pipe(["a red circle", "a blue square", "a red circle"], seeds=[1, 2, 3], steps=3, guidance=[2.0, 7.5, 1.0])
    for i, (p, s, g) in enumerate([("a red circle", 1, 2.0), ("a blue square", 2, 7.5), ("a red circle", 3, 1.0)]):
        np.testing.assert_allclose(batch[i], pipe(p, seeds=[s], steps=3, guidance=g)[0], atol=1e-5)
    assert np.abs(batch[0] - batch[2]).max() > 1e-3  # other seed, other guidance: another image


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=[""]), "non-empty"),
    (dict(prompts=["x" * 1001]), "1001 characters"),
    (dict(steps=0), "steps must be between 1 and 150"),
    (dict(steps=151), "steps must be between 1 and 150"),
    (dict(guidance=-1.0), "guidance must be between 0 and 30"),
    (dict(guidance=31.0), "guidance must be between 0 and 30"),
    (dict(height=18), "height must be a multiple of 4"),
    (dict(width=2048), "width must be a multiple of 4 between 4 and 1024"),
    (dict(seeds=[-1]), "seed must be between 0"),
])
def test_validation_names_the_bound(tiny_sd, kwargs, message):
    base = load_base(tiny_sd)
    pipe = Text2ImagePipeline(base, load_runtime(base.unet))
    args = {"prompts": ["a circle"], "seeds": [0], "steps": 2, "guidance": 3.0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        pipe(**args)


def test_open_pipeline_errors(edited, edited_onnx, tiny_sd, tmp_path):
    with pytest.raises(ConfigError, match="backend must be one of"):
        open_pipeline(edited, backend="tflite")
    with pytest.raises(ModelNotFoundError, match="run `esd-sdk export"):
        open_pipeline(tiny_sd, backend="onnxruntime")
    # An export of the base model is not the edited model's: refused, with the fix.
    from esd_sdk.export import export_onnx

    stale = export_onnx(tiny_sd, tmp_path / "base-onnx").directory
    with pytest.raises(StaleExportError, match="holds other weights.*re-export"):
        open_pipeline(edited, backend="onnxruntime", unet=stale)
    with pytest.raises(ModelNotFoundError, match="no unet.plan"):
        load_runtime(tmp_path, backend="tensorrt")
    with pytest.raises(ConfigError, match="fp16 UNets are slow or unsupported on the CPU"):
        load_runtime(load_base(tiny_sd).unet, device="cpu", precision="fp16")
