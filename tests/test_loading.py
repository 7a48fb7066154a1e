import json

import pytest
import torch

from esd_sdk import load_base
from esd_sdk.errors import (
    CorruptWeightsError,
    ModelNotFoundError,
    NotADiffusersModelError,
    UnsafeWeightsError,
    UnsupportedModelError,
)
from esd_sdk.loading import detect_family, weights_hash


def test_loads_local_directory_and_detects_family(tiny_sd):
    base = load_base(tiny_sd)
    assert type(base.pipeline).__name__ == "StableDiffusionPipeline"
    assert base.family == "custom" and base.prediction_type == "epsilon"
    assert "StableDiffusionPipeline" in base.describe()


def test_detects_v_prediction(tiny_sd_v):
    assert load_base(tiny_sd_v).prediction_type == "v_prediction"


def test_detects_sdxl(tiny_sdxl):
    base = load_base(tiny_sdxl)
    assert base.family == "sdxl" and base.uses_added_conditioning


@pytest.mark.parametrize("unet, scheduler, family", [
    ({"cross_attention_dim": 768}, {}, ("sd1", "epsilon")),
    ({"cross_attention_dim": 1024}, {"prediction_type": "v_prediction"}, ("sd2", "v_prediction")),
    ({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}, {}, ("sdxl", "epsilon")),
])
def test_detect_family_rules(unet, scheduler, family):
    assert detect_family(unet, scheduler) == family


def test_unknown_prediction_type_is_unsupported():
    with pytest.raises(UnsupportedModelError, match="sample"):
        detect_family({}, {"prediction_type": "sample"})


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_base(tmp_path / "nope")


def test_not_a_diffusers_layout(tmp_path):
    (tmp_path / "random.txt").write_text("hi")
    with pytest.raises(NotADiffusersModelError, match="model_index.json"):
        load_base(tmp_path)


def test_single_component_is_not_a_pipeline(tiny_sd):
    with pytest.raises(NotADiffusersModelError, match="single model component"):
        load_base(tiny_sd / "unet")


def test_unsupported_architecture(tiny_sd_copy):
    index = json.loads((tiny_sd_copy / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (tiny_sd_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError, match="KandinskyPipeline"):
        load_base(tiny_sd_copy)


def test_corrupt_weights(tiny_sd_copy):
    weights = tiny_sd_copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError, match="truncated|corrupt"):
        load_base(tiny_sd_copy)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptWeightsError, match="corrupt"):
        load_base(tiny_sd_copy)


def test_pickled_weights_refused_without_flag(tiny_sd_copy):
    unet_dir = tiny_sd_copy / "unet"
    from safetensors.torch import load_file

    state = load_file(unet_dir / "diffusion_pytorch_model.safetensors")
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, unet_dir / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="--allow-pickle"):
        load_base(tiny_sd_copy)
    assert load_base(tiny_sd_copy, allow_pickle=True).unet is not None


def test_pickled_single_file_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(UnsafeWeightsError, match="pickled"):
        load_base(ckpt)


def test_single_file_offline_names_the_fix(tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(ckpt))
    with pytest.raises(ModelNotFoundError, match="--config"):
        load_base(ckpt)


def test_hub_unreachable_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="toy"):
        load_base("some-org/some-model-that-is-not-cached")


def test_weights_hash_changes_with_any_value(tiny_sd):
    unet = load_base(tiny_sd).unet
    h = weights_hash(unet)
    assert h == weights_hash(unet)
    with torch.no_grad():
        next(unet.parameters()).view(-1)[0] += 1e-6
    assert weights_hash(unet) != h
