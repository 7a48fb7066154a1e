"""The API on a CUDA GPU (skipped without one): erase, robust erase and the attacks run on the
device while the caller's CPU model is left exactly as it was."""

import numpy as np
import pytest
import torch

from esd_sdk import erase, load_base, weights_hash
from esd_sdk.attack import AttackTarget, embedding_attack, inversion_attack

pytestmark = pytest.mark.gpu
FAST = dict(steps=3, lr=1e-3, ddim_steps=4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("robust", [False, True])
def test_erase_on_gpu_leaves_the_callers_cpu_model(tiny_sd, precision, robust):
    base = load_base(tiny_sd)
    before = weights_hash(base.unet)
    result = erase(base, "circle", method="x", device="cuda", precision=precision, robust=robust,
                   robust_attack_steps=2, robust_images=2, progress=False, **FAST)
    assert next(result.unet.parameters()).device.type == "cuda"
    assert next(base.unet.parameters()).device.type == "cpu" and weights_hash(base.unet) == before
    assert base.pipeline.text_encoder.device.type == "cpu"
    assert all(np.isfinite(result.losses)) and weights_hash(result.unet) != before


@pytest.mark.parametrize("attack", [inversion_attack, embedding_attack])
def test_attacks_learn_on_a_gpu_unet(tiny_sdxl, attack):
    base = load_base(tiny_sdxl)
    unet = load_base(tiny_sdxl).unet.to("cuda")
    target = AttackTarget.from_pipeline(base.pipeline, unet=unet)
    latents = torch.randn(2, unet.config.in_channels, 8, 8)
    losses = []
    soft = attack(target, latents, "a {}", n_tokens=2, steps=3, lr=1e-2, losses=losses)
    assert len(losses) == 3 and all(np.isfinite(losses))
    cond = soft.encode(target)
    assert cond.hidden.device.type == "cuda" and cond.added["text_embeds"].device.type == "cuda"
