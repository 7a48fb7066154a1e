"""An erase's delta as a LoRA: what diffusers' ``pipe.load_lora_weights(DIR)`` loads, and what
ComfyUI / A1111 load from the kohya-format copy beside it.

    >>> esd_sdk.export("erased-circle", format="lora", rank=8)       # -> erased-circle-lora/
    >>> pipe = StableDiffusionPipeline.from_pretrained(base)
    >>> pipe.load_lora_weights("erased-circle-lora")                   # the edit, approximately

Each changed weight's delta ΔW (a Linear's (out, in), a Conv2d's (out, in, kh, kw) seen as
(out, in*kh*kw)) is factored by its SVD, ΔW ≈ B A with B = U_r √S_r and A = √S_r V_rᵀ. The
rank r is fixed (``rank``) or, per tensor, the smallest keeping ``energy`` of Σ S² (default
0.99). Convolutions become peft's conv LoRA (A: a conv with the layer's kernel, B: a 1x1 conv),
which diffusers loads. What a LoRA cannot carry is left out and reported: changed biases and
norm weights (GroupNorm / LayerNorm), and anything else that is not a Linear or Conv2d weight.
(peft's ``lora_bias`` could carry biases, but it gives every LoRA'd layer a bias, and then
``fuse_lora`` fails on the layers that have none, such as attention's to_q/to_k/to_v.)

Layout of OUT/:
    pytorch_lora_weights.safetensors   diffusers/peft keys (``unet.<module>.lora_A.weight`` ...), with
                                       the LoraConfig (ranks, alpha = rank, so scale 1) in its metadata
    esd_lora_kohya.safetensors         kohya keys (``lora_unet_<module>.lora_down.weight``, ``.alpha``),
                                       without the biases (not part of that format)
    esd_lora.json                      per-tensor rank, kept energy and what was left out
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..artifact import load_manifest
from ..delta import delta_names, read_delta
from ..errors import ConfigError
from ..files import atomic_dir, check_output

logger = logging.getLogger(__name__)

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
KOHYA_NAME = "esd_lora_kohya.safetensors"
REPORT_NAME = "esd_lora.json"
DEFAULT_ENERGY = 0.99


@dataclass
class LoraExport:
    """What `export_lora` returns; also saved as esd_lora.json."""

    directory: Path
    rank: int | None  # the fixed rank, or None when chosen per tensor by energy
    energy: float | None
    ranks: dict[str, int]  # module -> rank
    kept_energy: dict[str, float]  # module -> share of its delta's Σ S² the factors keep
    relative_error: float  # ||ΔW - BA|| / ||ΔW|| over all carried weights
    carried_elements: int  # delta elements the LoRA carries (the Linear and Conv2d weights)
    dropped: dict[str, int] = field(default_factory=dict)  # tensor -> elements a LoRA cannot carry
    lora_elements: int = 0  # numbers stored in the LoRA factors

    @property
    def carried_share(self) -> float:
        """Share of the delta's changed elements in tensors the LoRA carries."""
        total = self.carried_elements + sum(self.dropped.values())
        return self.carried_elements / total if total else 1.0

    def describe(self) -> str:
        ranks = sorted(self.ranks.values())
        left = (f"; left out {len(self.dropped)} tensors a LoRA cannot carry ({100 * (1 - self.carried_share):.2f}% "
                "of the changed elements: biases, norms)") if self.dropped else ""
        return (f"wrote {self.directory / WEIGHT_NAME} ({len(self.ranks)} layers, rank {ranks[0]}-{ranks[-1]}, "
                f"relative error {self.relative_error:.2g}){left}; load it with pipe.load_lora_weights")


def choose_rank(singular_values: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """``rank`` (capped at the full rank), or the smallest rank whose Σ S² share reaches ``energy``."""
    if rank is not None:
        return max(1, min(rank, singular_values.numel()))
    power = singular_values.double() ** 2
    share = power.cumsum(0) / power.sum().clamp_min(1e-300)
    return int(torch.searchsorted(share, torch.tensor([energy], dtype=share.dtype)).clamp_max(share.numel() - 1)) + 1


def factorize(delta: torch.Tensor, rank: int | None, energy: float | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """LoRA factors (A, B) of a Linear's or Conv2d's weight delta, in peft's shapes, and the
    share of Σ S² they keep."""
    out_features = delta.shape[0]
    u, s, vh = torch.linalg.svd(delta.double().reshape(out_features, -1), full_matrices=False)
    r = choose_rank(s, rank, energy)
    root = s[:r].sqrt()
    b = (u[:, :r] * root).float()  # (out, r)
    a = (root[:, None] * vh[:r]).float()  # (r, in * kh * kw)
    kept = float((s[:r] ** 2).sum() / (s**2).sum().clamp_min(1e-300))
    if delta.dim() == 4:  # conv LoRA: A has the layer's kernel, B is 1x1
        return a.reshape(r, *delta.shape[1:]).contiguous(), b[:, :, None, None].contiguous(), kept
    return a.contiguous(), b.contiguous(), kept


def _kohya_name(module: str) -> str:
    return "lora_unet_" + module.replace(".", "_")


def export_lora(source: str | Path, out: str | Path, *, rank: int | None = None, energy: float | None = None,
                overwrite: bool = False) -> LoraExport:
    """Write the delta of the erase output ``source`` as a LoRA to ``out`` (atomically)."""
    if rank is not None and energy is not None:
        raise ConfigError("pass --rank or --rank-energy, not both")
    if rank is not None and rank < 1:
        raise ConfigError(f"--rank must be >= 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise ConfigError(f"--rank-energy must be in (0, 1], got {energy}")
    energy = DEFAULT_ENERGY if rank is None and energy is None else energy
    out = check_output(out, overwrite)
    source = Path(source)
    manifest = load_manifest(source)
    delta, _ = read_delta(source)
    names = set(delta_names(delta))
    weights = sorted(n for n in names if n.endswith(".weight") and delta[n].dim() in (2, 4))
    modules = [n.removesuffix(".weight") for n in weights]
    carried = set(weights)
    if not weights:
        raise ConfigError(f"{source}'s delta changes no Linear or Conv2d weight: there is nothing for a LoRA to carry")

    peft, kohya, ranks, kept = {}, {}, {}, {}
    err2 = norm2 = 0.0
    for module, name in zip(modules, weights):
        a, b, kept[module] = factorize(delta[name], rank, energy)
        ranks[module] = a.shape[0]
        approx = (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)).reshape(delta[name].shape)
        err2 += float(((delta[name] - approx) ** 2).sum())
        norm2 += float((delta[name] ** 2).sum())
        peft[f"{module}.lora_A.weight"], peft[f"{module}.lora_B.weight"] = a, b
        kohya[f"{_kohya_name(module)}.lora_down.weight"], kohya[f"{_kohya_name(module)}.lora_up.weight"] = a, b
        kohya[f"{_kohya_name(module)}.alpha"] = torch.tensor(float(ranks[module]))
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    # alpha = rank everywhere, so every layer's scale alpha / r is 1: B A is the delta itself.
    config = {"r": common, "lora_alpha": common, "target_modules": modules,
              "rank_pattern": {_exact(m): r for m, r in ranks.items() if r != common},
              "alpha_pattern": {_exact(m): r for m, r in ranks.items() if r != common}}
    result = LoraExport(
        directory=out, rank=rank, energy=energy, ranks=ranks, kept_energy=kept,
        relative_error=(err2 / norm2) ** 0.5 if norm2 else 0.0,
        carried_elements=sum(delta[n].numel() for n in carried),
        dropped={n: delta[n].numel() for n in sorted(names - carried)},
        lora_elements=sum(v.numel() for v in peft.values()))
    pipeline_class = "StableDiffusionXLPipeline" if manifest.get("base_family") == "sdxl" else "StableDiffusionPipeline"
    with atomic_dir(out, overwrite=overwrite) as tmp:
        import diffusers

        getattr(diffusers, pipeline_class).save_lora_weights(tmp, unet_lora_layers=peft,
                                                              unet_lora_adapter_metadata=config)
        save_file(kohya, str(tmp / KOHYA_NAME), metadata={"ss_network_module": "networks.lora",
                                                          "esd_base_model": manifest["base_model"]})
        data = {"format": "esd-sdk-lora", **asdict(result), "directory": str(out), "carried_share": result.carried_share,
                "base_model": manifest["base_model"], "concepts": manifest["concepts"], "method": manifest["method"]}
        (tmp / REPORT_NAME).write_text(json.dumps(data, indent=2) + "\n")
    logger.info("wrote LoRA %s (relative error %.3g)", out, result.relative_error)
    return result


def _exact(module: str) -> str:
    """A peft rank/alpha pattern for ``module`` (peft matches patterns against a name's dotted suffix;
    a full module path is the suffix of no other module's path)."""
    return re.escape(module)
