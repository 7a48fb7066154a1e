"""`esd-sdk export --format lora`: the delta as a LoRA that diffusers' load_lora_weights loads
(peft keys and kohya keys), with ranks from each tensor's SVD."""

import json

import pytest
import torch
from click.testing import CliRunner

import esd_sdk
from esd_sdk.artifact import load_edited_unet
from esd_sdk.cli import cli
from esd_sdk.delta import delta_names, read_delta
from esd_sdk.errors import ConfigError, OutputExistsError
from esd_sdk.export.lora import KOHYA_NAME, REPORT_NAME, WEIGHT_NAME, choose_rank, factorize
from esd_sdk.loading import load_base


def _fused_unet(base_dir, lora_dir, **kwargs) -> dict:
    """The base UNet's weights with the LoRA loaded and fused by diffusers."""
    pipe = load_base(base_dir).pipeline
    pipe.load_lora_weights(lora_dir, **kwargs)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return pipe.unet.state_dict()


@pytest.mark.parametrize("erased_name,base_name", [("erased_sd", "tiny_sd"), ("erased_sdxl", "tiny_sdxl")])
def test_full_rank_lora_reproduces_every_weight_it_carries(erased_name, base_name, request, tmp_path):
    erased, base_dir = request.getfixturevalue(erased_name), request.getfixturevalue(base_name)
    lora = esd_sdk.export(erased, format="lora", out=tmp_path / "lora", rank=4096).written
    assert lora.relative_error < 1e-5
    got = _fused_unet(base_dir, tmp_path / "lora")
    edited = load_edited_unet(erased).state_dict()
    base = load_base(base_dir).unet.state_dict()
    changed = delta_names(read_delta(erased)[0])
    convs = [n for n in changed if edited[n].dim() == 4]
    assert convs and all(n.removesuffix(".weight") in lora.ranks for n in convs)  # ESD-u's convs ride along
    for name in changed:
        if name in lora.dropped:  # biases (and norms): a LoRA cannot carry them; they stay the base's
            assert torch.equal(got[name], base[name]) and edited[name].dim() < 2
        else:
            torch.testing.assert_close(got[name], edited[name], atol=1e-5, rtol=0)
    unchanged = [n for n in edited if n not in changed]
    assert all(torch.equal(got[n], base[n]) for n in unchanged)
    assert 0.9 < lora.carried_share < 1


def test_rank_by_energy_and_fixed_rank(erased_sd, tmp_path):
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])  # cumulative energy shares .753, .941, .988, 1
    assert [choose_rank(s, None, e) for e in (0.5, 0.75, 0.95, 0.99, 1.0)] == [1, 1, 3, 4, 4]
    assert choose_rank(s, 2, None) == 2 and choose_rank(s, 99, None) == 4
    conv = torch.randn(8, 4, 3, 3, dtype=torch.float64).float()
    a, b, kept = factorize(conv, 2, None)
    assert a.shape == (2, 4, 3, 3) and b.shape == (8, 2, 1, 1) and 0 < kept < 1

    lora = esd_sdk.export(erased_sd, format="lora", out=tmp_path / "e", rank_energy=0.5).written
    assert all(v >= 0.5 for v in lora.kept_energy.values())
    fixed = esd_sdk.export(erased_sd, format="lora", out=tmp_path / "r2", rank=2).written
    assert set(fixed.ranks.values()) == {2} and 0 < fixed.relative_error < 1
    assert (tmp_path / "r2" / WEIGHT_NAME).stat().st_size < (erased_sd / "esd_delta.safetensors").stat().st_size
    report = json.loads((tmp_path / "e" / REPORT_NAME).read_text())
    assert report["energy"] == 0.5 and report["ranks"] == lora.ranks


def test_kohya_keys_load_to_the_same_weights(erased_sd, tiny_sd, tmp_path):
    esd_sdk.export(erased_sd, format="lora", out=tmp_path / "lora", rank=3)
    peft = _fused_unet(tiny_sd, tmp_path / "lora")
    kohya = _fused_unet(tiny_sd, tmp_path / "lora", weight_name=KOHYA_NAME)
    base = load_base(tiny_sd).unet.state_dict()
    assert sum(not torch.equal(peft[k], base[k]) for k in base) > 10
    for k in peft:
        torch.testing.assert_close(kohya[k], peft[k], atol=1e-6, rtol=0)


def test_lora_cli_errors_and_overwrite(erased_sd, tmp_path):
    runner = CliRunner()
    out = tmp_path / "lora"
    ok = runner.invoke(cli, ["export", str(erased_sd), "--format", "lora", "--rank", "2", "--out", str(out)])
    assert ok.exit_code == 0 and "load_lora_weights" in ok.output, ok.output
    again = runner.invoke(cli, ["export", str(erased_sd), "--format", "lora", "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    both = runner.invoke(cli, ["export", str(erased_sd), "--format", "lora", "--rank", "2", "--rank-energy", "0.9",
                               "--out", str(tmp_path / "both")])
    assert both.exit_code == 1 and "not both" in both.output and not (tmp_path / "both").exists()
    bad = runner.invoke(cli, ["export", str(erased_sd), "--format", "lora", "--rank-energy", "1.5"])
    assert bad.exit_code == 2
    with pytest.raises(OutputExistsError):
        esd_sdk.export(erased_sd, format="lora", out=out)
    with pytest.raises(ConfigError, match="precision"):
        esd_sdk.export(erased_sd, format="lora", out=tmp_path / "x", precision="fp16")
