"""TensorRT needs a GPU: here, the clear errors; on a GPU machine, build and refit."""

import importlib.util

import pytest
import torch
from click.testing import CliRunner

from esd_sdk.cli import cli
from esd_sdk.errors import MissingDependencyError
from esd_sdk.export.tensorrt import Profile, _shapes, build_engine

HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(HAS_TRT, reason="this machine has TensorRT and a GPU")
def test_without_gpu_or_tensorrt_the_error_names_the_extra(tiny_sd, tmp_path):
    with pytest.raises(MissingDependencyError, match="esd-sdk\\[gpu\\]|CUDA GPU"):
        build_engine(tmp_path, tmp_path / "x.plan")


@pytest.mark.skipif(HAS_TRT, reason="this machine has TensorRT and a GPU")
def test_cli_tensorrt_fails_in_one_line_and_writes_nothing(tiny_sd, tmp_path):
    out = tmp_path / "trt"
    result = CliRunner().invoke(cli, ["export", str(tiny_sd), "--format", "tensorrt", "--out", str(out)])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "gpu" in result.output.lower()
    assert not out.exists()


def test_profile_shapes(tiny_sd):
    meta = {"unet_config": {"sample_size": 16, "in_channels": 4, "cross_attention_dim": 32}, "inputs": {}}
    static = _shapes(meta, Profile(sequence_length=16))
    assert static["sample"] == ((2, 4, 16, 16),) * 3 and static["timestep"] == ((2,),) * 3
    dynamic = _shapes(meta, Profile.dynamic(max_batch=8, sequence_length=16))
    assert dynamic["sample"][0] == (1, 4, 32, 32) and dynamic["sample"][2] == (8, 4, 128, 128)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs tensorrt and a CUDA GPU")
def test_build_and_refit(tiny_sd, tmp_path):
    from esd_sdk.config import EraseConfig
    from esd_sdk.training import erase
    from esd_sdk.export import export_onnx
    from esd_sdk.export.tensorrt import refit_engine

    edit = tmp_path / "edit"
    erase(tiny_sd, out=edit, config=EraseConfig(concepts=["circle"], steps=2, lr=1e-2, ddim_steps=3), progress=False)
    export_onnx(tiny_sd, tmp_path / "onnx")
    info = build_engine(tmp_path / "onnx", tmp_path / "unet.plan", profile=Profile(sequence_length=16))
    refit = refit_engine(tmp_path / "unet.plan", tmp_path / "onnx", edit)
    assert refit.refits and refit.weights_hash != info.weights_hash
