"""Fold an erase into an artifact directory, and apply or revert its delta.

An erase output directory holds (written atomically: a hidden temp directory, then a rename):

    unet/                       standalone diffusers UNet (config.json + safetensors)
    esd_delta.safetensors       only the changed tensors, edited - base
    esd.json                    the manifest: base, concepts, method, hyper-parameters, versions
    README.md                   a model card in the Hugging Face convention

The delta is exact: base + delta reproduces the edited weights bit for bit, and edited - delta
the base (an fp32 difference plus a few sparse corrections where fp32 rounding would bite).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import EraseConfig
from .errors import DeltaMismatchError, ModelNotFoundError, OutputExistsError
from .loading import BaseModel, weights_hash

logger = logging.getLogger(__name__)

UNET_DIR = "unet"
DELTA_NAME = "esd_delta.safetensors"
MANIFEST_NAME = "esd.json"
CARD_NAME = "README.md"
FORMAT_VERSION = 1



@dataclass
class EraseResult:
    """What `esd_sdk.erase` returns."""

    output_dir: Path | None
    state: object  # esd_sdk.erase.EraseState
    config: EraseConfig
    manifest: dict | None

    @property
    def unet(self):
        return self.state.unet


def partial_dir(out: Path) -> Path:
    """Hidden work directory next to the output: checkpoints live here until the run finishes."""
    return out.parent / f".{out.name}.partial"


def prepare_output(out: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse an existing output unless overwriting; make sure we can write next to it."""
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists: pass --overwrite to replace it, or choose another --out")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputExistsError(f"cannot create the output's parent directory {parent} ({e.strerror}): choose another --out") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputExistsError(f"output directory {parent} is not writable: choose another --out")
    work = partial_dir(out)
    if work.exists() and not resume:
        if overwrite or not (work / "checkpoint" / "state.json").exists():
            shutil.rmtree(work)
        else:
            raise OutputExistsError(
                f"an unfinished run of {out} has a checkpoint in {work}: pass --resume to continue it, "
                "or --overwrite to start again")


FIX = "::fix_"  # sparse exact corrections stored beside a tensor's fp32 delta


def compute_delta(edited: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """edited - original (fp32) for every tensor that changed, exact in both directions.

    An fp32 difference is exact when the two values are within a factor of two (Sterbenz); for
    the few elements where base + delta != edited or edited - delta != base (values near zero),
    their flat indices and both exact values are stored as ``name::fix_index``,
    ``name::fix_base`` and ``name::fix_edited``.
    """
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


def shifted(value: torch.Tensor, delta: dict[str, torch.Tensor], name: str, revert: bool = False) -> torch.Tensor:
    """value +/- the delta of ``name``, with the exact corrections applied (value in fp32)."""
    value = value.float()
    out = value - delta[name] if revert else value + delta[name]
    if f"{name}{FIX}index" in delta:
        flat = out.flatten()
        flat[delta[f"{name}{FIX}index"]] = delta[f"{name}{FIX}{'base' if revert else 'edited'}"]
        out = flat.view_as(value)
    return out


def _apply(unet: torch.nn.Module, delta: dict[str, torch.Tensor], revert: bool) -> None:
    params = dict(unet.named_parameters())
    names = delta_names(delta)
    missing = [n for n in names if n not in params]
    if missing:
        raise DeltaMismatchError(f"the delta changes {missing[0]}, which this UNet does not have: wrong base model")
    with torch.no_grad():
        for name in names:
            p = params[name]
            if p.shape != delta[name].shape:
                raise DeltaMismatchError(f"{name} has shape {tuple(p.shape)} here but {tuple(delta[name].shape)} in the delta")
            p.copy_(shifted(p.detach().cpu(), delta, name, revert).to(device=p.device, dtype=p.dtype))


def read_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a delta file (or of an erase output directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / DELTA_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"no delta at {path}: pass an erase output directory or its {DELTA_NAME}")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def apply_delta(unet: torch.nn.Module, delta_path: str | Path, *, revert: bool = False, check: bool = True) -> torch.nn.Module:
    """Apply an erase's delta to a base UNet in place (or, with ``revert``, remove it from an
    edited one). With ``check``, the UNet's weights hash must match the delta's recorded base
    (or edited) hash before, and the other one after."""
    delta, meta = read_delta(delta_path)
    before, after = ("edited_hash", "base_hash") if revert else ("base_hash", "edited_hash")
    if check and meta.get(before):
        have = weights_hash(unet)
        if have != meta[before]:
            what = "edited" if revert else "base"
            raise DeltaMismatchError(
                f"this UNet ({have[:19]}) is not the {what} model the delta expects ({meta[before][:19]}): "
                "load the right model, or pass check=False (--no-check) to force it")
    _apply(unet, delta, revert)
    if check and meta.get(after) and weights_hash(unet) != meta[after]:
        raise DeltaMismatchError("applying the delta did not reproduce the recorded weights hash")
    return unet


def package_versions(*packages: str) -> dict[str, str]:
    """Python's and the installed packages' versions, for manifests (missing packages are skipped)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def model_card(manifest: dict) -> str:
    concepts = ", ".join(f'"{c}"' for c in manifest["concepts"])
    cfg = manifest["config"]
    tags = ["esd", "concept-erasure", "stable-diffusion", "diffusers", f"esd-{cfg['method']}"]
    lines = [
        "---",
        f"base_model: {manifest['base_model']}",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags:",
        *[f"- {t}" for t in tags],
        "---",
        "",
        f"# ESD-{cfg['method']}: {concepts} erased from {manifest['base_model']}",
        "",
        f"This UNet was fine-tuned with ESD (Gandikota et al., *Erasing Concepts from Diffusion Models*, ICCV 2023) "
        f"so that prompts for {concepts} no longer produce that concept. Use it in place of the base model's UNet.",
        "",
        "```python",
        "from diffusers import StableDiffusionPipeline, UNet2DConditionModel",
        "unet = UNet2DConditionModel.from_pretrained(\"<this directory>/unet\")",
        f"pipe = StableDiffusionPipeline.from_pretrained(\"{manifest['base_model']}\", unet=unet)",
        "```",
        "",
        "| setting | value |", "| --- | --- |",
        f"| method | {cfg['method']} ({manifest['trained']['summary']}) |",
        f"| negative guidance η | {cfg['negative_guidance']} |",
        f"| steps, lr | {cfg['steps']}, {cfg['lr']} |",
        f"| preserved prompts | {', '.join(cfg['preserve']) or 'none'} |",
        f"| precision | {cfg['precision']} |",
        f"| seed | {cfg['seed']} |",
        f"| base weights | `{manifest['base_hash']}` |",
        "",
        "Limitations: erasure is measured on the prompts it was evaluated on; paraphrases and adversarial prompts "
        "may still recover parts of the concept, and related concepts can be affected (interference).",
    ]
    if manifest.get("scores"):
        lines += ["", "## Scores", "", "```json", json.dumps(manifest["scores"], indent=2), "```"]
    return "\n".join(lines) + "\n"


def write_artifact(out: Path, base: BaseModel, config: EraseConfig, state, overwrite: bool = False) -> dict:
    """Write the erase output directory atomically and return its manifest."""
    unet = state.unet
    edited = {n: p for n, p in unet.named_parameters() if n in state.original}
    delta = compute_delta(edited, state.original)
    edited_hash = weights_hash(unet)
    manifest = {
        "format": "esd-sdk", "format_version": FORMAT_VERSION,
        "base_model": base.source if base.path is None or base.family == "toy" else str(base.path.resolve()),
        "base_family": base.family, "prediction_type": base.prediction_type,
        "base_hash": state.base_hash, "edited_hash": edited_hash,
        "concepts": list(config.concepts), "method": config.method,
        "config": config.to_dict(),
        "trained": {"summary": state.selection.summary(), "num_params": state.selection.num_params,
                    "tensors": state.selection.tensors},
        "changed_tensors": len(delta_names(delta)),
        "delta_corrected_elements": sum(v.numel() for k, v in delta.items() if k.endswith(FIX + "index")),
        "training": {"steps": state.step, "seconds": round(state.seconds, 2),
                     "final_loss": state.losses[-1] if state.losses else None,
                     "loss_first_10_mean": sum(state.losses[:10]) / max(1, len(state.losses[:10])),
                     "loss_last_10_mean": sum(state.losses[-10:]) / max(1, len(state.losses[-10:]))},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions("esd-sdk", "torch", "diffusers", "transformers", "safetensors"),
        "scores": {},
    }
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        unet.save_pretrained(tmp / UNET_DIR, safe_serialization=True)
        save_file(delta, str(tmp / DELTA_NAME), metadata={
            "format": "esd-delta", "base_hash": state.base_hash, "edited_hash": edited_hash,
            "base_model": manifest["base_model"], "method": config.method, "concepts": json.dumps(config.concepts)})
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(manifest))
        if out.exists():
            if not overwrite:
                raise OutputExistsError(f"output {out} appeared while training: pass --overwrite or choose another --out")
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(partial_dir(out), ignore_errors=True)
    logger.info("wrote %s (%d changed tensors)", out, len(delta_names(delta)))
    return manifest


def load_manifest(directory: str | Path) -> dict:
    """The manifest of an erase output directory."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"{directory} is not an esd-sdk erase output (no {MANIFEST_NAME}): pass the directory "
                                 "that `esd-sdk erase` wrote")
    return json.loads(path.read_text())


def update_manifest(directory: str | Path, scores: dict) -> dict:
    """Merge scores into an artifact's manifest and model card (atomically per file)."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    manifest.setdefault("scores", {}).update(scores)
    for name, text in ((MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n"), (CARD_NAME, model_card(manifest))):
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(directory / name)
    return manifest


def load_edited_unet(directory: str | Path):
    """The standalone edited UNet of an erase output directory."""
    from diffusers import UNet2DConditionModel

    directory = Path(directory)
    if not (directory / UNET_DIR / "config.json").is_file():
        raise ModelNotFoundError(f"{directory} has no {UNET_DIR}/ directory: pass the directory `esd-sdk erase` wrote")
    return UNet2DConditionModel.from_pretrained(directory / UNET_DIR, use_safetensors=True)
