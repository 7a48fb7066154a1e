"""The erase output directory: what an erase leaves on disk, and how everything else finds it.

    unet/                       standalone diffusers UNet (config.json + safetensors)
    esd_delta.safetensors       only the changed tensors, edited - base (see `esd_sdk.delta`)
    esd.json                    the manifest: base, concepts, method, hyper-parameters, versions, scores
    README.md                   a model card in the Hugging Face convention

It is written in one piece (`esd_sdk.files.atomic_dir`); scores added later (eval, attack)
update esd.json and README.md one file at a time, each atomically. `resolve_unet` is the one
place that turns "an erase output, a UNet directory or a pipeline directory" into a UNet.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from .delta import DELTA_NAME, compute_delta, corrected_elements, delta_names, write_delta
from .errors import ConfigError, ModelNotFoundError, OutputExistsError
from .files import atomic_dir, check_output, write_text
from .loading import BaseModel, weights_hash

if TYPE_CHECKING:
    from .training import EraseState

logger = logging.getLogger(__name__)

UNET_DIR = "unet"
MANIFEST_NAME = "esd.json"
CARD_NAME = "README.md"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoint"


def package_versions(*packages: str) -> dict[str, str]:
    """Python's and the installed packages' versions, for manifests (missing packages are skipped)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


# -- before training: the output and its checkpoint directory ----------------------------------

def partial_dir(out: Path) -> Path:
    """Hidden work directory next to the output: checkpoints live here until the run finishes."""
    return out.parent / f".{out.name}.partial"


def prepare_output(out: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse an existing output unless overwriting, and an unfinished run's checkpoint unless
    resuming or overwriting: fail before any expensive work."""
    check_output(out, overwrite)
    work = partial_dir(out)
    if work.exists() and not resume:
        if overwrite or not (work / CHECKPOINT_DIR / "state.json").exists():
            shutil.rmtree(work)
        else:
            raise OutputExistsError(
                f"an unfinished run of {out} has a checkpoint in {work}: pass --resume to continue it, "
                "or --overwrite to start again")


# -- the manifest and the model card -------------------------------------------------------------

def build_manifest(base: BaseModel, state: "EraseState", delta: dict, edited_hash: str) -> dict:
    config = state.config
    losses = state.losses
    return {
        "format": "esd-sdk", "format_version": FORMAT_VERSION,
        "base_model": base.source if base.path is None or base.family == "toy" else str(base.path.resolve()),
        "base_family": base.family, "prediction_type": base.prediction_type,
        "base_hash": state.base_hash, "edited_hash": edited_hash,
        "concepts": list(config.concepts), "method": config.method,
        "config": config.to_dict(),
        "trained": {"summary": state.selection.summary(), "num_params": state.selection.num_params,
                    "tensors": state.selection.tensors},
        "changed_tensors": len(delta_names(delta)),
        "delta_corrected_elements": corrected_elements(delta),
        "training": {"steps": state.step, "seconds": round(state.seconds, 2),
                     "processes": state.processes, "global_batch": state.processes * config.batch_size,
                     "final_loss": losses[-1] if losses else None,
                     "loss_first_10_mean": sum(losses[:10]) / max(1, len(losses[:10])),
                     "loss_last_10_mean": sum(losses[-10:]) / max(1, len(losses[-10:]))},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions("esd-sdk", "torch", "diffusers", "transformers", "safetensors"),
        "scores": {},
    }


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
        *_context_rows(cfg),
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


def _context_rows(cfg: dict) -> list[str]:
    """Model-card rows for the settings that only some erases use: the contexts (templates) the concept was
    erased in and the preserved prompts held in, and robust ESD's inner attack."""
    rows = [f"| {name} | {', '.join(f'`{t}`' for t in cfg[key])} |" for key, name in
            (("concept_templates", "concept erased in"), ("preserve_templates", "preserved prompts held in"))
            if cfg.get(key, ["{}"]) != ["{}"]]
    if cfg.get("robust"):
        rows.append(f"| robust (adversarial ESD) | {cfg['robust_attack_steps']} inner attack steps every {cfg['robust_every']} "
                    f"from {cfg['robust_start']:g} of the steps, {cfg['robust_tokens']} tokens learned in "
                    f"{', '.join(f'`{t}`' for t in cfg.get('robust_templates', ['{}']))} |")
    return rows


# -- writing and reading the directory ------------------------------------------------------------

def write_artifact(out: Path, base: BaseModel, state: "EraseState", overwrite: bool = False) -> dict:
    """Write the erase output directory atomically and return its manifest."""
    unet = state.unet
    edited = {n: p for n, p in unet.named_parameters() if n in state.original}
    delta = compute_delta(edited, state.original)
    edited_hash = weights_hash(unet)
    manifest = build_manifest(base, state, delta, edited_hash)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        unet.save_pretrained(tmp / UNET_DIR, safe_serialization=True)
        write_delta(tmp / DELTA_NAME, delta, base_hash=state.base_hash, edited_hash=edited_hash,
                    base_model=manifest["base_model"], method=state.config.method,
                    concepts=json.dumps(state.config.concepts))
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(manifest))
    shutil.rmtree(partial_dir(out), ignore_errors=True)
    logger.info("wrote %s (%d changed tensors)", out, len(delta_names(delta)))
    return manifest


def is_artifact(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST_NAME).is_file()


def load_manifest(directory: str | Path) -> dict:
    """The manifest of an erase output directory."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"{directory} is not an esd-sdk erase output (no {MANIFEST_NAME}): pass the directory "
                                 "that `esd-sdk erase` wrote")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}): restore it or erase again") from e


def update_manifest(directory: str | Path, scores: dict) -> dict:
    """Merge scores into an artifact's manifest and model card (atomically per file)."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    manifest.setdefault("scores", {}).update(scores)
    write_text(directory / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    write_text(directory / CARD_NAME, model_card(manifest))
    return manifest


def load_edited_unet(directory: str | Path):
    """The standalone edited UNet of an erase output directory."""
    from diffusers import UNet2DConditionModel

    directory = Path(directory)
    if not (directory / UNET_DIR / "config.json").is_file():
        raise ModelNotFoundError(f"{directory} has no {UNET_DIR}/ directory: pass the directory `esd-sdk erase` wrote")
    return UNet2DConditionModel.from_pretrained(directory / UNET_DIR, use_safetensors=True)


def resolve_unet(source: str | Path):
    """The UNet of an erase output directory, a standalone UNet directory or a pipeline directory,
    in eval mode, with the erase's manifest (or None)."""
    from diffusers import UNet2DConditionModel

    path = Path(source)
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist: pass an erase output directory, a UNet directory or a "
                                 "diffusers pipeline directory")
    manifest = load_manifest(path) if is_artifact(path) else None
    for candidate in (path / UNET_DIR, path):
        if (candidate / "config.json").is_file():
            config = json.loads((candidate / "config.json").read_text())
            if config.get("_class_name") != "UNet2DConditionModel":
                raise ConfigError(f"{candidate} holds a {config.get('_class_name')}, not a UNet2DConditionModel")
            return UNet2DConditionModel.from_pretrained(candidate, use_safetensors=True).eval(), manifest
    raise ModelNotFoundError(f"no UNet in {path}: pass an erase output directory (with unet/), a UNet directory "
                             "(config.json + safetensors) or a pipeline directory")
