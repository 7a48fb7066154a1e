"""benchmarks/robust_text_encoder.py: the text-encoder edit (AdvUnlearn's place for the edit) trains
the encoder through every term. An earlier version encoded the concept and the retained prompts with
`encode_prompts`, which runs under no_grad, so only the inner attack's term reached the encoder: the
measurement said "resists no better" of an edit that had never been asked to erase."""

from __future__ import annotations

import pytest
import torch

from esd_sdk import load_base
from esd_sdk.conditioning import encode_prompts


@pytest.fixture
def text_encoder_bench(benchmark_module):
    return benchmark_module("robust_text_encoder")


def test_encoding_with_grad_is_the_pipelines_encoding():
    base = load_base("toy")
    prompts = ["", "a red circle", "a striped blue square"]
    hidden = encode_prompts(base, prompts, grad=True).hidden
    assert not encode_prompts(base, prompts).hidden.requires_grad  # the default keeps no graph
    assert torch.equal(hidden.detach(), encode_prompts(base, prompts).hidden)
    hidden.square().sum().backward()
    grads = [p.grad for p in base.pipeline.text_encoder.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    base.pipeline.text_encoder.zero_grad(set_to_none=True)


@pytest.mark.parametrize("robust", [False, True])
def test_the_edit_moves_the_concept_and_the_retain_term_holds_the_rest(text_encoder_bench, robust):
    from toy_erasure import toy_base

    base = toy_base()
    before = {n: p.detach().clone() for n, p in base.pipeline.text_encoder.state_dict().items()}
    shift = {}
    for weight in (0.0, 10.0):
        edited, seconds, losses = text_encoder_bench.train_text_encoder(
            base, "circle", steps=4, lr=3e-3, robust=robust, retain_weight=weight, seed=0,
            templates=["{}", "a red {}"], robust_start=0.5)
        assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
        shift[weight] = {p: (encode_prompts(edited, [p]).hidden - encode_prompts(base, [p]).hidden).abs().mean().item()
                         for p in ("a red circle", "a red square", "")}
    # the caller's base is left as it was
    after = base.pipeline.text_encoder.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    # the concept's encoding moved (the ESD term reaches the encoder, plain or robust) ...
    assert shift[10.0]["a red circle"] > 1e-3
    # ... and the retain term holds a kept prompt and the empty prompt closer than no retain term does
    assert shift[10.0]["a red square"] < 0.5 * shift[0.0]["a red square"]
    assert shift[10.0][""] < 0.5 * shift[0.0][""]
    assert shift[10.0]["a red square"] < shift[10.0]["a red circle"]
