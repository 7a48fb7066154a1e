"""Which UNet tensors an erase trains.

Selection works on modules (Linear and Conv2d layers, by their diffusers names) and trains
their weight and bias; normalisation layers and embeddings are never selected, except by a
user regex that names them. The methods of the paper:

    x         cross-attention (``attn2``) layers: prompt-specific, for styles (ESD-x)
    x-strict  only ``attn2.to_k`` and ``attn2.to_v``: the text-facing projections
    u         every layer except cross-attention, the time/added embeddings and ``conv_out``:
              global, for objects and nudity (ESD-u, upstream's "noxattn")
    self      self-attention (``attn1``) layers
    all       every Linear and Conv2d layer
    re:REGEX  any module (or parameter-holding module) whose name matches REGEX (re.search)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .errors import ConfigError

METHODS = ("x", "x-strict", "u", "self", "all")
_EXCLUDED_FROM_U = re.compile(r"(^|\.)attn2\.|^time_embedding\.|^add_embedding\.|^conv_out$|^class_embedding\.")


@dataclass
class Selection:
    """The trained tensors of one erase."""

    method: str
    modules: list[str]  # module names, in model order
    tensors: list[str]  # parameter names (module.weight, module.bias), in model order
    num_params: int
    total_params: int

    def summary(self) -> str:
        return (f"method '{self.method}': {len(self.modules)} layers, {len(self.tensors)} tensors, "
                f"{self.num_params:,} of {self.total_params:,} UNet parameters "
                f"({100 * self.num_params / self.total_params:.2f}%)")


def _matcher(method: str):
    if method == "x":
        return lambda name: ".attn2." in f".{name}."
    if method == "x-strict":
        return lambda name: re.search(r"(^|\.)attn2\.to_[kv]$", name) is not None
    if method == "self":
        return lambda name: ".attn1." in f".{name}."
    if method == "u":
        return lambda name: _EXCLUDED_FROM_U.search(name) is None
    if method == "all":
        return lambda name: True
    if not method.startswith("re:"):
        raise ConfigError(f"unknown method '{method}': choose one of {', '.join(METHODS)}, or re:REGEX for your own selection")
    try:
        pattern = re.compile(method[3:])
    except re.error as e:
        raise ConfigError(f"method '{method}' is not a valid regex ({e}): fix the pattern after 're:'") from e
    return lambda name: pattern.search(name) is not None


def check_method(method: str) -> None:
    """Raise ConfigError for a method that is unknown or an invalid regex (before any model loads)."""
    if not method or not method.strip():
        raise ConfigError(f"method must be one of {', '.join(METHODS)} or re:REGEX, got an empty string")
    _matcher(method)


def select_parameters(unet: nn.Module, method: str) -> Selection:
    """Select the tensors that ``method`` trains. Raises ConfigError if it selects nothing."""
    check_method(method)
    match = _matcher(method)
    is_regex = method not in METHODS
    modules, tensors, count = [], [], 0
    for name, module in unet.named_modules():
        layer = isinstance(module, (nn.Linear, nn.Conv2d))
        if not (layer or (is_regex and name)) or not match(name):
            continue
        own = [(f"{name}.{p_name}", p) for p_name, p in module.named_parameters(recurse=False)]
        if not own:
            continue
        modules.append(name)
        for p_name, p in own:
            tensors.append(p_name)
            count += p.numel()
    if not tensors:
        hint = "compare it with the names `esd-sdk erase --dry-run --method all` lists" if is_regex else "the model has no such layers"
        raise ConfigError(f"method '{method}' selects no UNet tensors: {hint}")
    total = sum(p.numel() for p in unet.parameters())
    return Selection(method=method, modules=modules, tensors=tensors, num_params=count, total_params=total)
