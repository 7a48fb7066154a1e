import json
import math

import pytest
import torch

from esd_sdk import load_base
from esd_sdk.config import EraseConfig
from esd_sdk.erase import EraseInterrupted, NonFiniteLossError, _Trainer, erase, train
from esd_sdk.errors import ConfigError, OutputExistsError
from esd_sdk.fold import DELTA_NAME, MANIFEST_NAME, apply_delta, load_edited_unet, partial_dir
from esd_sdk.loading import weights_hash
from esd_sdk.reference import ReferenceESD

FAST = dict(steps=4, lr=1e-3, ddim_steps=6)


def _params(unet):
    return {n: p.detach().clone() for n, p in unet.named_parameters()}


@pytest.mark.parametrize("sampler", ["edited", "frozen"])
def test_engine_matches_the_plain_reference(tiny_sd, sampler):
    """Batched calls, swapped-in frozen weights and all: same update as the textbook version."""
    config = dict(concepts=["a red circle", "square"], method="x", sampler=sampler, steps=5, lr=1e-3, ddim_steps=8)
    ref = ReferenceESD(load_base(tiny_sd), EraseConfig(**config))
    ref_losses = [ref.step() for _ in range(5)]
    state = train(load_base(tiny_sd), EraseConfig(**config), progress=False)
    assert state.losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-7)
    ref_params = dict(ref.unet.named_parameters())
    for name in state.selection.tensors:
        torch.testing.assert_close(dict(state.unet.named_parameters())[name], ref_params[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fixture", ["tiny_sd", "tiny_sd_v", "tiny_sdxl"])
@pytest.mark.parametrize("method", ["x", "u"])
def test_erase_changes_only_the_selected_tensors(request, fixture, method):
    base = load_base(request.getfixturevalue(fixture))
    before = _params(base.unet)
    state = train(base, EraseConfig(concepts=["circle"], method=method, **FAST), progress=False)
    after = _params(state.unet)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= set(state.selection.tensors)
    assert all(math.isfinite(loss) for loss in state.losses)


def test_erase_writes_a_complete_artifact(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "edit"
    result = erase(EraseConfig(concepts=["circle"], method="x", preserve=["square"], **FAST), tiny_sd, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "esd.json", "esd_delta.safetensors", "unet"]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["concepts"] == ["circle"] and manifest["method"] == "x"
    assert manifest["config"]["preserve"] == ["square"] and manifest["base_hash"].startswith("sha256:")
    assert set(manifest["trained"]["tensors"]) == set(result.state.selection.tensors)
    assert "torch" in manifest["versions"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "base_model:" in card and '"circle"' in card
    unet = load_edited_unet(out)
    assert weights_hash(unet) == manifest["edited_hash"]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, unet=unet)
    assert pipe.unet is unet
    assert not partial_dir(out).exists()


def test_delta_applies_and_reverts_bit_exactly(tiny_sd, tmp_path):
    out = tmp_path / "edit"
    erase(EraseConfig(concepts=["circle"], method="u", **FAST), tiny_sd, out, progress=False)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    unet = load_base(tiny_sd).unet
    base_params = _params(unet)
    apply_delta(unet, out / DELTA_NAME)
    edited = _params(load_edited_unet(out))
    assert all(torch.equal(p, edited[n]) for n, p in unet.named_parameters())
    assert weights_hash(unet) == manifest["edited_hash"]
    apply_delta(unet, out, revert=True)
    assert all(torch.equal(p, base_params[n]) for n, p in unet.named_parameters())


def test_delta_refuses_the_wrong_base(tiny_sd, tiny_sd_v, tmp_path):
    from esd_sdk.fold import DeltaMismatchError

    out = tmp_path / "edit"
    erase(EraseConfig(concepts=["circle"], method="x", **FAST), tiny_sd, out, progress=False)
    other = load_base(tiny_sd_v).unet
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(DeltaMismatchError, match="not the base model"):
        apply_delta(other, out)


def _interrupt_at(monkeypatch, at_step):
    original = _Trainer.train_step

    def step(self):
        if self.step == at_step:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(_Trainer, "train_step", step)


def test_interrupt_saves_and_resume_continues_exactly(tiny_sd, tmp_path, monkeypatch):
    config = dict(concepts=["circle"], method="x", steps=6, lr=1e-3, ddim_steps=6, regenerate_every=2)
    straight = train(load_base(tiny_sd), EraseConfig(**config), progress=False)

    out = tmp_path / "edit"
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(EraseInterrupted, match="--resume"):
        erase(EraseConfig(**config), tiny_sd, out, progress=False)
    assert not out.exists() and (partial_dir(out) / "checkpoint" / "state.json").exists()
    monkeypatch.undo()
    with pytest.raises(OutputExistsError, match="--resume"):
        erase(EraseConfig(**config), tiny_sd, out, progress=False)
    resumed = erase(EraseConfig(**config), tiny_sd, out, resume=True, progress=False)
    assert resumed.state.losses == straight.losses
    a, b = _params(straight.unet), _params(resumed.unet)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_resume_refuses_changed_settings(tiny_sd, tmp_path, monkeypatch):
    out = tmp_path / "edit"
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(EraseInterrupted):
        erase(EraseConfig(concepts=["circle"], **FAST), tiny_sd, out, progress=False)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="lr differ"):
        erase(EraseConfig(concepts=["circle"], **{**FAST, "lr": 5e-4}), tiny_sd, out, resume=True, progress=False)


def test_non_finite_loss_stops_with_a_clear_error(tiny_sd, tmp_path):
    out = tmp_path / "edit"
    with pytest.raises(NonFiniteLossError, match="lower --lr"):
        erase(EraseConfig(concepts=["circle"], negative_guidance=1e38, **FAST), tiny_sd, out, progress=False)
    assert not out.exists()


def test_existing_output_needs_overwrite(tiny_sd, tmp_path):
    out = tmp_path / "edit"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        erase(EraseConfig(concepts=["circle"], **FAST), tiny_sd, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    erase(EraseConfig(concepts=["circle"], **FAST), tiny_sd, out, overwrite=True, progress=False)
    assert (out / MANIFEST_NAME).exists() and not (out / "keep.txt").exists()


def test_bf16_autocast_keeps_fp32_master_weights(tiny_sd):
    state = train(load_base(tiny_sd), EraseConfig(concepts=["circle"], precision="bf16",
                                                  gradient_checkpointing=True, **FAST), progress=False)
    assert all(p.dtype == torch.float32 for p in state.unet.parameters())
    assert all(math.isfinite(loss) for loss in state.losses)


@pytest.mark.parametrize("changes, message", [
    (dict(concepts=[""]), "non-empty"),
    (dict(negative_guidance=0.0), "eta"),
    (dict(steps=0), "steps must be positive"),
    (dict(lr=-1.0), "learning rate"),
    (dict(precision="fp8"), "precision"),
    (dict(concepts=["circle"], preserve=["circle"]), "both erased and preserved"),
])
def test_config_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        EraseConfig(**{"concepts": ["circle"], **changes}).validate()


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown erase setting"):
        EraseConfig.from_dict({"concepts": ["x"], "learning_rate": 1})


def test_bf16_stores_frozen_layers_low_and_restores_them_exactly(tiny_sd):
    """Frozen Linear/Conv tensors are held in bf16 while training (autocast computes them in bf16
    anyway); the trained tensors keep fp32 masters; afterwards every frozen tensor is bit-exact."""
    base = load_base(tiny_sd)
    before = _params(base.unet)
    trainer = _Trainer(base, EraseConfig(concepts=["circle"], precision="bf16", **FAST), torch.device("cpu"), None)
    params = dict(trainer.unet.named_parameters())
    assert all(params[n].dtype == torch.float32 for n in trainer.trained)
    assert params["conv_in.weight"].dtype == torch.bfloat16
    assert any(n.endswith("norm1.weight") and p.dtype == torch.float32 for n, p in params.items())
    trainer.train_step()
    trainer.release()
    after = _params(trainer.unet)
    assert all(p.dtype == torch.float32 for p in after.values())
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainer.trained)


def test_low_precision_storage_leaves_the_losses_unchanged(tiny_sdxl, monkeypatch):
    from esd_sdk import erase as engine

    config = dict(concepts=["circle"], precision="bf16", method="u", **FAST)
    stored_low = train(load_base(tiny_sdxl), EraseConfig(**config), progress=False)
    monkeypatch.setattr(engine._LowPrecisionFrozen, "LAYERS", ())  # autocast casts fp32 weights per call
    cast_per_call = train(load_base(tiny_sdxl), EraseConfig(**config), progress=False)
    assert stored_low.losses == cast_per_call.losses


def test_frozen_weights_are_restored_when_training_fails(tiny_sd):
    base = load_base(tiny_sd)
    before = _params(base.unet)
    with pytest.raises(NonFiniteLossError):
        train(base, EraseConfig(concepts=["circle"], precision="bf16", negative_guidance=1e38, **FAST), progress=False)
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in base.unet.named_parameters())
