"""Text to image with any UNet runtime: the base model's tokenizer, text encoder, VAE and
scheduler around a pluggable UNet.

    >>> base = esd_sdk.load_base("toy")
    >>> pipe = Text2ImagePipeline(base, load_runtime("erased-circle-onnx", backend="onnxruntime"))
    >>> images = pipe(["a red circle", "a blue square"], seeds=[0, 1])      # (2, H, W, 3) floats in [0, 1]

It follows diffusers' `StableDiffusionPipeline` step for step (same initial latents per seed,
classifier-free guidance with the unconditional half first, the scheduler's own step), so the
torch runtime reproduces `esd_sdk.generate` and the other runtimes differ from it only by the
UNet's numerics. Each request in a batch may have its own seed and guidance scale; the number
of steps and the size are shared by the batch.

One pipeline may be called from several threads: calls are serialised by a lock (the runtime
and the text encoder run one batch at a time anyway). To batch concurrent requests into one
UNet call, put a `Service` in front of it.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..conditioning import Conditioning, encode_prompts
from ..errors import ConfigError, ModelNotFoundError, StaleExportError
from ..generation import GenerationConfig
from ..loading import BaseModel
from .runtime import UNetRuntime


@dataclass(frozen=True)
class Limits:
    """What a pipeline accepts; the server turns violations into 400 responses."""

    max_prompt_chars: int = 1000
    min_steps: int = 1
    max_steps: int = 150
    max_guidance: float = 30.0
    size_multiple: int = 8  # image height/width must be a multiple of this
    min_size: int = 8
    max_size: int = 1024
    max_batch: int = 64


class Text2ImagePipeline:
    """Generate images from prompts with ``runtime`` as the UNet and ``base``'s other components."""

    def __init__(self, base: BaseModel, runtime: UNetRuntime, defaults: GenerationConfig | None = None,
                 inplace: bool = False):
        """``base`` supplies the tokenizer(s), text encoder(s), VAE and scheduler config. Those not
        yet on the runtime's device (or not in eval mode) are used as moved copies, so the caller's
        modules are left as they were, unless ``inplace=True`` (no copies: the caller's move)."""
        self.runtime = runtime
        self.device = runtime.device
        pipe = base.pipeline
        moved = {}
        for name in ("text_encoder", "text_encoder_2", "vae"):
            module = getattr(pipe, name, None)
            if module is not None and (module.device != self.device or module.training):
                moved[name] = (module if inplace else copy.deepcopy(module)).to(self.device).eval()
        self.base = base.with_components(**moved) if moved else base
        pipe = self.base.pipeline
        self.vae = pipe.vae
        self.scheduler_class = type(pipe.scheduler)
        self.scheduler_config = pipe.scheduler.config
        self.vae_scale_factor = pipe.vae_scale_factor
        cfg = runtime.config or dict(pipe.unet.config)
        self.latent_channels = cfg["in_channels"]
        self.default_size = cfg["sample_size"] * self.vae_scale_factor
        downsamples = len(cfg["down_block_types"]) - 1
        self.limits = Limits(size_multiple=self.vae_scale_factor * 2 ** downsamples,
                             min_size=self.vae_scale_factor * 2 ** downsamples)
        self.defaults = defaults or GenerationConfig.for_model(base)
        self.zero_uncond = bool(getattr(pipe, "config", {}).get("force_zeros_for_empty_prompt", False))
        self._lock = threading.Lock()
        self._uncond: dict[int, Conditioning] = {}  # by image size (SDXL's time ids depend on it)

    def describe(self) -> str:
        return f"{self.base.source} with UNet on {self.runtime.describe()}"

    def _conditioning(self, prompts: list[str], size: int) -> Conditioning:
        cond = encode_prompts(self.base, prompts, device=self.device, resolution=size)
        if size not in self._uncond:
            uncond = encode_prompts(self.base, [""], device=self.device, resolution=size)
            if self.zero_uncond:  # SDXL's default: zero embeddings for an empty negative prompt
                uncond = Conditioning(torch.zeros_like(uncond.hidden),
                                      {"text_embeds": torch.zeros_like(uncond.added["text_embeds"]),
                                       "time_ids": uncond.added["time_ids"]} if uncond.added else None)
            self._uncond[size] = uncond
        uncond = self._uncond[size].index([0] * len(prompts))
        return Conditioning.cat([uncond, cond])

    def initial_latents(self, seeds: list[int], height: int, width: int) -> torch.Tensor:
        """The starting noise, one CPU generator per image as diffusers does with a list of generators."""
        shape = (1, self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        return torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])

    def check(self, prompts: list[str], seeds: list[int], steps: int, guidance: list[float], height: int,
              width: int) -> None:
        """Raise ConfigError, naming the bound, for anything the pipeline will not run."""
        lim = self.limits
        if not prompts:
            raise ConfigError("no prompts given")
        if len(prompts) > lim.max_batch:
            raise ConfigError(f"at most {lim.max_batch} prompts per call, got {len(prompts)}")
        if len(seeds) != len(prompts) or len(guidance) != len(prompts):
            raise ConfigError(f"need one seed and one guidance per prompt: {len(prompts)} prompts, "
                              f"{len(seeds)} seeds, {len(guidance)} guidance values")
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise ConfigError("prompt must be a non-empty string")
            if len(p) > lim.max_prompt_chars:
                raise ConfigError(f"prompt is {len(p)} characters, the limit is {lim.max_prompt_chars}")
        if not lim.min_steps <= steps <= lim.max_steps:
            raise ConfigError(f"steps must be between {lim.min_steps} and {lim.max_steps}, got {steps}")
        for g in guidance:
            if not 0 <= g <= lim.max_guidance:
                raise ConfigError(f"guidance must be between 0 and {lim.max_guidance:g}, got {g:g}")
        for name, v in (("height", height), ("width", width)):
            if not lim.min_size <= v <= lim.max_size or v % lim.size_multiple:
                raise ConfigError(f"{name} must be a multiple of {lim.size_multiple} between {lim.min_size} and "
                                  f"{lim.max_size}, got {v}")
        for s in seeds:
            if not 0 <= int(s) < 2**63:
                raise ConfigError(f"seed must be between 0 and 2**63 - 1, got {s}")

    def __call__(self, prompts: str | list[str], seeds: int | list[int] = 0, steps: int | None = None,
                 guidance: float | list[float] | None = None, height: int | None = None,
                 width: int | None = None) -> np.ndarray:
        """Images (N, H, W, 3), floats in [0, 1], one per prompt.

        Args:
            prompts: one prompt or a list.
            seeds: one seed per prompt, or a first seed (image i gets seed + i, as `esd_sdk.generate`).
            steps: denoising steps (default: the model's).
            guidance: classifier-free guidance scale, one for all or one per prompt (default: the model's).
            height, width: image size (default: the model's native size).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = [seeds + i for i in range(len(prompts))] if isinstance(seeds, int) else list(seeds)
        steps = self.defaults.num_inference_steps if steps is None else steps
        guidance = self.defaults.guidance_scale if guidance is None else guidance
        guidance = [float(guidance)] * len(prompts) if isinstance(guidance, (int, float)) else [float(g) for g in guidance]
        height, width = height or self.default_size, width or self.default_size
        self.check(prompts, seeds, steps, guidance, height, width)
        with self._lock:
            return self._generate(prompts, seeds, steps, guidance, height, width)

    @torch.inference_mode()
    def _generate(self, prompts, seeds, steps, guidance, height, width) -> np.ndarray:
        n = len(prompts)
        scheduler = self.scheduler_class.from_config(self.scheduler_config)  # per call: schedulers are stateful
        scheduler.set_timesteps(steps, device=self.device)
        latents = self.initial_latents(seeds, height, width).to(self.device) * scheduler.init_noise_sigma
        # diffusers skips guidance at scale <= 1 and uses the conditional prediction alone.
        scale = torch.tensor([g if g > 1 else 1.0 for g in guidance], device=self.device).view(n, 1, 1, 1)
        guided = any(g > 1 for g in guidance)
        cond = self._conditioning(prompts, max(height, width))
        if not guided:
            cond = cond.index(list(range(n, 2 * n)))
        for t in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            timestep = t.to(self.device).expand(model_input.shape[0])
            noise = self.runtime(model_input, timestep, cond)
            if guided:
                uncond, text = noise.chunk(2)
                noise = uncond + scale * (text - uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        return images.permute(0, 2, 3, 1).cpu().numpy()


def open_pipeline(model: str | Path | BaseModel, backend: str = "torch", unet: str | Path | None = None, *,
                  device: str | None = None, precision: str = "fp32", compile: bool = False,
                  provider: str | None = None, threads: int | None = None,
                  allow_pickle: bool = False) -> Text2ImagePipeline:
    """A pipeline for ``model`` on ``backend``: the one call a service needs.

    Args:
        model: an erase output directory (its base model with its edited UNet), anything
            `esd_sdk.load_base` takes (``toy``, a diffusers directory, a hub id), or a loaded
            `BaseModel`, which is left as it was.
        backend: "torch", "onnxruntime" or "tensorrt".
        unet: what to run as the UNet: for torch, a UNet or erase output directory [the model's];
            for onnxruntime/tensorrt, the `esd-sdk export` output [``MODEL-onnx`` / ``MODEL-tensorrt``
            next to an erase output, as `esd-sdk export` names them]. Its weights hash must match
            the erase output's UNet.
        device, precision, compile, provider, threads: see `load_runtime`.
    """
    from ..artifact import is_artifact, load_edited_unet, load_manifest
    from ..loading import load_base
    from .runtime import BACKENDS, load_runtime

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    owned = not isinstance(model, BaseModel)  # a base we load here is ours to trim and move
    path = Path(model) if owned else None
    manifest = load_manifest(path) if owned and is_artifact(path) else None
    # An erase output is its base model plus the edited UNet; one exported as a whole pipeline
    # (`esd-sdk export --format pipeline`) already holds both.
    separate = manifest is not None and not (path / "model_index.json").is_file()
    base = load_base(manifest["base_model"] if separate else model, allow_pickle=allow_pickle) if owned else model
    if backend == "torch":
        if unet is not None:
            source = unet
        else:
            source = load_edited_unet(path) if separate else base.unet
        runtime = load_runtime(source, "torch", device=device, precision=precision, compile=compile)
        # The served UNet replaces the base's in a new pipeline object: a base loaded here is then
        # freed (only one UNet held); a caller's base keeps its own.
        return Text2ImagePipeline(base.with_components(unet=runtime.unet), runtime, inplace=owned)
    suffix = "onnx" if backend == "onnxruntime" else "tensorrt"
    if unet is None:
        if path is None:
            raise ConfigError(f"pass unet= (the {backend} export to run) with a loaded BaseModel")
        unet = path.parent / f"{path.name}-{suffix}"
        if not unet.exists():
            raise ModelNotFoundError(f"no {backend} export of {model} at {unet}: run `esd-sdk export {model} --format "
                                     f"{suffix}` first, or pass --unet")
    runtime = load_runtime(unet, backend, provider=provider, threads=threads)
    if manifest:
        _check_export_matches(Path(unet), backend, manifest["edited_hash"], path)
    if owned:
        base.pipeline.unet.to("meta")  # ours, and only its config is used from here on: free its weights
    return Text2ImagePipeline(base, runtime, inplace=owned)


def open_comparison(model: str | Path, *, device: str | None = None, precision: str = "fp32", compile: bool = False,
                    allow_pickle: bool = False) -> dict[str, Text2ImagePipeline]:
    """The base and the edited model of an erase output, ``{"base": ..., "edited": ...}``, for a
    review side by side (``esd-sdk serve --compare``, `Service` with variants): two torch
    pipelines with the same text encoder, VAE and scheduler (held once), each with its own UNet.

    Args:
        model: the directory `esd-sdk erase` wrote.
        device, precision, compile: see `load_runtime` (the same for both UNets).
    """
    from ..artifact import is_artifact, load_manifest
    from ..loading import load_base
    from .runtime import TorchRuntime, load_runtime

    path = Path(model)
    if not is_artifact(path):
        raise ConfigError(f"{model} is not an erase output (no esd.json): a comparison serves an erased model next "
                          "to its base model, so pass the directory `esd-sdk erase` wrote")
    base = load_base(load_manifest(path)["base_model"], allow_pickle=allow_pickle)
    edited = load_runtime(path, "torch", device=device, precision=precision, compile=compile)
    # The base UNet was loaded here: converted in place rather than copied (one copy of each UNet).
    original = TorchRuntime(base.unet, edited.device, precision, compile, inplace=True)
    first = Text2ImagePipeline(base.with_components(unet=original.unet), original, inplace=True)
    # The second pipeline finds the shared modules already on the device: it uses them as they are.
    return {"base": first, "edited": Text2ImagePipeline(first.base.with_components(unet=edited.unet), edited)}


def _check_export_matches(unet: Path, backend: str, expected: str, model: Path) -> None:
    """Refuse an export of different weights than the erase output's (a stale export)."""
    if backend == "tensorrt":
        from ..export.tensorrt import load_engine_info
        from .runtime import engine_file

        exported = load_engine_info(engine_file(unet)).weights_hash
    else:
        from ..export.onnx import load_export_metadata

        try:  # a bare .onnx file inside an export directory (unet/model.onnx) has it two levels up
            exported = load_export_metadata(unet if unet.is_dir() else unet.parent.parent)["weights_hash"]
        except ModelNotFoundError:
            return  # a bare .onnx without metadata: nothing to check against
    if exported != expected:
        raise StaleExportError(f"{unet} holds other weights than {model}/unet ({exported[:19]} != {expected[:19]}): "
                          f"re-export with `esd-sdk export {model} --overwrite`")
