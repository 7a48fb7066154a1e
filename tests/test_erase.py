import json
import math

import pytest
import torch

from esd_sdk import load_base
from esd_sdk.config import EraseConfig
from esd_sdk.training import EraseInterrupted, NonFiniteLossError, _Trainer, erase, train
from esd_sdk.errors import ConfigError, OutputExistsError
from esd_sdk.artifact import MANIFEST_NAME, load_edited_unet, partial_dir
from esd_sdk.delta import DELTA_NAME, apply_delta
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
        torch.testing.assert_close(dict(state.unet.named_parameters())[name], ref_params[name], rtol=1e-4, atol=5e-6)


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
    result = erase(tiny_sd, out=out, config=EraseConfig(concepts=["circle"], method="x", preserve=["square"], **FAST), progress=False)
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
    erase(tiny_sd, out=out, config=EraseConfig(concepts=["circle"], method="u", **FAST), progress=False)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    unet = load_base(tiny_sd).unet
    base_params = _params(unet)
    applied = apply_delta(unet, out / DELTA_NAME)  # a new UNet; the caller's is left as it was
    assert applied is not unet and weights_hash(unet) == manifest["base_hash"]
    edited = _params(load_edited_unet(out))
    assert all(torch.equal(p, edited[n]) for n, p in applied.named_parameters())
    assert weights_hash(applied) == manifest["edited_hash"]
    reverted = apply_delta(applied, out, revert=True, inplace=True)  # asked for: edits it in place
    assert reverted is applied
    assert all(torch.equal(p, base_params[n]) for n, p in applied.named_parameters())


def test_delta_refuses_the_wrong_base(tiny_sd, tiny_sd_v, tmp_path):
    from esd_sdk.errors import DeltaMismatchError

    out = tmp_path / "edit"
    erase(tiny_sd, out=out, config=EraseConfig(concepts=["circle"], method="x", **FAST), progress=False)
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
        erase(tiny_sd, out=out, config=EraseConfig(**config), progress=False)
    assert not out.exists() and (partial_dir(out) / "checkpoint" / "state.json").exists()
    monkeypatch.undo()
    with pytest.raises(OutputExistsError, match="--resume"):
        erase(tiny_sd, out=out, config=EraseConfig(**config), progress=False)
    resumed = erase(tiny_sd, out=out, config=EraseConfig(**config), resume=True, progress=False)
    assert resumed.state.losses == straight.losses
    a, b = _params(straight.unet), _params(resumed.unet)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_step_callback_sees_each_steps_weights_and_loss(tiny_sd):
    config = dict(concepts=["circle"], method="x", steps=5, lr=1e-3, ddim_steps=6)
    seen, snapshot = [], {}

    def callback(end):
        seen.append((end.step, end.steps, end.loss))
        if end.step == 3:
            snapshot.update({n: p.detach().clone() for n, p in end.trained.items()})
            live = dict(end.unet.named_parameters())
            assert all(p is live[n] for n, p in end.trained.items())

    result = erase(tiny_sd, config=EraseConfig(**config), progress=False, callback_on_step_end=callback)
    assert seen == [(i + 1, 5, loss) for i, loss in enumerate(result.losses)]
    # with a constant lr, step 3 of 5 is where a 3-step erase ends
    three = _params(erase(tiny_sd, config=EraseConfig(**{**config, "steps": 3}), progress=False).unet)
    assert set(snapshot) == set(result.state.original) and all(torch.equal(snapshot[n], three[n]) for n in snapshot)
    assert not all(torch.equal(snapshot[n], p) for n, p in _params(result.unet).items() if n in snapshot)


def test_keyboard_interrupt_from_the_callback_stops_with_a_resumable_checkpoint(tiny_sd, tmp_path):
    config = dict(concepts=["circle"], method="x", steps=5, lr=1e-3, ddim_steps=6)
    straight = train(load_base(tiny_sd), EraseConfig(**config), progress=False)

    def stop_at_2(end):
        if end.step == 2:
            raise KeyboardInterrupt

    out = tmp_path / "edit"
    with pytest.raises(EraseInterrupted, match="step 2/5.*--resume"):
        erase(tiny_sd, out=out, config=EraseConfig(**config), progress=False, callback_on_step_end=stop_at_2)
    assert not out.exists()
    resumed = erase(tiny_sd, out=out, config=EraseConfig(**config), resume=True, progress=False)
    assert resumed.state.losses == straight.losses
    a, b = _params(straight.unet), _params(resumed.unet)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_resume_refuses_changed_settings(tiny_sd, tmp_path, monkeypatch):
    out = tmp_path / "edit"
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(EraseInterrupted):
        erase(tiny_sd, out=out, config=EraseConfig(concepts=["circle"], **FAST), progress=False)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="lr differ"):
        erase(tiny_sd, out=out, config=EraseConfig(concepts=["circle"], **{**FAST, "lr": 5e-4}), resume=True, progress=False)


def test_non_finite_loss_stops_with_a_clear_error(tiny_sd, tmp_path):
    out = tmp_path / "edit"
    with pytest.raises(NonFiniteLossError, match="lower --lr"):
        erase(tiny_sd, out=out, config=EraseConfig(concepts=["circle"], negative_guidance=1e38, **FAST), progress=False)
    assert not out.exists()


def test_existing_output_needs_overwrite(tiny_sd, tmp_path):
    out = tmp_path / "edit"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        erase(tiny_sd, out=out, config=EraseConfig(concepts=["circle"], **FAST), progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    erase(tiny_sd, out=out, config=EraseConfig(concepts=["circle"], **FAST), overwrite=True, progress=False)
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
    (dict(preserve_on="kept"), "preserve on must be one of concept, own, both"),
    (dict(lr_schedule="linear"), "lr schedule must be one of constant, cosine"),
    (dict(robust_objective="maximise"), "robust objective must be one of denoise, match"),
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
    trainer = _Trainer(base, base.unet, EraseConfig(concepts=["circle"], precision="bf16", **FAST), torch.device("cpu"), None)
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
    from esd_sdk import training as engine

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


def test_erase_leaves_the_callers_model_as_it_was(tiny_sd):
    base = load_base(tiny_sd)
    before, unet = weights_hash(base.unet), base.unet
    concepts = ["circle"]
    config = EraseConfig(concepts=concepts, method="x", **FAST)
    result = erase(base, config=config, progress=False)
    assert base.unet is unet and weights_hash(base.unet) == before  # base untouched
    assert result.unet is not base.unet and weights_hash(result.unet) != before
    assert concepts == ["circle"] and config.concepts is not concepts  # the caller's list is not aliased
    assert result.manifest is None and result.output_dir is None and result.config.steps == FAST["steps"]


def test_erase_inplace_trains_the_callers_unet(tiny_sd):
    base = load_base(tiny_sd)
    before = weights_hash(base.unet)
    result = erase(base, "circle", method="x", inplace=True, progress=False, **FAST)
    assert result.unet is base.unet and weights_hash(base.unet) != before


def test_for_model_takes_model_defaults_then_overrides():
    toy = EraseConfig.for_model("toy", "circle", method="u")
    assert (toy.steps, toy.lr, toy.ddim_steps, toy.batch_size) == (100, 2e-4, 10, 4)
    assert EraseConfig.for_model("toy", "striped", method="x").lr == 2e-3
    sd = EraseConfig.for_model("sd1", "van gogh")
    assert (sd.steps, sd.lr, sd.ddim_steps, sd.negative_guidance) == (1000, 1e-5, 50, 1.0)  # the paper's
    assert EraseConfig.for_model("toy", "circle", method="u", steps=7).steps == 7
    with pytest.raises(ConfigError, match="unknown erase setting 'step'"):
        EraseConfig.for_model("toy", "circle", step=7)


def test_erase_argument_errors(tiny_sd):
    with pytest.raises(ConfigError, match="nothing to erase"):
        erase(tiny_sd)
    with pytest.raises(ConfigError, match="either config= or concepts"):
        erase(tiny_sd, "circle", config=EraseConfig(concepts=["circle"]))


ROBUST = dict(robust=True, robust_tokens=2, robust_attack_steps=2, robust_every=2, robust_images=2, robust_start=0.0)


@pytest.mark.parametrize("model", ["tiny_sd", "tiny_sd_v", "tiny_sdxl"])
def test_robust_erase_trains_against_an_adversarial_prompt(model, request, monkeypatch):
    from esd_sdk import attack

    calls, batches = [], []
    original = attack.learn_tokens
    monkeypatch.setattr(attack, "learn_tokens",
                        lambda *a, **k: calls.append(k["init"]) or batches.append(k["batch_size"]) or original(*a, **k))
    base = load_base(request.getfixturevalue(model))
    before = weights_hash(base.unet)
    state = train(base, EraseConfig(concepts=["circle"], method="x", **FAST, **ROBUST, robust_batch=1), progress=False)
    assert len(calls) == 2  # refreshed at steps 0 and 2 of 4
    assert batches == [1, 1]  # robust_batch latents per inner step, of robust_images
    assert calls[0] == "circle" and not isinstance(calls[1], str)  # starts as the concept, then warm-starts
    assert all(math.isfinite(loss) for loss in state.losses)
    assert weights_hash(base.unet) == before and weights_hash(state.unet) != before


def test_robust_start_runs_the_inner_attack_only_from_that_fraction_of_the_steps(tiny_sd, monkeypatch):
    from esd_sdk import attack

    calls, trained = [], []
    original, predict = attack.learn_tokens, _Trainer._predict
    monkeypatch.setattr(attack, "learn_tokens", lambda *a, **k: calls.append(1) or original(*a, **k))

    def recording(self, x, t, cond, frozen):
        if not frozen and torch.is_grad_enabled():  # the edited model's pass that the loss trains
            trained.append(x.shape[0])
        return predict(self, x, t, cond, frozen)

    monkeypatch.setattr(_Trainer, "_predict", recording)
    config = EraseConfig(concepts=["circle"], method="x", **FAST, **{**ROBUST, "robust_every": 1, "robust_start": 0.5})
    state = train(load_base(tiny_sd), config, progress=False)
    assert len(calls) == 2  # steps 2 and 3 of 4; steps 0 and 1 are plain ESD
    assert trained == [1, 1, 2, 2]  # the adversarial prompt joins the trained batch at step 2
    assert len(state.losses) == 4 and all(math.isfinite(loss) for loss in state.losses)


@pytest.mark.parametrize("start", [-0.1, 1.0])
def test_robust_start_outside_0_1_is_a_one_line_error(start):
    with pytest.raises(ConfigError, match=r"robust start must be a fraction of the steps in \[0, 1\)"):
        EraseConfig(concepts=["circle"], robust=True, robust_start=start).validate()


def _straight_and_resumed(model, out, config: dict, monkeypatch, at: int = 3):
    """The same erase run straight through, and interrupted at step ``at`` then resumed."""
    straight = train(load_base(model), EraseConfig(**config), progress=False)
    _interrupt_at(monkeypatch, at)
    with pytest.raises(EraseInterrupted):
        erase(model, out=out, config=EraseConfig(**config), progress=False)
    monkeypatch.undo()
    return straight, erase(model, out=out, config=EraseConfig(**config), resume=True, progress=False)


def test_robust_resume_continues_exactly(tiny_sd, tmp_path, monkeypatch):
    """The checkpoint carries the adversarial prompt."""
    config = dict(concepts=["circle"], method="x", steps=5, lr=1e-3, ddim_steps=6, **ROBUST)
    straight, resumed = _straight_and_resumed(tiny_sd, tmp_path / "edit", config, monkeypatch)
    assert resumed.losses == straight.losses
    assert resumed.manifest["config"]["robust"] is True and resumed.manifest["config"]["robust_tokens"] == 2


@pytest.mark.parametrize("model", ["tiny_sd", "tiny_sdxl"])
def test_robust_match_attacks_each_steps_own_x_t(model, request, monkeypatch):
    """robust_objective="match" (AdvUnlearn): the inner attack gets the step's x_t, timestep and
    the frozen model's concept prediction there; no concept latents are sampled beforehand."""
    from esd_sdk import attack

    seen, original, sample = [], attack.match_attack, _Trainer._sample
    monkeypatch.setattr(attack, "learn_tokens", lambda *a, **k: pytest.fail("the denoise attack ran"))
    monkeypatch.setattr(attack, "match_attack", lambda target, x, t, goal, soft, **k: seen.append(
        (x.shape, goal.shape, soft.vectors[0].clone())) or original(target, x, t, goal, soft, **k))
    full = []
    monkeypatch.setattr(_Trainer, "_sample", lambda self, c, n, *a, **k: full.append(n) or sample(self, c, n, *a, **k))
    base = load_base(request.getfixturevalue(model))
    state = train(base, EraseConfig(concepts=["circle"], method="x", batch_size=2, **FAST, **ROBUST,
                                    robust_objective="match"), progress=False)
    assert len(seen) == 2 and all(x == g and x[0] == 2 for x, g, _ in seen)  # the step's batch of 2
    assert not torch.equal(seen[0][2], seen[1][2])  # the second refresh warm-starts from the first's result
    assert len(full) == FAST["steps"]  # one partial trajectory a step, none for attack latents
    assert all(math.isfinite(loss) for loss in state.losses)


def test_robust_match_resumes_exactly(tiny_sd, tmp_path, monkeypatch):
    config = dict(concepts=["circle"], method="x", steps=5, lr=1e-3, ddim_steps=6, **ROBUST, robust_objective="match")
    straight, resumed = _straight_and_resumed(tiny_sd, tmp_path / "edit", config, monkeypatch)
    assert resumed.losses == straight.losses
    assert resumed.manifest["config"]["robust_objective"] == "match"


def test_robust_templates_learn_one_word_in_each(tiny_sd, monkeypatch):
    """Several templates: one adversarial word shared by all, learned on robust_images latents of
    each; every trajectory of a step is held with one of them in turn; the plain ESD steps before
    robust_start are the one-template erase's own."""
    from esd_sdk import attack

    calls, conds, original, predict = [], [], attack.learn_tokens, _Trainer._predict
    monkeypatch.setattr(attack, "learn_tokens", lambda target, latents, prompts, **k: calls.append(
        (latents.shape[0], list(prompts), k["shared"])) or original(target, latents, prompts, **k))

    def recording(self, x, t, cond, frozen):
        if not frozen and torch.is_grad_enabled():
            conds.append(cond.hidden.detach().clone())
        return predict(self, x, t, cond, frozen)

    monkeypatch.setattr(_Trainer, "_predict", recording)
    templates = ["a photo of {}", "a painting of {}"]
    settings = dict(concepts=["circle"], method="x", batch_size=2, **FAST, **{**ROBUST, "robust_start": 0.5})
    state = train(load_base(tiny_sd), EraseConfig(**settings, robust_templates=templates), progress=False)
    assert calls[0] == (4, [templates[0]] * 2 + [templates[1]] * 2, True)
    adversarial = conds[-1][2:]  # [concept x2, adversarial x2] at the last step
    assert not torch.equal(adversarial[0], adversarial[1])  # one row in each template
    conds.clear()
    train(load_base(tiny_sd), EraseConfig(**{**settings, "batch_size": 1}, robust_templates=templates), progress=False)
    assert not torch.equal(conds[-2][1], conds[-1][1])  # one trajectory a step: the templates take turns
    monkeypatch.undo()
    one = train(load_base(tiny_sd), EraseConfig(**settings), progress=False)
    assert state.losses[:2] == one.losses[:2] and state.losses[2:] != one.losses[2:]


def test_robust_templates_resume_exactly(tiny_sd, tmp_path, monkeypatch):
    config = dict(concepts=["circle"], method="x", steps=5, lr=1e-3, ddim_steps=6, **ROBUST,
                  robust_templates=["a photo of {}", "{} in a painting"])
    straight, resumed = _straight_and_resumed(tiny_sd, tmp_path / "edit", config, monkeypatch)
    assert resumed.losses == straight.losses
    assert resumed.manifest["config"]["robust_templates"] == ["a photo of {}", "{} in a painting"]


@pytest.mark.parametrize("templates, message", [
    (["a photo of"], r"robust template 'a photo of' needs exactly one \{\}"),
    (["{} and {}"], r"robust template '\{\} and \{\}' needs exactly one \{\}"),
    ([], r"no robust template given: pass at least one"),
])
def test_bad_robust_templates_are_one_line_errors(templates, message):
    with pytest.raises(ConfigError, match=message):
        EraseConfig(concepts=["circle"], robust=True, robust_templates=templates).validate()


def test_the_match_objective_takes_one_template():
    with pytest.raises(ConfigError, match="the match objective attacks one template"):
        EraseConfig(concepts=["circle"], robust=True, robust_objective="match",
                    robust_templates=["a {}", "the {}"]).validate()


def test_robust_pool_replays_past_adversarial_words(tiny_sd, monkeypatch):
    """robust_pool: every robust_pool_every robust steps the adversarial word joins a pool of the last
    robust_pool; from then on each step also holds one pooled word (in turn), an extra prompt in the
    trained batch, encoded as it was when it joined."""
    conds = _edited_conditionings(monkeypatch)
    config = EraseConfig(concepts=["circle"], method="x", **{**FAST, "steps": 7},
                         **{**ROBUST, "robust_every": 1}, robust_pool=2, robust_pool_every=2)
    state = train(load_base(tiny_sd), config, progress=False)
    assert [c.shape[0] for c in conds] == [2, 2, 2, 3, 3, 3, 3]  # concept + adversarial; + a pooled word from step 3
    # the word refreshed at step 1 joins the pool at step 2 (after that step's replay) and is replayed from
    # step 3; step 3's joins at step 4; then the two take turns (step s replays member s mod 2)
    assert torch.equal(conds[3][2], conds[1][1]) and torch.equal(conds[4][2], conds[1][1])
    assert torch.equal(conds[5][2], conds[3][1]) and torch.equal(conds[6][2], conds[1][1])
    assert not torch.equal(conds[3][2], conds[3][1])  # a past word, not the current one
    monkeypatch.undo()
    plain = train(load_base(tiny_sd), EraseConfig(concepts=["circle"], method="x", **{**FAST, "steps": 7},
                                                  **{**ROBUST, "robust_every": 1}), progress=False)
    assert state.losses[:3] == plain.losses[:3] and state.losses[3:] != plain.losses[3:]


def test_robust_pool_resumes_exactly(tiny_sd, tmp_path, monkeypatch):
    """The checkpoint carries the pool."""
    config = dict(concepts=["circle"], method="x", steps=6, lr=1e-3, ddim_steps=6,
                  **{**ROBUST, "robust_every": 1}, robust_pool=2, robust_pool_every=1)
    straight, resumed = _straight_and_resumed(tiny_sd, tmp_path / "edit", config, monkeypatch, at=4)
    assert resumed.losses == straight.losses
    assert resumed.manifest["config"]["robust_pool"] == 2


def test_negative_robust_pool_is_a_one_line_error():
    with pytest.raises(ConfigError, match="robust pool must be >= 0"):
        EraseConfig(concepts=["circle"], robust=True, robust_pool=-1).validate()


@pytest.mark.parametrize("setting", ["robust_tokens", "robust_attack_steps", "robust_every", "robust_images", "robust_batch",
                                     "robust_pool_every"])
def test_bad_robust_budgets_are_one_line_errors(setting):
    with pytest.raises(ConfigError, match=f"{setting.replace('_', ' ')} must be positive, got 0"):
        EraseConfig(concepts=["circle"], robust=True, **{setting: 0}).validate()


def _edited_conditionings(monkeypatch) -> list[torch.Tensor]:
    """Record the conditioning of every edited-model prediction made with autograd (the loss terms)."""
    conds, predict = [], _Trainer._predict

    def recording(self, x, t, cond, frozen):
        if not frozen and torch.is_grad_enabled():
            conds.append(cond.hidden.detach().clone())
        return predict(self, x, t, cond, frozen)

    monkeypatch.setattr(_Trainer, "_predict", recording)
    return conds


def _sampled_conditionings(monkeypatch) -> list[torch.Tensor]:
    """Record the conditioning every trajectory (or inner-attack latent) is sampled with."""
    sampled, sample = [], _Trainer._sample
    monkeypatch.setattr(_Trainer, "_sample", lambda self, prompt, *a, **k: sampled.append(prompt.hidden.clone())
                        or sample(self, prompt, *a, **k))
    return sampled


def _assert_templates_matter(base, settings: dict, key: str, templated) -> None:
    """``key`` = ["{}"] erases exactly as without it; the templates given (``templated``) erase otherwise."""
    as_given = train(base, EraseConfig(**settings, batch_size=2), progress=False)
    assert train(base, EraseConfig(**settings, batch_size=2, **{key: ["{}"]}), progress=False).losses == as_given.losses
    assert templated.losses != as_given.losses


def test_preserve_templates_hold_each_kept_prompt_in_turn(tiny_sd, monkeypatch):
    """Each preserved prompt is held in the preserve templates, row i of step s in template (s * b + i) mod T
    (so in turn at batch size 1 too); the templates change the erase; ["{}"] is the prompts as given."""
    from esd_sdk.conditioning import encode_prompts

    base = load_base(tiny_sd)
    templates = ["a photo of {}", "a painting of {}"]
    encoded = encode_prompts(base, [t.format(p) for p in ("square", "triangle") for t in templates]).hidden
    settings = dict(concepts=["circle"], method="x", preserve=["square", "triangle"], **FAST)
    conds = _edited_conditionings(monkeypatch)
    templated = train(base, EraseConfig(**settings, batch_size=2, preserve_templates=templates), progress=False)
    assert len(conds) == FAST["steps"] and all(c.shape[0] == 6 for c in conds)  # [circle x2, square x2, triangle x2]
    for c in conds:
        assert torch.equal(c[2:], encoded)  # rows 0 and 1 in templates 0 and 1, for each kept prompt
    conds.clear()
    train(base, EraseConfig(**settings, batch_size=1, preserve_templates=templates), progress=False)
    assert [torch.equal(c[1], encoded[s % 2]) and torch.equal(c[2], encoded[2 + s % 2]) for s, c in enumerate(conds)] \
        == [True] * FAST["steps"]
    monkeypatch.undo()
    _assert_templates_matter(base, settings, "preserve_templates", templated)


def test_preserve_templates_on_own_trajectories_resume_exactly(tiny_sd, tmp_path, monkeypatch):
    """preserve_on both with templates: step s makes and holds each kept prompt's own trajectory in
    template s mod T (kept trajectories reused across steps, so the checkpoint must carry each)."""
    from esd_sdk.conditioning import encode_prompts

    config = dict(concepts=["circle"], method="x", steps=5, lr=1e-3, ddim_steps=6, preserve=["square"],
                  preserve_on="both", regenerate_every=3, preserve_templates=["a photo of {}", "{} in a painting"])

    sampled = _sampled_conditionings(monkeypatch)
    train(load_base(tiny_sd), EraseConfig(**{**config, "steps": 2, "regenerate_every": 1}), progress=False)
    monkeypatch.undo()
    kept = encode_prompts(load_base(tiny_sd), ["a photo of square", "square in a painting"]).hidden
    assert [[torch.equal(h[0], k) for k in kept] for h in sampled[1::2]] == [[True, False], [False, True]]  # step 0, 1
    straight, resumed = _straight_and_resumed(tiny_sd, tmp_path / "edit", config, monkeypatch)
    assert resumed.losses == straight.losses
    assert resumed.manifest["config"]["preserve_templates"] == ["a photo of {}", "{} in a painting"]
    card = (tmp_path / "edit" / "README.md").read_text()
    assert "| preserved prompts held in | `a photo of {}`, `{} in a painting` |" in card
    assert "erased in" not in card and "robust" not in card


@pytest.mark.parametrize("model", ["tiny_sd", "tiny_sdxl"])
def test_concept_templates_erase_the_concept_in_each_in_turn(model, request, monkeypatch):
    """Each row of a step is sampled, and its concept held, in concept template (s * b + i) mod T
    on SD and SDXL; ["{}"] is the paper's erase of the concept as given."""
    from esd_sdk.conditioning import encode_prompts

    base = load_base(request.getfixturevalue(model))
    templates = ["a photo of {}", "a painting of {}"]
    encoded = encode_prompts(base, [t.format("circle") for t in templates]).hidden
    settings = dict(concepts=["circle"], method="x", **FAST)
    conds, sampled = _edited_conditionings(monkeypatch), _sampled_conditionings(monkeypatch)
    templated = train(base, EraseConfig(**settings, batch_size=2, concept_templates=templates), progress=False)
    assert len(conds) == len(sampled) == FAST["steps"]
    assert all(torch.equal(c, encoded) for c in conds) and all(torch.equal(h, encoded) for h in sampled)
    conds.clear(), sampled.clear()
    train(base, EraseConfig(**settings, batch_size=1, concept_templates=templates), progress=False)
    assert [torch.equal(c[0], encoded[s % 2]) and torch.equal(h[0], encoded[s % 2])
            for s, (c, h) in enumerate(zip(conds, sampled))] == [True] * FAST["steps"]
    monkeypatch.undo()
    _assert_templates_matter(base, settings, "concept_templates", templated)


def test_concept_templates_with_reused_trajectories_resume_exactly(tiny_sd, tmp_path, monkeypatch):
    """Trajectories kept for several steps are kept per template (batch size 1: one template a step)."""
    from esd_sdk.conditioning import encode_prompts

    config = dict(concepts=["circle"], method="x", steps=5, lr=1e-3, ddim_steps=6, batch_size=1, regenerate_every=3,
                  concept_templates=["a photo of {}", "{} in a painting"], **ROBUST)
    sampled = _sampled_conditionings(monkeypatch)
    train(load_base(tiny_sd), EraseConfig(**{**config, "steps": 3, "robust": False}), progress=False)
    monkeypatch.undo()
    encoded = encode_prompts(load_base(tiny_sd), ["a photo of circle", "circle in a painting"]).hidden
    # steps 0 and 1 make a trajectory in their template; step 2 reuses step 0's (its own template's)
    assert [[torch.equal(h[0], e) for e in encoded] for h in sampled] == [[True, False], [False, True]]
    straight, resumed = _straight_and_resumed(tiny_sd, tmp_path / "edit", config, monkeypatch)
    assert resumed.losses == straight.losses
    assert resumed.manifest["config"]["concept_templates"] == ["a photo of {}", "{} in a painting"]
    card = (tmp_path / "edit" / "README.md").read_text()  # the model card names the contexts and the inner attack
    assert "| concept erased in | `a photo of {}`, `{} in a painting` |" in card and "held in" not in card
    assert "| robust (adversarial ESD) | 2 inner attack steps every 2 from 0 of the steps, 2 tokens learned in `{}` |" in card


@pytest.mark.parametrize("settings, message", [
    (dict(preserve=["square"], preserve_templates=["a photo of"]),
     r"preserve template 'a photo of' needs exactly one \{\} where the preserved prompt goes"),
    (dict(preserve=["square"], preserve_templates=[]), r"no preserve template given: pass at least one"),
    (dict(preserve_templates=["a photo of {}"]), r"preserve templates given but nothing is preserved: pass --preserve"),
    (dict(concept_templates=["{} and {}"]), r"concept template '\{\} and \{\}' needs exactly one \{\} where the concept goes"),
    (dict(concept_templates=[]), r"no concept template given"),
])
def test_bad_concept_and_preserve_templates_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        EraseConfig(concepts=["circle"], **settings).validate()


def _sampled_prompts(monkeypatch):
    """Record which prompt (0: the concept, 1: the preserved one) each x_t trajectory is sampled with."""
    seen = []
    original = _Trainer._sample

    def sample(self, prompt, *a, **k):
        candidates = [self.concepts.index([0]).hidden, self.preserve.index([0]).hidden]
        seen.append(next(i for i, c in enumerate(candidates) if torch.equal(c, prompt.hidden)))
        return original(self, prompt, *a, **k)

    monkeypatch.setattr(_Trainer, "_sample", sample)
    return seen


@pytest.mark.parametrize("preserve_on, sampled", [("concept", {0}), ("own", {0, 1})])
def test_preserve_on_own_samples_the_kept_prompts_trajectory(tiny_sd, monkeypatch, preserve_on, sampled):
    """own holds a preserved prompt on x_t of its own trajectory, sampled with that prompt;
    concept holds it on the erased concept's x_t only."""
    config = dict(concepts=["circle"], method="x", steps=6, lr=1e-3, ddim_steps=6)
    seen = _sampled_prompts(monkeypatch)
    state = train(load_base(tiny_sd), EraseConfig(**config, preserve=["square"], preserve_on=preserve_on), progress=False)
    assert set(seen) == sampled and seen.count(0) == 6
    assert all(math.isfinite(loss) for loss in state.losses)


def test_preserve_on_own_holds_the_kept_prompt_where_its_images_are_made(tiny_sd):
    """Measured on the kept prompt's own trajectories (fresh seeds): its predictions drift from the
    frozen model's less with --preserve-on own than with no preservation at all."""
    config = dict(concepts=["circle"], method="x", steps=8, lr=3e-2, ddim_steps=6, batch_size=2)

    base = load_base(tiny_sd)
    probe = _Trainer(base, base.unet, EraseConfig(concepts=["square"], method="x", ddim_steps=6, batch_size=4, seed=7),
                     torch.device("cpu"), None)
    points = []  # the kept prompt's own x_t (frozen model, fresh seeds) and the frozen prediction there
    for t_enc in (1, 3, 5):
        x = probe._sample(probe.concepts.index([0]), t_enc, frozen=True)
        t, cond = probe.scheduler.timesteps[t_enc], probe.concepts.index([0] * x.shape[0])
        with torch.no_grad():
            points.append((x, t, cond, probe._predict(x, t, cond, frozen=True)))

    def drift(state):
        edited = {n: p for n, p in state.unet.named_parameters() if n in probe.trained}
        with torch.no_grad():
            return sum(torch.nn.functional.mse_loss(
                torch.func.functional_call(probe.unet, edited, (x, t), cond.kwargs()).sample, goal).item()
                for x, t, cond, goal in points)

    free = drift(train(load_base(tiny_sd), EraseConfig(**config), progress=False))
    held = drift(train(load_base(tiny_sd), EraseConfig(**config, preserve=["square"], preserve_on="own", preserve_weight=4.0),
                       progress=False))
    assert free > 0 and held < 0.8 * free


def test_preserve_on_both_resumes_exactly(tiny_sd, tmp_path, monkeypatch):
    """The preserved prompts' reused trajectories are part of the checkpoint."""
    config = dict(concepts=["circle"], method="x", steps=6, lr=1e-3, ddim_steps=6, regenerate_every=4,
                  preserve=["square"], preserve_on="both")
    straight, resumed = _straight_and_resumed(tiny_sd, tmp_path / "edit", config, monkeypatch)
    assert resumed.losses == straight.losses
    a, b = _params(straight.unet), _params(resumed.unet)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_cosine_schedule_decays_the_step_and_resumes_exactly(tiny_sd, tmp_path, monkeypatch):
    """Each Adam step uses lr * (1 + cos(pi * step / steps)) / 2, read back from the optimiser as
    it steps; an interrupted run picks the schedule up where it stopped."""
    config = dict(concepts=["circle"], method="x", steps=6, lr=1e-3, ddim_steps=6, lr_schedule="cosine")
    used = []
    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    constant = train(load_base(tiny_sd), EraseConfig(**{**config, "lr_schedule": "constant"}), progress=False)
    assert used == [1e-3] * 6
    used.clear()
    cosine = train(load_base(tiny_sd), EraseConfig(**config), progress=False)
    assert used == pytest.approx([1e-3 * (1 + math.cos(math.pi * s / 6)) / 2 for s in range(6)])
    assert used[0] == 1e-3 and used[-1] < 0.1 * 1e-3
    assert constant.losses[0] == cosine.losses[0] and constant.losses[1:] != cosine.losses[1:]
    monkeypatch.undo()
    straight, resumed = _straight_and_resumed(tiny_sd, tmp_path / "edit", config, monkeypatch)
    assert resumed.losses == straight.losses
    assert resumed.manifest["config"]["lr_schedule"] == "cosine"
