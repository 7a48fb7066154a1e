import json
import os

import pytest
from click.testing import CliRunner
from PIL import Image

from esd_sdk.cli import cli


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_help_lists_the_commands(run):
    result = run("--help")
    assert result.exit_code == 0
    for command in ("erase", "generate", "apply-delta", "info"):
        assert command in result.output


def test_erase_help_teaches(run):
    result = run("erase", "--help")
    assert result.exit_code == 0 and "Examples:" in result.output and "--concept" in result.output


def test_info_describes_the_model(run, tiny_sd):
    result = run("info", "--model", tiny_sd)
    assert result.exit_code == 0 and "StableDiffusionPipeline" in result.output


def test_generate_writes_a_grid(run, tiny_sd, tmp_path):
    out = tmp_path / "grid.png"
    result = run("generate", "--model", tiny_sd, "--prompt", "a red circle", "--prompt", "square", "-n", "3",
                 "--steps", "2", "--out", out)
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    assert image.width > 3 * 32 * 4 and image.height > 2 * 32 * 4


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--concept", "  "], ["non-empty"]),
    (["--concept", "circle", "--method", "z"], ["unknown method 'z'"]),
    (["--concept", "circle", "--method", "re:nothing_matches_this"], ["selects no UNet tensors"]),
    (["--concept", "circle", "--eta", "0"], ["eta", "> 0"]),
    (["--concept", "circle", "--steps", "0"], ["steps must be positive"]),
    (["--concept", "circle", "--robust", "--robust-template", "a photo of"], ["robust template 'a photo of'", "one {}"]),
    (["--concept", "circle", "--preserve-template", "a photo of {}"], ["nothing is preserved", "--preserve"]),
])
def test_erase_bad_input(run, tiny_sd, tmp_path, args, needles):
    out = tmp_path / "edit"
    _one_line_error(run("erase", "--model", tiny_sd, "--out", out, *args), *needles)
    assert not out.exists()


def test_erase_missing_model(run, tmp_path):
    _one_line_error(run("erase", "--model", tmp_path / "nope", "--concept", "circle", "--out", tmp_path / "o"),
                    "does not exist")


def test_erase_offline_hub_suggests_toy(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _one_line_error(run("erase", "--model", "org/not-cached", "--concept", "circle", "--out", tmp_path / "o"),
                    "--model toy")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_erase_unwritable_output_non_root(run, tiny_sd, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _one_line_error(run("erase", "--model", tiny_sd, "--concept", "circle", "--out", locked / "edit"), "not writable")


def test_erase_unwritable_output(run, tiny_sd, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    _one_line_error(run("erase", "--model", tiny_sd, "--concept", "circle", "--out", blocker / "edit"), "choose another --out")


def test_erase_existing_output(run, tiny_sd, tmp_path):
    out = tmp_path / "edit"
    out.mkdir()
    _one_line_error(run("erase", "--model", tiny_sd, "--concept", "circle", "--out", out), "--overwrite")


def test_dry_run_lists_tensors_and_writes_nothing(run, tiny_sd, tmp_path):
    out = tmp_path / "edit"
    result = run("erase", "--model", tiny_sd, "--concept", "circle", "--method", "x-strict", "--dry-run", "--out", out)
    assert result.exit_code == 0
    assert "attn2.to_k.weight" in result.output and "attn2.to_q" not in result.output
    assert not out.exists()


def test_robust_templates_reach_the_settings(run, tiny_sd, tmp_path):
    out = tmp_path / "edit"
    result = run("erase", "--model", tiny_sd, "--concept", "circle", "--robust", "--robust-template", "a photo of {}",
                 "--robust-template", "{} in a painting", "--dry-run", "--out", out)
    assert result.exit_code == 0, result.output
    assert "'robust_templates': ['a photo of {}', '{} in a painting']" in result.output
    assert not out.exists()


def test_concept_and_preserve_templates_reach_the_settings(run, tiny_sd, tmp_path):
    out = tmp_path / "edit"
    result = run("erase", "--model", tiny_sd, "--concept", "circle", "--preserve", "square", "--preserve-template",
                 "a photo of {}", "--preserve-template", "{} in a painting", "--concept-template", "a red {}",
                 "--dry-run", "--out", out)
    assert result.exit_code == 0, result.output
    assert "'preserve_templates': ['a photo of {}', '{} in a painting']" in result.output
    assert "'concept_templates': ['a red {}']" in result.output
    assert not out.exists()


def test_erase_then_apply_and_revert_delta(run, tiny_sd, tmp_path):
    from diffusers import UNet2DConditionModel
    import torch

    out = tmp_path / "edit"
    result = run("erase", "--model", tiny_sd, "--concept", "circle", "--steps", "3", "--lr", "1e-3",
                 "--ddim-steps", "5", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "esd.json").read_text())["training"]["steps"] == 3
    applied = tmp_path / "applied"
    assert run("apply-delta", out, "--model", tiny_sd, "--out", applied).exit_code == 0
    a = UNet2DConditionModel.from_pretrained(applied).state_dict()
    e = UNet2DConditionModel.from_pretrained(out / "unet").state_dict()
    assert all(torch.equal(a[k], e[k]) for k in e)
    reverted = tmp_path / "reverted"
    assert run("apply-delta", out, "--unet", out / "unet", "--revert", "--out", reverted).exit_code == 0
    b = UNet2DConditionModel.from_pretrained(tiny_sd / "unet").state_dict()
    r = UNet2DConditionModel.from_pretrained(reverted).state_dict()
    assert all(torch.equal(b[k], r[k]) for k in b)
