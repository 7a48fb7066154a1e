"""The ESD delta: only the tensors an erase changed (edited - base), exact in both directions.

    >>> delta = compute_delta(edited_tensors, base_tensors)
    >>> write_delta("esd_delta.safetensors", delta, base_hash=..., edited_hash=...)
    >>> edited = apply_delta(base_unet, "erased-circle")               # a new UNet; base_unet untouched
    >>> base = apply_delta(edited, "erased-circle", revert=True, inplace=True)

An fp32 difference is exact when the two values are within a factor of two (Sterbenz); for the
few elements where base + delta != edited or edited - delta != base (values near zero), their
flat indices and both exact values are stored beside the tensor as ``name::fix_index``,
``name::fix_base`` and ``name::fix_edited``. So base + delta reproduces the edited weights bit
for bit, and edited - delta the base. Deltas stack: apply one, then another made on that result.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import DeltaMismatchError, ModelNotFoundError
from .loading import weights_hash

DELTA_NAME = "esd_delta.safetensors"
FIX = "::fix_"  # sparse exact corrections stored beside a tensor's fp32 delta


def compute_delta(edited: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """edited - original (fp32) for every tensor that changed, with exact corrections."""
    delta = {}
    for name, base in original.items():
        new = edited[name].detach().cpu().float()
        base = base.float()
        if torch.equal(new, base):
            continue
        d = new - base
        delta[name] = d.contiguous()
        bad = ((base + d) != new) | ((new - d) != base)
        if bad.any():
            idx = bad.flatten().nonzero().flatten()
            delta[f"{name}{FIX}index"] = idx
            delta[f"{name}{FIX}base"] = base.flatten()[idx].contiguous()
            delta[f"{name}{FIX}edited"] = new.flatten()[idx].contiguous()
    return delta


def delta_names(delta: dict[str, torch.Tensor]) -> list[str]:
    """The parameter names a delta changes (without its correction entries)."""
    return [n for n in delta if FIX not in n]


def corrected_elements(delta: dict[str, torch.Tensor]) -> int:
    """How many elements needed an exact correction."""
    return sum(v.numel() for k, v in delta.items() if k.endswith(FIX + "index"))


def shifted(value: torch.Tensor, delta: dict[str, torch.Tensor], name: str, revert: bool = False) -> torch.Tensor:
    """value +/- the delta of ``name``, with the exact corrections applied (value in fp32)."""
    value = value.float()
    out = value - delta[name] if revert else value + delta[name]
    if f"{name}{FIX}index" in delta:
        flat = out.flatten()
        flat[delta[f"{name}{FIX}index"]] = delta[f"{name}{FIX}{'base' if revert else 'edited'}"]
        out = flat.view_as(value)
    return out


def write_delta(path: str | Path, delta: dict[str, torch.Tensor], **metadata: str) -> None:
    """Save a delta with its string metadata (base_hash, edited_hash, base_model, method, concepts)."""
    save_file(delta, str(path), metadata={"format": "esd-delta", **metadata})


def read_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a delta file (or of an erase output directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / DELTA_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"no delta at {path}: pass an erase output directory or its {DELTA_NAME}")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def apply_delta(unet: torch.nn.Module, delta_path: str | Path, *, revert: bool = False, check: bool = True,
                inplace: bool = False) -> torch.nn.Module:
    """Return ``unet`` with an erase's delta added (or, with ``revert``, removed).

    The caller's UNet is left as it was unless ``inplace=True`` (which saves a copy of the
    weights at SD scale). With ``check``, the UNet's weights hash must match the delta's recorded
    base (or edited) hash before, and the other one after.
    """
    delta, meta = read_delta(delta_path)
    before, after = ("edited_hash", "base_hash") if revert else ("base_hash", "edited_hash")
    if check and meta.get(before):
        have = weights_hash(unet)
        if have != meta[before]:
            what = "edited" if revert else "base"
            raise DeltaMismatchError(
                f"this UNet ({have[:19]}) is not the {what} model the delta expects ({meta[before][:19]}): "
                "load the right model, or pass check=False (--no-check) to force it")
    params = dict(unet.named_parameters())
    names = delta_names(delta)
    missing = [n for n in names if n not in params]
    if missing:
        raise DeltaMismatchError(f"the delta changes {missing[0]}, which this UNet does not have: wrong base model")
    for name in names:
        if params[name].shape != delta[name].shape:
            raise DeltaMismatchError(f"{name} has shape {tuple(params[name].shape)} here but "
                                     f"{tuple(delta[name].shape)} in the delta")
    if not inplace:
        unet = copy.deepcopy(unet)
        params = dict(unet.named_parameters())
    with torch.no_grad():
        for name in names:
            p = params[name]
            p.copy_(shifted(p.detach().cpu(), delta, name, revert).to(device=p.device, dtype=p.dtype))
    if check and meta.get(after) and weights_hash(unet) != meta[after]:
        raise DeltaMismatchError("applying the delta did not reproduce the recorded weights hash")
    return unet
