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


def test_text2image_repository(erased_sd, tmp_path):
    """`esd-sdk export --format triton-t2i`: a Python-backend model with dynamic batching that
    serves the erase output (the server test, tests/serving/test_triton_server.py, runs it)."""
    import esd_sdk
    from esd_sdk.serving.triton_app import MODEL_NAME, MODEL_PY

    result = esd_sdk.export(erased_sd, format="triton-t2i", out=tmp_path / "t2i", max_batch_size=4)
    assert "text2image" in result.describe()
    model = tmp_path / "t2i" / MODEL_NAME
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*")) == ["1", "1/model.py", "config.pbtxt"]
    assert (model / "1" / "model.py").read_text() == MODEL_PY
    config = parse_pbtxt((model / "config.pbtxt").read_text())
    assert config["backend"] == "python" and config["max_batch_size"] == 4
    assert [(i["name"], i["data_type"], i.get("optional", False)) for i in config["input"]] == [
        ("prompt", "TYPE_STRING", False), ("seed", "TYPE_INT64", True), ("steps", "TYPE_INT32", True),
        ("guidance", "TYPE_FP32", True)]
    assert config["output"] == {"name": "image", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3]}
    assert "max_queue_delay_microseconds" in config["dynamic_batching"]
    params = {p["key"]: p["value"]["string_value"] for p in config["parameters"]}
    assert params["model"] == str(erased_sd.resolve()) and params["backend"] == "torch"
    with pytest.raises(OutputExistsError):
        esd_sdk.export(erased_sd, format="triton-t2i", out=tmp_path / "t2i")


def test_text2image_repository_options_and_errors(tmp_path):
    from esd_sdk.errors import ConfigError
    from esd_sdk.serving.triton_app import MODEL_NAME, write_text2image_repository

    repo = write_text2image_repository("toy", tmp_path / "repo", backend="onnxruntime", threads=2, max_wait_ms=2.5,
                                       max_queue=7, deadline_s=1.5).directory
    config = parse_pbtxt((repo / MODEL_NAME / "config.pbtxt").read_text())
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 2500, "default_queue_policy": {
        "max_queue_size": 7, "default_timeout_microseconds": 1_500_000, "timeout_action": "REJECT"}}
    params = {p["key"]: p["value"]["string_value"] for p in config["parameters"]}
    assert params["model"] == "toy" and params["backend"] == "onnxruntime" and params["threads"] == "2"
    with pytest.raises(ConfigError, match="backend must be one of"):
        write_text2image_repository("toy", tmp_path / "bad", backend="tensorflow")
    with pytest.raises(ConfigError, match="max_batch_size"):
        write_text2image_repository("toy", tmp_path / "bad", max_batch_size=0)
    assert not (tmp_path / "bad").exists()
