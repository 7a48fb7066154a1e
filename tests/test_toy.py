"""The bundled toy world: layout, tokenizer, judge, generation, and the training script."""

import numpy as np
import torch

from esd_sdk import generate, load_base, toy_model_path
from esd_sdk.toy import load_judge, prompt_rates
from esd_sdk.toy import world
from esd_sdk.toy.train import judge_accuracy


def test_loads_as_a_plain_diffusers_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(toy_model_path())
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert any("attn2" in n for n, _ in pipe.unet.named_modules())


def test_loader_detects_the_toy_world():
    base = load_base("toy")
    assert base.family == "toy" and base.prediction_type == "epsilon"


def test_every_world_word_is_one_token():
    tokenizer = load_base("toy").pipeline.tokenizer
    for word in world.vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert len(tokenizer("van gogh", add_special_tokens=False).input_ids) > 2  # unknown words still encode


def test_captions_use_bare_forms_and_synonyms_and_empty():
    rng = np.random.default_rng(0)
    captions = {world.caption(rng, o, c, s) for o, c, s in rng.integers(0, 3, size=(4000, 3))}
    for bare in ("circle", "a circle", "striped", "", "disk", "a red circle", "stripy"):
        assert bare in captions or any(c == bare for c in captions), bare


def test_judge_is_accurate_on_held_out_renders():
    images, labels = world.render_batch(np.random.default_rng(12345), 1500, p_none=0.1)
    accuracy = judge_accuracy(load_judge(), images, labels)
    assert min(accuracy.values()) >= 0.97, accuracy


def test_judge_rejects_an_empty_image():
    blank = np.full((4, 32, 32, 3), 0.18, dtype=np.float32)
    assert load_judge().judge(blank).object == ["none"] * 4


def test_generation_draws_what_is_asked():
    base = load_base("toy")
    images = generate(base, ["a red circle", "a blue square", "a striped green triangle"], n=12, seed=7)
    judge = load_judge()
    for i, prompt in enumerate(["a red circle", "a blue square", "a striped green triangle"]):
        rates = prompt_rates(judge, images[i * 12:(i + 1) * 12], prompt)
        assert min(rates.values()) >= 0.75, (prompt, rates)


def test_same_seed_same_image():
    base = load_base("toy")
    a = generate(base, "a yellow cross", n=2, seed=3)
    b = generate(base, ["a red circle", "a yellow cross"], n=2, seed=3)[2:]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_training_script_is_reproducible(tmp_path):
    from esd_sdk.toy.train import main

    for run in ("a", "b"):
        main(["--out", str(tmp_path / run), "--vae-steps", "2", "--judge-steps", "2", "--unet-steps", "2",
              "--n-images", "64", "--batch-size", "4"])
    from safetensors.torch import load_file

    for part in ("vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                 "judge/judge.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(tmp_path / "a" / part), load_file(tmp_path / "b" / part)
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert load_base(tmp_path / "a").family == "toy"
