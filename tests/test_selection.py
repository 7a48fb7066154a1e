import pytest
import torch

from esd_sdk import load_base
from esd_sdk.errors import ConfigError
from esd_sdk.selection import select_parameters


@pytest.fixture(scope="module")
def unet(tiny_sd):
    return load_base(tiny_sd).unet


def test_x_is_cross_attention_only(unet):
    s = select_parameters(unet, "x")
    assert s.tensors and all(".attn2." in n for n in s.tensors)
    assert any(n.endswith("attn2.to_q.weight") for n in s.tensors)
    assert any(n.endswith("attn2.to_out.0.bias") for n in s.tensors)


def test_x_strict_is_keys_and_values(unet):
    s = select_parameters(unet, "x-strict")
    assert s.tensors and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in s.tensors)


def test_u_excludes_cross_attention_time_embedding_and_conv_out(unet):
    s = select_parameters(unet, "u")
    assert not any(".attn2." in n or n.startswith(("time_embedding.", "conv_out.")) for n in s.tensors)
    assert any(".attn1." in n for n in s.tensors) and any("resnets" in n for n in s.tensors)
    x = set(select_parameters(unet, "x").tensors)
    assert not x & set(s.tensors)


def test_self_and_all(unet):
    assert all(".attn1." in n for n in select_parameters(unet, "self").tensors)
    everything = select_parameters(unet, "all")
    modules = dict(unet.named_modules())
    kinds = {type(modules[m]) for m in everything.modules}
    assert kinds == {torch.nn.Linear, torch.nn.Conv2d}  # norms and embeddings are never selected by a method
    linear_or_conv = [m for m in modules.values() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(everything.modules) == len(linear_or_conv)


def test_regex_selects_named_modules(unet):
    s = select_parameters(unet, r"re:attn2\.to_v$")
    assert s.tensors and all(n.endswith("attn2.to_v.weight") for n in s.tensors)


@pytest.mark.parametrize("method, message", [
    ("z", "unknown method 'z'"),
    ("", "empty"),
    ("re:does_not_exist", "selects no UNet tensors"),
    ("re:(", "not a valid regex"),
])
def test_bad_methods(unet, method, message):
    with pytest.raises(ConfigError, match=message):
        select_parameters(unet, method)
