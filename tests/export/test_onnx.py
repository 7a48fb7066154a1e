import json

import numpy as np
import onnx
import pytest

from esd_sdk.config import EraseConfig
from esd_sdk.training import erase
from esd_sdk.errors import ConfigError, ModelNotFoundError, OutputExistsError
from esd_sdk.export import ParityError, check_parity, export_onnx, refit_onnx
from esd_sdk.artifact import resolve_unet
from esd_sdk.export.onnx import _dummy_inputs, _torch_forward


@pytest.fixture(scope="module")
def edited(tiny_sd, tmp_path_factory):
    out = tmp_path_factory.mktemp("edit") / "edit"
    erase(tiny_sd, out=out, config=EraseConfig(concepts=["circle"], method="x", steps=3, lr=1e-2, ddim_steps=4), progress=False)
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


def _files_and_modes(root):
    import stat

    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_an_export_ships_exactly_its_files_readable_by_others(tiny_sd, tmp_path, precision):
    import os

    old = os.umask(0o022)
    try:
        export_onnx(tiny_sd, tmp_path / "out", precision=precision)
    finally:
        os.umask(old)
    assert _files_and_modes(tmp_path / "out") == {
        "esd_export.json": "0o644", "unet": "0o755", "unet/model.onnx": "0o644", "unet/refit_map.json": "0o644"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_fp16_conversion_drops_the_fp32_external_data(tiny_sd, tmp_path):
    """SD-size fp32 exports keep their weights in model.onnx_data; the fp16 model must not ship it."""
    from esd_sdk.export.onnx import _convert_fp16

    src = export_onnx(tiny_sd, tmp_path / "fp32").model_path
    model_dir = tmp_path / "big" / "unet"
    model_dir.mkdir(parents=True)
    onnx.save(onnx.load(str(src)), str(model_dir / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=0)
    fp32_bytes = sum(p.stat().st_size for p in model_dir.iterdir())
    assert (model_dir / "model.onnx_data").stat().st_size > 0.5 * fp32_bytes
    _convert_fp16(model_dir / "model.onnx")
    # converted tensor by tensor into a new external file; the fp32 one is gone
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.onnx", "model.onnx_data"]
    assert sum(p.stat().st_size for p in model_dir.iterdir()) < 0.6 * fp32_bytes
    _ort(model_dir / "model.onnx", {k: v.astype(np.float16) if v.dtype == np.float32 else v
                                    for k, v in _dummy_inputs(resolve_unet(tiny_sd)[0], 2, 16).items()})


def test_esd_sdk_export_is_one_call_for_every_format(edited, tmp_path):
    import esd_sdk

    result = esd_sdk.export(edited, format="onnx")  # the module is callable
    assert result.directory == edited.parent / f"{edited.name}-onnx" and result.onnx.parity.max_abs_diff <= 1e-4
    repo = esd_sdk.export(edited, format="triton", out=tmp_path / "repo", max_batch_size=4)
    assert (tmp_path / "repo" / "unet" / "1" / "model.onnx").is_file() and repo.format == "triton"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work directories left
    with pytest.raises(OutputExistsError):
        esd_sdk.export(edited, format="onnx")
    with pytest.raises(ConfigError, match="format must be one of"):
        esd_sdk.export(edited, format="coreml", out=tmp_path / "x")


def test_default_export_is_fused_by_onnxruntime_and_plain_on_request(base_export, tiny_sd, tmp_path):
    """optimize (default): attention and LayerNorm fused by ONNX Runtime's optimizer for the CPU,
    parity-checked; optimize=False: the plain graph, standard ONNX ops only (TensorRT)."""
    assert base_export.optimization["target"] == "cpu"
    assert base_export.optimization["fused"]["Attention"] and base_export.optimization["fused"]["MultiHeadAttention"]
    ops = {n.op_type for n in onnx.load(str(base_export.model_path)).graph.node}
    assert {"Attention", "MultiHeadAttention", "SkipLayerNormalization"} <= ops
    plain = export_onnx(tiny_sd, tmp_path / "plain", optimize=False)
    model = onnx.load(str(plain.model_path))
    assert plain.optimization is None and all(n.domain in ("", "ai.onnx") for n in model.graph.node)


def test_optimizing_and_halving_stream_external_weights(base_export, tiny_sd, tmp_path):
    """SD-size exports keep their weights in model.onnx_data: the optimizer (convolutions left on
    disk) and the fp16 conversion rewrite that file tensor by tensor, and the model still runs."""
    from esd_sdk.export.onnx import _Reference, _compare, _optimize, _reference

    plain = export_onnx(tiny_sd, tmp_path / "plain", optimize=False).model_path
    model_dir = tmp_path / "big" / "unet"
    model_dir.mkdir(parents=True)
    onnx.save(onnx.load(str(plain)), str(model_dir / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=False, size_threshold=0)  # one file per weight, as torch writes them
    ref: _Reference = _reference(resolve_unet(tiny_sd)[0])
    shapes = {**{k: v.shape for k, v in ref.inputs.items()}, "out_sample": ref.expected.shape}
    fused = _optimize(model_dir / "model.onnx", "cpu", shapes)
    assert fused["Attention"] and sorted(p.name for p in model_dir.iterdir()) == ["model.onnx", "model.onnx_data"]
    assert _compare(ref, model_dir / "model.onnx", "fp32").max_abs_diff <= 1e-4
    from esd_sdk.export.onnx import _convert_fp16

    _convert_fp16(model_dir / "model.onnx")
    assert _compare(ref, model_dir / "model.onnx", "fp16").max_abs_diff <= 5e-2
