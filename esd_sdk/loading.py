"""One loader for every base model the SDK edits: a hub id, a local diffusers directory,
a single-file checkpoint, or the bundled ``toy`` model.

    >>> base = load_base("toy")
    >>> base.family, base.prediction_type
    ('toy', 'epsilon')

Safetensors only: pickled weights (.bin, .ckpt, .pt) are refused unless ``allow_pickle=True``,
because unpickling runs arbitrary code from the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import (
    CorruptWeightsError,
    ModelNotFoundError,
    NotADiffusersModelError,
    UnsafeWeightsError,
    UnsupportedModelError,
)

logger = logging.getLogger(__name__)

TOY = "toy"
DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"  # the paper's base model
SUPPORTED_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionXLPipeline"}
PICKLE_SUFFIXES = {".bin", ".ckpt", ".pt", ".pth"}
FAMILY_NAMES = {"toy": "toy world", "sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "custom": "SD-style (custom size)"}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def toy_model_path() -> Path:
    """Directory of the bundled toy model (a StableDiffusionPipeline layout plus judge/)."""
    return Path(__file__).parent / "toy" / "model"


@dataclass
class BaseModel:
    """A loaded base model and what the loader found out about it."""

    pipeline: Any  # a diffusers StableDiffusionPipeline or StableDiffusionXLPipeline
    family: str  # "toy", "sd1", "sd2", "sdxl" or "custom"
    prediction_type: str  # "epsilon" or "v_prediction"
    source: str  # what the caller asked for
    path: Path | None = None  # local directory or file, None for a hub download

    @property
    def unet(self):
        return self.pipeline.unet

    def with_components(self, **components) -> "BaseModel":
        """A new BaseModel whose pipeline shares every component but those given (e.g. ``unet=``).

        The pipeline object is new, so its settings (progress bar, a swapped UNet) never touch
        this one's; the weights are shared, not copied.
        """
        import dataclasses
        import inspect

        pipe = self.pipeline
        unknown = sorted(set(components) - set(pipe.components))
        if unknown:
            raise ValueError(f"{type(pipe).__name__} has no component {unknown[0]}")
        params = inspect.signature(type(pipe).__init__).parameters
        settings = {k: pipe.config[k] for k in params if k not in pipe.components and k in pipe.config}
        new = type(pipe)(**{**pipe.components, **components}, **settings)
        return dataclasses.replace(self, pipeline=new)

    @property
    def uses_added_conditioning(self) -> bool:
        """SDXL's pooled text embeddings and size/crop time ids."""
        return self.family == "sdxl"

    def describe(self) -> str:
        n = sum(p.numel() for p in self.unet.parameters())
        where = self.path if self.path is not None else "the Hugging Face Hub"
        return (f"{FAMILY_NAMES[self.family]} model '{self.source}' ({type(self.pipeline).__name__}, "
                f"{n / 1e6:.1f}M-parameter UNet, {self.prediction_type}) from {where}")


def detect_family(unet_config: dict, scheduler_config: dict, is_toy: bool = False) -> tuple[str, str]:
    """The model family and prediction type, from the UNet and scheduler configs."""
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise UnsupportedModelError(f"prediction type '{prediction}' is not supported: ESD needs epsilon or v_prediction")
    if is_toy:
        return "toy", prediction
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl", prediction
    return {768: "sd1", 1024: "sd2"}.get(unet_config.get("cross_attention_dim"), "custom"), prediction


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over a module's tensor names, dtypes, shapes and bytes (order-independent of storage)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())  # a view: hashing copies nothing
    return "sha256:" + h.hexdigest()


def check_safetensors(path: Path) -> None:
    """Read a safetensors header and every tensor's byte range; raise CorruptWeightsError if broken."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except Exception as e:  # safetensors raises its own SafetensorError, and OSError on I/O
        raise CorruptWeightsError(
            f"weights file {path} is corrupt or truncated ({str(e).splitlines()[0]}): "
            "re-download or re-save it") from e
    # safe_open reads lazily; a truncated file still opens if the header survived.
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        raise CorruptWeightsError(
            f"weights file {path} is truncated ({size} bytes, header expects {8 + header_len + end}): "
            "re-download or re-save it")


def _check_directory(path: Path, allow_pickle: bool) -> dict:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        if (path / "config.json").is_file() or (path / "unet" / "config.json").is_file():
            raise NotADiffusersModelError(
                f"{path} holds a single model component, not a pipeline: pass the base pipeline directory "
                "(with model_index.json), e.g. the one an edit was made from")
        raise NotADiffusersModelError(
            f"{path} is not a diffusers model directory (no model_index.json): pass a directory saved with "
            "save_pretrained, a .safetensors checkpoint, a hub id, or 'toy'")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise NotADiffusersModelError(f"{index_file} is not valid JSON ({e}): re-save the model") from e
    cls = index.get("_class_name")
    if cls not in SUPPORTED_PIPELINES:
        raise UnsupportedModelError(
            f"{path} is a {cls}; esd-sdk edits {', '.join(sorted(SUPPORTED_PIPELINES))} models")
    for component in ("unet", "text_encoder", "vae"):
        folder = path / component
        safe = sorted(folder.glob("*.safetensors"))
        pickled = [p for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES]
        if not safe and pickled and not allow_pickle:
            raise UnsafeWeightsError(
                f"{folder} has only pickled weights ({pickled[0].name}); pass --allow-pickle "
                "(allow_pickle=True) if you trust the file, or convert it to safetensors")
        for file in safe:
            check_safetensors(file)
    return index


def _pipeline_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def _from_directory(path: Path, allow_pickle: bool, torch_dtype) -> Any:
    index = _check_directory(path, allow_pickle)
    cls = _pipeline_class(index["_class_name"])
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    if "safety_checker" in index:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    return cls.from_pretrained(path, use_safetensors=None if allow_pickle else True, local_files_only=True, **kwargs)


def _from_single_file(path: Path, allow_pickle: bool, torch_dtype, config: str | Path | None) -> Any:
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise UnsafeWeightsError(
            f"{path} is a pickled checkpoint; pass --allow-pickle (allow_pickle=True) if you trust it, "
            "or convert it to .safetensors")
    if path.suffix == ".safetensors":
        check_safetensors(path)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        is_sdxl = any(k.startswith("conditioner.embedders.1") for k in keys)
    elif path.suffix in PICKLE_SUFFIXES:
        is_sdxl = False
    else:
        raise NotADiffusersModelError(
            f"{path} is not a checkpoint file: expected .safetensors (or .ckpt with --allow-pickle)")
    cls = _pipeline_class("StableDiffusionXLPipeline" if is_sdxl else "StableDiffusionPipeline")
    kwargs: dict = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    if config is not None:
        kwargs.update(config=str(config), local_files_only=True)
    try:
        return cls.from_single_file(str(path), **kwargs)
    except Exception as e:
        raise ModelNotFoundError(
            f"cannot build a pipeline from the single-file checkpoint {path} ({type(e).__name__}): it needs the "
            "matching diffusers config from the Hub; offline, pass --config DIR with a local diffusers model "
            "of the same architecture") from e


def _from_hub(model_id: str, allow_pickle: bool, torch_dtype) -> Any:
    import diffusers

    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        pipeline = diffusers.DiffusionPipeline.from_pretrained(
            model_id, use_safetensors=None if allow_pickle else True, safety_checker=None, **kwargs)
    except Exception as e:
        if type(e).__name__ in ("RepositoryNotFoundError", "GatedRepoError"):
            raise ModelNotFoundError(
                f"'{model_id}' is not on the Hugging Face Hub (or needs a login): check the id, "
                "or pass a local diffusers directory or 'toy'") from e
        raise ModelNotFoundError(
            f"cannot download '{model_id}' from the Hugging Face Hub (offline or unreachable: "
            f"{type(e).__name__}); pass a local diffusers directory or --model toy") from e
    if type(pipeline).__name__ not in SUPPORTED_PIPELINES:
        raise UnsupportedModelError(
            f"'{model_id}' is a {type(pipeline).__name__}; esd-sdk edits {', '.join(sorted(SUPPORTED_PIPELINES))} models")
    return pipeline


def load_base(model: str | Path = DEFAULT_MODEL, *, allow_pickle: bool = False, torch_dtype=None,
              config: str | Path | None = None) -> BaseModel:
    """Load a base text-to-image model.

    Args:
        model (`str` or `Path`, defaults to the paper's `CompVis/stable-diffusion-v1-4`):
            `"toy"`, a local diffusers directory, a `.safetensors` single-file checkpoint, or a hub id.
        allow_pickle (`bool`, defaults to `False`): also load pickled weights (runs code from the file).
        torch_dtype (`torch.dtype`, *optional*): dtype to load the weights in.
        config (`str` or `Path`, *optional*): a local diffusers model whose configs a single-file
            checkpoint should use (needed offline).
    """
    from diffusers.utils import logging as diffusers_logging

    # The per-component loading bar is noise next to our own progress bars and one-line errors.
    # diffusers has only a process-wide switch: turn it off for the load, then back to what it was.
    was_enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        return _load(str(model), allow_pickle, torch_dtype, config)
    finally:
        if was_enabled:
            diffusers_logging.enable_progress_bar()


def _load(source: str, allow_pickle: bool, torch_dtype, config) -> BaseModel:
    if source == TOY:
        path = toy_model_path()
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"the bundled toy model is missing from {path}: reinstall esd-sdk or run "
                "python -m esd_sdk.toy.train --out " + str(path))
        pipeline = _from_directory(path, allow_pickle, torch_dtype)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            pipeline = _from_directory(path, allow_pickle, torch_dtype)
        elif path.is_file():
            pipeline = _from_single_file(path, allow_pickle, torch_dtype, config)
        elif _HUB_ID.match(source) and not source.startswith((".", "/", "~")) and path.suffix not in {".safetensors", *PICKLE_SUFFIXES}:
            path = None
            pipeline = _from_hub(source, allow_pickle, torch_dtype)
        else:
            raise ModelNotFoundError(
                f"model path {source} does not exist: pass an existing diffusers directory, a .safetensors file, "
                "a hub id such as CompVis/stable-diffusion-v1-4, or 'toy'")
    is_toy = path is not None and path.is_dir() and (path / "judge" / "config.json").is_file()
    family, prediction = detect_family(dict(pipeline.unet.config), dict(pipeline.scheduler.config), is_toy)
    base = BaseModel(pipeline=pipeline, family=family, prediction_type=prediction, source=source, path=path)
    logger.info("loaded %s", base.describe())
    return base
