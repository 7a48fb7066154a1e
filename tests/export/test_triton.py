import onnx
import pytest

from esd_sdk.errors import OutputExistsError
from esd_sdk.export import export_onnx, parse_pbtxt, write_triton_repository


@pytest.fixture(scope="module")
def exported(tiny_sd, tmp_path_factory):
    return export_onnx(tiny_sd, tmp_path_factory.mktemp("onnx") / "fp16", precision="fp16")


def test_repository_matches_the_model(exported, tmp_path):
    repo = write_triton_repository(exported.directory, tmp_path / "repo", max_batch_size=4)
    config = parse_pbtxt((repo / "unet" / "config.pbtxt").read_text())
    assert config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 4
    assert (repo / "unet" / "1" / "model.onnx").is_file()
    model = onnx.load(str(repo / "unet" / "1" / "model.onnx"))
    onnx_inputs = {i.name: i for i in model.graph.input}
    inputs = config["input"] if isinstance(config["input"], list) else [config["input"]]
    assert {i["name"] for i in inputs} == set(onnx_inputs)
    for entry in inputs:
        dims = onnx_inputs[entry["name"]].type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch_size"  # every input is batched, the timestep too
        assert entry["data_type"] == "TYPE_FP16"
        if entry["name"] == "timestep":
            assert entry["dims"] == [1] and entry["reshape"] == {"shape": []}
        else:
            assert len(entry["dims"]) == len(dims) - 1
    output = config["output"]
    assert output["name"] == model.graph.output[0].name and output["dims"] == [4, -1, -1]
    assert config["dynamic_batching"]["preferred_batch_size"] == [2, 4]


def test_refuses_existing_output(exported, tmp_path):
    (tmp_path / "repo").mkdir()
    with pytest.raises(OutputExistsError):
        write_triton_repository(exported.directory, tmp_path / "repo")
