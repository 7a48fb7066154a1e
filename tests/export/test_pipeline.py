"""`esd-sdk export --format pipeline`: a diffusers pipeline directory that diffusers loads offline
and that generates what `esd_sdk.generate` generates from the base model plus the edited UNet."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import esd_sdk
from esd_sdk.artifact import load_edited_unet, load_manifest
from esd_sdk.cli import cli
from esd_sdk.errors import ModelNotFoundError, OutputExistsError
from esd_sdk.generation import GenerationConfig, generate
from esd_sdk.loading import load_base, weights_hash
from esd_sdk.serving import open_pipeline

from ..conftest import _erased

STEPS = GenerationConfig(num_inference_steps=3, guidance_scale=5.0)


@pytest.fixture(scope="module")
def erased_sd_v(tiny_sd_v, tmp_path_factory):
    return _erased(tiny_sd_v, tmp_path_factory.mktemp("erased_sd_v") / "erased")


def _diffusers_images(pipe, prompts, seed):
    generators = [torch.Generator("cpu").manual_seed(seed) for _ in prompts]  # as generate(n=1): one seed
    return pipe(prompt=prompts, num_inference_steps=STEPS.num_inference_steps, guidance_scale=STEPS.guidance_scale,
                generator=generators, output_type="np").images


@pytest.mark.parametrize("erased_name,cls", [("erased_sd", "StableDiffusionPipeline"),
                                             ("erased_sd_v", "StableDiffusionPipeline"),
                                             ("erased_sdxl", "StableDiffusionXLPipeline"),
                                             ("erased_toy", "StableDiffusionPipeline")])
def test_pipeline_loads_offline_and_generates_what_the_sdk_does(erased_name, cls, request, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    erased = request.getfixturevalue(erased_name)
    result = esd_sdk.export(erased, format="pipeline", out=tmp_path / "pipe")
    out = result.directory
    manifest = load_manifest(erased)
    assert result.written.weights_hash == manifest["edited_hash"]
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == cls
    assert (out / "esd.json").is_file() and (out / "esd_delta.safetensors").is_file()
    assert "DiffusionPipeline.from_pretrained" in (out / "README.md").read_text()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = DiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert type(pipe).__name__ == cls
    assert weights_hash(pipe.unet) == manifest["edited_hash"]
    base = load_base(manifest["base_model"])
    assert weights_hash(pipe.unet) != weights_hash(base.unet)  # the edit, not the base
    prompts = ["a red circle", "a blue square"]
    expected = generate(base, prompts, seed=7, config=STEPS, unet=load_edited_unet(erased))
    np.testing.assert_array_equal(_diffusers_images(pipe, prompts, 7), expected)

    # The serving stack needs nothing else: the directory is the base and the edit in one.
    served = open_pipeline(out)
    assert weights_hash(served.runtime.unet) == manifest["edited_hash"]
    got = served(prompts, seeds=[7, 7], steps=STEPS.num_inference_steps, guidance=STEPS.guidance_scale)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    if erased_name == "erased_toy":  # the toy's judge and sampler defaults travel with it
        assert load_base(out).family == "toy" and (out / "esd_generation.json").is_file()


def test_pipeline_export_is_atomic_and_needs_overwrite(erased_sd, tiny_sd, tmp_path):
    runner = CliRunner()
    out = tmp_path / "pipe"
    ok = runner.invoke(cli, ["export", str(erased_sd), "--format", "pipeline", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "DiffusionPipeline.from_pretrained" in ok.output
    again = runner.invoke(cli, ["export", str(erased_sd), "--format", "pipeline", "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output and len(again.output.strip().splitlines()) == 1
    with pytest.raises(OutputExistsError):
        esd_sdk.export(erased_sd, format="pipeline", out=out)
    esd_sdk.export(erased_sd, format="pipeline", out=out, overwrite=True)
    # A base model is not an erase output: nothing is written.
    with pytest.raises(ModelNotFoundError, match="erase output"):
        esd_sdk.export(tiny_sd, format="pipeline", out=tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    bad = runner.invoke(cli, ["export", str(erased_sd), "--format", "pipeline", "--precision", "fp16",
                              "--out", str(tmp_path / "p16")])
    assert bad.exit_code == 1 and "--precision" in bad.output and not (tmp_path / "p16").exists()
