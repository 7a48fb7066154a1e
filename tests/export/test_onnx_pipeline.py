"""`esd-sdk export --format onnx-pipeline`: optimum's ONNX Runtime pipelines load the directory with
no export step and draw the torch pipeline's images on the same seeds."""

import json

import numpy as np
import pytest
import torch

import esd_sdk
from esd_sdk.errors import ConfigError, OutputExistsError
from esd_sdk.export.pipeline import assemble

# Max |pixel difference| (images in [0, 1]) between ORT and torch after 3 guided steps: fp32 graphs
# differ only by kernel order (seen ~1e-6); fp16 keeps ~3 digits through every component.
PIXEL_BOUND = {"fp32": 1e-3, "fp16": 5e-2}


@pytest.mark.parametrize("erased_name,precision,ort_class", [
    ("erased_sd", "fp32", "ORTStableDiffusionPipeline"),
    ("erased_sdxl", "fp16", "ORTStableDiffusionXLPipeline"),
])
def test_ort_pipeline_loads_it_and_draws_the_torch_images(erased_name, precision, ort_class, request, tmp_path):
    import optimum.onnxruntime

    erased = request.getfixturevalue(erased_name)
    result = esd_sdk.export(erased, format="onnx-pipeline", out=tmp_path / "ort", precision=precision)
    out = result.directory
    assert result.written.ort_class == ort_class and result.onnx.model_path == out / "unet" / "model.onnx"
    assert result.onnx.parity.max_abs_diff <= result.onnx.parity.tolerance
    parts = {"text_encoder", "vae_encoder", "vae_decoder"} | ({"text_encoder_2"} if "sdxl" in erased_name else set())
    assert set(result.written.parity) == parts
    assert all(result.written.parity[p] <= result.written.tolerance[p] for p in parts)
    for part in parts | {"unet"}:
        assert (out / part / "model.onnx").is_file() and (out / part / "config.json").is_file()
    assert json.loads((out / "esd_export.json").read_text())["weights_hash"] == \
        json.loads((erased / "esd.json").read_text())["edited_hash"]

    ort = getattr(optimum.onnxruntime, ort_class).from_pretrained(out)  # no export=True: nothing to convert
    torch_pipe, _ = assemble(erased)
    call = dict(prompt=["a red circle", "a blue square"], num_inference_steps=3, guidance_scale=5.0, output_type="np")
    got = ort(generator=torch.Generator().manual_seed(0), **call).images
    want = torch_pipe.pipeline(generator=torch.Generator().manual_seed(0), **call).images
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= PIXEL_BOUND[precision]


def test_onnx_pipeline_refuses_bf16_and_an_existing_output(erased_sd, tmp_path):
    with pytest.raises(ConfigError, match="bf16"):
        esd_sdk.export(erased_sd, format="onnx-pipeline", out=tmp_path / "o", precision="bf16")
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError):
        esd_sdk.export(erased_sd, format="onnx-pipeline", out=tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
