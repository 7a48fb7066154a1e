"""Red-team attacks (esd_sdk.attack): they work (on the toy base model they bring a concept
back that an unrelated prompt does not), they run on SD 1.x/2.x/SDXL architectures without
touching the caller's modules, and bad budgets or names get one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from esd_sdk import ConfigError, GenerationConfig, generate, load_base, weights_hash
from esd_sdk.attack import (
    DEFAULT_BUDGETS,
    AttackTarget,
    SoftPrompt,
    attack_template,
    budgets_for,
    embedding_attack,
    encode_images,
    generate_soft,
    init_vectors,
    inversion_attack,
    learn_tokens,
    match_attack,
    run_attacks,
)
from esd_sdk.conditioning import encode_prompts
from esd_sdk.toy import load_judge

COLOURS = ("red", "blue")  # prompts "a <colour> triangle"
FAST = GenerationConfig(num_inference_steps=10, guidance_scale=5.0)  # the toy's sampler, fewer steps


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: one thread is fastest and deterministic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy():
    return load_base("toy")


def _state(*modules) -> list:
    """What an attack must not change: weights, grads, requires_grad flags, train/eval mode, hooks."""
    out = []
    for m in modules:
        out.append((weights_hash(m), m.training, [(p.requires_grad, p.grad is None) for p in m.parameters()],
                    sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())))
    return out


def _object_rate(images, obj) -> float:
    return float(np.mean([o == obj for o in load_judge().judge(images).object]))


# ---------------------------------------------------------------------------- the attacks work

def _toy_triangle_latents(toy, n=4):
    images = np.concatenate([generate(toy, f"a {c} triangle", n=n, seed=100_000, config=FAST) for c in COLOURS])
    assert _object_rate(images, "triangle") >= 0.9  # the concept images show the concept
    return encode_images(toy.pipeline.vae, images)


@pytest.mark.parametrize("attack", ["inversion", "embedding"])
def test_attack_recovers_the_concept_on_the_base_model(toy, attack):
    """The control: learned on the base toy model from triangle images, the learned tokens make
    triangles in prompts that no longer name one; the same prompts at the attack's starting
    point (an unrelated word, or random tokens) do not."""
    latents = _toy_triangle_latents(toy)
    mode, fn = ("replace", inversion_attack) if attack == "inversion" else ("prefix", embedding_attack)
    templates = [attack_template(f"a {c} triangle", ["triangle", "wedge"], mode) for c in COLOURS]
    assert all("triangle" not in t and "{}" in t for t in templates)
    per_latent = [t for t in templates for _ in range(4)]
    target = AttackTarget.from_pipeline(toy.pipeline)
    init = "a" if attack == "inversion" else None
    soft = fn(target, latents, per_latent, steps=40, lr=5e-2, init=init, generator=torch.Generator().manual_seed(0))
    start = SoftPrompt(soft.templates, init_vectors(target, soft.vectors[0].shape[0], soft.n_tokens, init,
                                                    torch.Generator().manual_seed(0)), soft.groups)
    learned_rate = _object_rate(generate_soft(toy, soft, n=6, seed=0, config=FAST), "triangle")
    start_rate = _object_rate(generate_soft(toy, start, n=6, seed=0, config=FAST), "triangle")
    assert learned_rate >= 0.8, (learned_rate, start_rate)
    assert start_rate <= 0.4, (learned_rate, start_rate)


def test_soft_prompt_generation_matches_plain_generation(toy):
    """A template without learned tokens generates exactly what generate() does (same
    encoding, sampler and seeds): attack images and plain images are comparable."""
    soft = SoftPrompt(["a red circle", "a striped box"], [torch.zeros(1, 1, 64)], [0, 0])
    plain = generate(toy, ["a red circle", "a striped box"], n=2, seed=3, config=FAST)
    assert np.array_equal(generate_soft(toy, soft, n=2, seed=3, config=FAST), plain)


# ---------------------------------------------------------------------------- mechanics on SD1/SD2/SDXL

@pytest.fixture(params=["sd1", "sd2", "sdxl"])
def tiny(request, tiny_sd, tiny_sd_v, tiny_sdxl):
    return load_base({"sd1": tiny_sd, "sd2": tiny_sd_v, "sdxl": tiny_sdxl}[request.param])


def test_encoding_matches_the_pipeline(tiny):
    """Plain templates encode exactly as the pipeline encodes prompts (hidden states, and for
    SDXL the pooled embeddings and time ids)."""
    prompts = ["a red circle", "striped"]
    ours = SoftPrompt(prompts, [torch.zeros(1, 2, e.get_input_embeddings().weight.shape[1])
                                for e in AttackTarget.from_pipeline(tiny.pipeline).text_encoders], [0, 0])
    ours = ours.encode(AttackTarget.from_pipeline(tiny.pipeline))
    theirs = encode_prompts(tiny, prompts)
    torch.testing.assert_close(ours.hidden, theirs.hidden, rtol=0, atol=1e-6)
    assert (ours.added is None) == (theirs.added is None)
    for k in (theirs.added or {}):
        torch.testing.assert_close(ours.added[k], theirs.added[k], rtol=0, atol=1e-6)


def test_attacks_run_and_leave_the_callers_modules_alone(tiny):
    pipe = tiny.pipeline
    target = AttackTarget.from_pipeline(pipe)
    modules = [pipe.unet, *target.text_encoders]
    before = _state(*modules)
    images = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    latents = encode_images(pipe.vae, images)
    assert latents.shape == (4, pipe.unet.config.in_channels, 16, 16)
    dims = [e.get_input_embeddings().weight.shape[1] for e in target.text_encoders]
    losses = []
    inv = inversion_attack(target, latents, ["a red {}"] * 2 + ["a blue {}"] * 2, n_tokens=2, steps=3, lr=1e-1,
                           losses=losses)
    emb = embedding_attack(target, latents, "{} a red", n_tokens=3, steps=3, lr=1e-1)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert inv.templates == ["a red {}", "a blue {}"] and inv.groups == [0, 0]  # one word, shared
    assert [tuple(v.shape) for v in inv.vectors] == [(1, 2, d) for d in dims]
    assert [tuple(v.shape) for v in emb.vectors] == [(1, 3, d) for d in dims]
    start = init_vectors(target, 1, 2, "a", torch.Generator().manual_seed(0))
    assert all(not torch.allclose(v, s) for v, s in zip(inv.vectors, start))  # learned: moved from the start
    assert all(not v.requires_grad for v in inv.vectors + emb.vectors)
    cond, plain = inv.encode(target), SoftPrompt(inv.templates, start, inv.groups).encode(target)
    assert cond.hidden.shape == (2, *encode_prompts(tiny, ["x"]).hidden.shape[1:])
    assert not torch.allclose(cond.hidden, plain.hidden)  # the learned tokens reach the UNet's conditioning
    images = generate_soft(tiny, emb, n=2, seed=0, config=GenerationConfig(num_inference_steps=2))
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    assert _state(*modules) == before


def test_warm_start_continues_from_a_soft_prompt(tiny):
    """The inner loop of adversarial training: k more steps from the last adversarial prompt."""
    target = AttackTarget.from_pipeline(tiny.pipeline)
    latents = torch.randn(2, tiny.unet.config.in_channels, 16, 16)
    first = embedding_attack(target, latents, "{} circle", n_tokens=2, steps=1, lr=1e-1)
    again = embedding_attack(target, latents, "{} circle", n_tokens=2, steps=1, lr=1e-1, init=first)
    moved = [(a - b).abs().max().item() for a, b in zip(again.vectors, first.vectors)]
    assert all(0 < m <= 0.11 for m in moved), moved  # one Adam step of lr 0.1 from where it was
    with pytest.raises(ConfigError, match="warm start"):
        embedding_attack(target, latents, "{} circle", n_tokens=3, steps=1, lr=1e-1, init=first)


def test_match_attack_learns_to_match_a_prediction(tiny):
    """AdvUnlearn's inner attack: the vectors move so that the UNet's prediction for x at t
    comes closer to the goal (here: its own prediction for another prompt), and nothing of the
    caller's changes."""
    pipe = tiny.pipeline
    target = AttackTarget.from_pipeline(pipe)
    before = _state(pipe.unet, *target.text_encoders)
    x, t = torch.randn(2, pipe.unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    with torch.no_grad():
        goal = pipe.unet(x, t, **encode_prompts(tiny, ["a red square"] * 2).kwargs()).sample
    start = SoftPrompt(["{}"], init_vectors(target, 1, 3, "circle", torch.Generator()), [0])
    losses = []
    soft = match_attack(target, x, t, goal, start, steps=30, lr=5e-2, losses=losses)
    assert len(losses) == 30 and losses[-1] < 0.8 * losses[0], losses
    assert all(not v.requires_grad for v in soft.vectors) and not torch.equal(soft.vectors[0], start.vectors[0])
    assert _state(pipe.unet, *target.text_encoders) == before
    with pytest.raises(ConfigError, match="attack steps must be a positive integer"):
        match_attack(target, x, t, goal, start, steps=0, lr=5e-2)


# ---------------------------------------------------------------------------- errors

@pytest.mark.parametrize("overrides, message", [
    (dict(steps=0), "steps must be a positive integer, got 0"),
    (dict(steps=-5), "steps must be a positive integer, got -5"),
    (dict(lr=0.0), "lr must be a positive number, got 0.0"),
    (dict(lr=-1e-3), "lr must be a positive number"),
    (dict(lr=float("nan")), "lr must be a positive number"),
    (dict(n_tokens=0), "n_tokens must be a positive integer, got 0"),
    (dict(n_images=0), "n_images must be a positive integer"),
])
def test_bad_budgets_get_one_line_errors(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as e:
        run_attacks(tmp_path, **overrides)  # checked before anything is loaded
    assert "\n" not in str(e.value) and "e.g." in str(e.value)


@pytest.mark.parametrize("attacks, message", [
    (["inversion", "prompts"], "unknown attack 'prompts': choose inversion, embedding"),
    ("textual", "unknown attack 'textual'"),
    ([], "no attack given"),
])
def test_unknown_attacks_get_one_line_errors(attacks, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as e:
        run_attacks(tmp_path, attacks)
    assert "\n" not in str(e.value)


def test_learning_functions_check_their_budget(toy):
    target = AttackTarget.from_pipeline(toy.pipeline)
    latents = torch.zeros(2, 4, 16, 16)
    for kwargs, message in ((dict(steps=0, lr=1e-2, n_tokens=1), "steps"), (dict(steps=1, lr=0, n_tokens=1), "lr"),
                            (dict(steps=1, lr=1e-2, n_tokens=0), "n_tokens")):
        with pytest.raises(ConfigError, match=message):
            learn_tokens(target, latents, "a {}", shared=True, **kwargs)
    with pytest.raises(ConfigError, match="3 prompts for 2 latents"):
        learn_tokens(target, latents, ["a {}"] * 3, steps=1, lr=1e-2, n_tokens=1, shared=True)
    with pytest.raises(ConfigError, match="more than one"):
        learn_tokens(target, latents, "{} a {}", steps=1, lr=1e-2, n_tokens=1, shared=True)
    with pytest.raises(ConfigError, match="more than the text encoder's 16"):
        learn_tokens(target, latents, "{} a red striped circle", steps=1, lr=1e-2, n_tokens=12, shared=True)


def test_budget_defaults_and_overrides():
    budgets = budgets_for(["embedding", "inversion", "embedding"], steps=7)
    assert list(budgets) == ["embedding", "inversion"]
    assert budgets["inversion"].steps == 7 and budgets["inversion"].lr == DEFAULT_BUDGETS["inversion"].lr
    assert DEFAULT_BUDGETS["inversion"].steps == 200  # run_attacks' defaults are not mutated by overrides


def test_attack_templates():
    words = ["circle", "disk"]
    assert attack_template("a red circle", words, "replace") == "a red {}"
    assert attack_template("a red disk", words, "prefix") == "{} a red"
    assert attack_template("a striped red circle, striped", ["striped", "stripy"], "replace") == "a {} red circle"
    assert attack_template("a painting of a church", ["van gogh"], "replace") == "a painting of a church, {}"
    assert attack_template("Starry Night by Van Gogh", ["van gogh"], "prefix") == "{} Starry Night by"
    assert attack_template("a circled square", words, "replace") == "a circled square, {}"  # whole words only


# ---------------------------------------------------------------------------- run_attacks end to end

def test_run_attacks_writes_reports_and_the_manifest(tmp_path):
    edit = tmp_path / "erased-circle"
    subprocess.run([sys.executable, "-m", "esd_sdk", "erase", "--model", "toy", "--concept", "circle", "--method", "x",
                    "--steps", "2", "--out", str(edit), "-q"], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})  # one thread: fastest for the toy on a shared CPU
    report = run_attacks(edit, steps=2, n_images=1, n=1, sampler_steps=2)
    out = edit / "attack"
    assert {p.name for p in out.iterdir()} == {"attack.json", "attack.md", "grid_inversion.png", "grid_embedding.png"}
    data = json.loads((out / "attack.json").read_text())
    assert [(r["attack"], r["concept"], r["images"]) for r in data["results"]] == [
        ("inversion", "circle", 4), ("embedding", "circle", 4)]  # 4 prompts "a <colour> circle", 1 image each
    assert data["budgets"]["embedding"] == {"steps": 2, "lr": DEFAULT_BUDGETS["embedding"].lr, "n_tokens": 6,
                                            "n_images": 1, "batch_size": 8}
    assert data["results"][0]["templates"][0] == "a red {}" and data["results"][1]["templates"][0] == "{} a red"
    for r in data["results"]:
        assert all(0 <= r[k] <= 1 for k in ("plain", "start", "asr", "plain_base", "control_start", "control"))
    scores = json.loads((edit / "esd.json").read_text())["scores"]["attack"]
    assert scores["summary"] == report.summary() and set(scores["summary"]) == {"inversion", "embedding"}
    assert "| inversion | circle |" in (out / "attack.md").read_text()
    assert '"attack"' in (edit / "README.md").read_text()


def test_cli_attack_and_eval_attack_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from esd_sdk.cli import cli

    runner = CliRunner()
    bad = runner.invoke(cli, ["attack", str(tmp_path), "--steps", "0"])
    assert bad.exit_code == 1 and "steps must be a positive integer, got 0" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    unknown = runner.invoke(cli, ["attack", str(tmp_path), "--attack", "prompt"])
    assert unknown.exit_code == 2 and "'prompt' is not one of 'inversion', 'embedding'" in unknown.output
    evaluated = runner.invoke(cli, ["eval", str(tmp_path), "--attack", "embedding", "--attack-tokens", "0"])
    assert evaluated.exit_code == 1 and "n_tokens must be a positive integer" in evaluated.output


def test_robust_erase_lowers_the_attack_success_rate(toy):
    """Same seeds, same attack: plain ESD-u "circle" falls to the embedding attack, robust ESD
    does not (full figures: benchmarks/robust_toy.py). One trajectory per 4 steps and 75 steps
    instead of the toy's 100 keep it quick (measured alone at one thread: plain 0% with its prompts,
    87.5% under the attack; robust, its inner attack from half-way (the default), 12.5% / 37.5%;
    from the start, 12.5% / 12.5%)."""
    from esd_sdk import erase

    prompts = [f"a {c} circle" for c in COLOURS]
    images = np.concatenate([generate(toy, p, n=4, seed=100_000, config=FAST) for p in prompts])
    assert _object_rate(images, "circle") >= 0.9
    latents = encode_images(toy.pipeline.vae, images)
    templates = [attack_template(p, ["circle", "disk"], "prefix") for p in prompts]
    rates = {}
    for robust in (False, True):
        edited = erase(toy, "circle", method="u", steps=75, regenerate_every=4, robust=robust, robust_every=4, robust_attack_steps=10,
                       progress=False).unet
        plain = _object_rate(generate(toy, prompts, n=4, seed=0, config=FAST, unet=edited), "circle")
        target = AttackTarget.from_pipeline(toy.pipeline, unet=edited)
        soft = embedding_attack(target, latents, [t for t in templates for _ in range(4)], steps=100,
                                generator=torch.Generator().manual_seed(0))
        rates[robust] = (plain, _object_rate(generate_soft(toy, soft, n=4, seed=0, config=FAST, unet=edited), "circle"))
    assert rates[False][0] <= 0.25 and rates[True][0] <= 0.25, rates  # both erase the plain prompts
    assert rates[False][1] >= 0.5, rates  # the attack brings the concept back from plain ESD...
    assert rates[True][1] <= rates[False][1] - 0.4, rates  # ...and far less from robust ESD
