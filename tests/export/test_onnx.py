import json

import numpy as np
import onnx
import pytest

from esd_sdk.config import EraseConfig
from esd_sdk.erase import erase
from esd_sdk.errors import ConfigError, ModelNotFoundError, OutputExistsError
from esd_sdk.export import ParityError, check_parity, export_onnx, refit_onnx
from esd_sdk.export.onnx import _dummy_inputs, _torch_forward, resolve_unet


@pytest.fixture(scope="module")
def edited(tiny_sd, tmp_path_factory):
    out = tmp_path_factory.mktemp("edit") / "edit"
    erase(EraseConfig(concepts=["circle"], method="x", steps=3, lr=1e-2, ddim_steps=4), tiny_sd, out, progress=False)
    return out


@pytest.fixture(scope="module")
def base_export(tiny_sd, tmp_path_factory):
    return export_onnx(tiny_sd, tmp_path_factory.mktemp("onnx") / "base")


def _ort(path, inputs):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def test_exports_an_edited_unet_with_parity(edited, tmp_path):
    result = export_onnx(edited, tmp_path / "onnx")
    assert result.parity.max_abs_diff <= 1e-4
    meta = json.loads((tmp_path / "onnx" / "esd_export.json").read_text())
    assert meta["parity"]["max_abs_diff"] == result.parity.max_abs_diff
    assert meta["source_manifest"]["concepts"] == ["circle"] and meta["opset"] == 17
    model = onnx.load(str(result.model_path))
    assert model.opset_import[0].version >= 17
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["sample"][0] == "batch_size" and dims["timestep"] == ["batch_size"]
    assert dims["sample"][2:] == ["height", "width"]


def test_dynamic_shapes_run(base_export, tiny_sd):
    unet, _ = resolve_unet(tiny_sd)
    inputs = _dummy_inputs(unet, batch=3, seq=7)
    inputs["sample"] = np.random.default_rng(0).standard_normal((3, 4, 24, 24)).astype(np.float32)
    got = _ort(base_export.model_path, inputs)
    np.testing.assert_allclose(got, _torch_forward(unet, inputs), atol=1e-4)


def test_fp16_export_within_its_tolerance(tiny_sd, tmp_path):
    result = export_onnx(tiny_sd, tmp_path / "fp16", precision="fp16")
    model = onnx.load(str(result.model_path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert 0 < result.parity.max_abs_diff <= 5e-2


def test_sdxl_export_has_added_conditioning_inputs(tiny_sdxl, tmp_path):
    result = export_onnx(tiny_sdxl, tmp_path / "xl")
    assert {"text_embeds", "time_ids"} <= set(result.inputs) and result.parity.max_abs_diff <= 1e-4


def test_parity_gate_rejects_a_tampered_model(base_export, tiny_sd, tmp_path):
    model = onnx.load(str(base_export.model_path))
    init = next(i for i in model.graph.initializer if len(i.dims) == 4)  # a conv kernel
    arr = onnx.numpy_helper.to_array(init) + 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    unet, _ = resolve_unet(tiny_sd)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        check_parity(unet, tampered, "fp32")


def test_failed_export_leaves_nothing(tiny_sd, tmp_path):
    with pytest.raises(ParityError):
        export_onnx(tiny_sd, tmp_path / "strict", tolerance=0.0 - 1.0)
    assert not any(tmp_path.iterdir())


def test_refit_from_delta_reproduces_the_edited_unet(base_export, edited, tmp_path):
    """Refit (CPU analogue of a TensorRT refit): base export + delta == edited UNet."""
    refitted = refit_onnx(base_export.directory, edited, tmp_path / "refit.onnx")
    edited_unet, _ = resolve_unet(edited)
    inputs = _dummy_inputs(edited_unet, batch=2, seq=16)
    base_out = _ort(base_export.model_path, inputs)
    want = _torch_forward(edited_unet, inputs)
    got = _ort(refitted, inputs)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(base_out - want).max() > 1e-3  # the delta really changed something


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(precision="int8"), ConfigError, "precision"),
    (dict(opset=13), ConfigError, "opset"),
])
def test_bad_arguments(tiny_sd, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        export_onnx(tiny_sd, tmp_path / "x", **kwargs)


def test_missing_input_and_existing_output(tiny_sd, tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        export_onnx(tmp_path / "nope", tmp_path / "x")
    (tmp_path / "x").mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_onnx(tiny_sd, tmp_path / "x")


def test_cli_export_defaults_to_the_newest_erase_output(edited, tmp_path, monkeypatch):
    import shutil

    from click.testing import CliRunner

    from esd_sdk.cli import cli

    shutil.copytree(edited, tmp_path / "my-edit")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["export", "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert "exporting my-edit" in result.output and (tmp_path / "my-edit-onnx" / "unet" / "model.onnx").is_file()
    again = CliRunner().invoke(cli, ["export", "--format", "onnx"])
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_cli_export_rejects_unknown_format_and_bf16_onnx(tiny_sd, tmp_path):
    from click.testing import CliRunner

    from esd_sdk.cli import cli

    bad = CliRunner().invoke(cli, ["export", str(tiny_sd), "--format", "coreml"])
    assert bad.exit_code == 2 and "coreml" in bad.output
    bf16 = CliRunner().invoke(cli, ["export", str(tiny_sd), "--precision", "bf16", "--out", str(tmp_path / "o")])
    assert bf16.exit_code == 1 and "fp32 or fp16" in bf16.output and not (tmp_path / "o").exists()


def test_exports_the_bundled_toy_unet(tmp_path):
    from esd_sdk import toy_model_path

    result = export_onnx(toy_model_path(), tmp_path / "toy")
    assert result.parity.max_abs_diff <= 1e-4 and result.unet_config["cross_attention_dim"] == 64
