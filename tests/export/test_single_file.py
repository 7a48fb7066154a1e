"""`esd-sdk export --format single-file`: one .safetensors in the original SD layout that
diffusers' from_single_file (and the SDK's own loader) read back tensor for tensor."""

import pytest
import torch
from click.testing import CliRunner

import esd_sdk
from esd_sdk.cli import cli
from esd_sdk.errors import OutputExistsError, UnsupportedModelError
from esd_sdk.export.pipeline import assemble
from esd_sdk.loading import load_base, toy_model_path


@pytest.mark.parametrize("erased_name,config", [("erased_sd", "tiny_sd"), ("erased_toy", None)])
def test_round_trip_through_from_single_file(erased_name, config, request, tmp_path):
    from diffusers import StableDiffusionPipeline

    erased = request.getfixturevalue(erased_name)
    config = request.getfixturevalue(config) if config else toy_model_path()
    result = esd_sdk.export(erased, format="single-file", out=tmp_path / "edit.safetensors").written
    assert result.path == tmp_path / "edit.safetensors" and result.path.is_file()
    loaded = StableDiffusionPipeline.from_single_file(str(result.path), config=str(config), local_files_only=True)
    expected, _ = assemble(erased)
    for component in ("unet", "vae", "text_encoder"):
        got, want = getattr(loaded, component).state_dict(), getattr(expected.pipeline, component).state_dict()
        assert set(want) <= set(got), component
        assert all(torch.equal(got[k], want[k]) for k in want), component
    # The SDK's own loader reads it too (offline, with the base as the config).
    assert torch.equal(load_base(result.path, config=config).unet.conv_out.weight, expected.unet.conv_out.weight)


def test_single_file_defaults_errors_and_overwrite(erased_sd, erased_sdxl, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["export", str(erased_sd), "--format", "single-file"])
    default = erased_sd.parent / f"{erased_sd.name}.safetensors"
    try:
        assert ok.exit_code == 0 and default.is_file() and "from_single_file" in ok.output, ok.output
        again = runner.invoke(cli, ["export", str(erased_sd), "--format", "single-file"])
        assert again.exit_code == 1 and "--overwrite" in again.output
        assert runner.invoke(cli, ["export", str(erased_sd), "--format", "single-file", "--overwrite"]).exit_code == 0
    finally:
        default.unlink(missing_ok=True)
    with pytest.raises(UnsupportedModelError, match=".safetensors"):
        esd_sdk.export(erased_sd, format="single-file", out=tmp_path / "edit.ckpt")
    with pytest.raises(UnsupportedModelError, match="SDXL"):
        esd_sdk.export(erased_sdxl, format="single-file", out=tmp_path / "xl.safetensors")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken.safetensors").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        esd_sdk.export(erased_sd, format="single-file", out=tmp_path / "taken.safetensors")
