"""Generate images from a base or edited model and lay them out as labelled grids.

    >>> base = load_base("toy")
    >>> images = generate(base, "a red circle", n=4, seed=0)   # (4, 32, 32, 3) floats in [0, 1]
    >>> image_grid(images, labels=["#0", "#1", "#2", "#3"], title="a red circle").save("grid.png")
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import ConfigError
from .loading import BaseModel

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "esd_generation.json"


@dataclass
class GenerationConfig:
    """Sampler settings. A model directory may carry its own defaults in esd_generation.json."""

    num_inference_steps: int = 50  # denoising steps of the pipeline's scheduler
    guidance_scale: float = 7.5  # classifier-free guidance scale
    batch_size: int = 64  # images per pipeline call; bounds memory on long runs

    def validate(self) -> "GenerationConfig":
        if self.num_inference_steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.num_inference_steps}")
        if self.guidance_scale < 0:
            raise ConfigError(f"guidance must be >= 0, got {self.guidance_scale}")
        if self.batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        return self

    @classmethod
    def for_model(cls, base: BaseModel) -> "GenerationConfig":
        """The model's own defaults if it ships them, else the SD defaults above."""
        if base.path is not None and (base.path / GENERATION_CONFIG_NAME).is_file():
            data = json.loads((base.path / GENERATION_CONFIG_NAME).read_text())
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        return cls()

    def save(self, directory: Path) -> None:
        (Path(directory) / GENERATION_CONFIG_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n")


def own_pipeline(base: BaseModel, unet: torch.nn.Module | None = None, progress: bool = False):
    """A pipeline object of our own that shares ``base``'s weights (with ``unet`` in place of its
    UNet), with its own scheduler, which keeps per-call state: the caller's pipeline is never
    touched, so concurrent calls are safe."""
    scheduler = base.pipeline.scheduler
    own = {"scheduler": type(scheduler).from_config(scheduler.config)}
    if unet is not None:
        own["unet"] = unet
    pipe = base.with_components(**own).pipeline
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def generate(base: BaseModel, prompts: str | list[str], n: int = 1, seed: int = 0,
             config: GenerationConfig | None = None, unet: torch.nn.Module | None = None,
             progress: bool = False) -> np.ndarray:
    """Generate ``n`` images per prompt. Image ``i`` of each prompt uses seed ``seed + i``,
    so the same seed gives the same starting noise for the base and an edited model.

    Args:
        base: the loaded model (its pipeline supplies tokenizer, text encoder, VAE, scheduler).
        prompts: one prompt or a list.
        n: images per prompt.
        seed: first seed.
        config: sampler settings; defaults to the model's own.
        unet: generate with this UNet instead of the pipeline's (e.g. an edited one).
        progress: show the pipeline's progress bar.

    Returns:
        `np.ndarray` of shape (len(prompts) * n, H, W, 3), floats in [0, 1], prompt-major.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if n <= 0:
        raise ConfigError(f"number of images must be positive, got {n}")
    config = (config or GenerationConfig.for_model(base)).validate()
    pipe = own_pipeline(base, unet, progress)
    device = pipe.unet.device
    jobs = [(p, seed + i) for p in prompts for i in range(n)]
    out = []
    for start in range(0, len(jobs), config.batch_size):
        chunk = jobs[start:start + config.batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
        # Same seed -> same initial latents whatever the batch composition.
        result = pipe(
            prompt=[p for p, _ in chunk], num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale, generator=generators, output_type="np",
        )
        out.append(result.images)
    logger.debug("generated %d images on %s", len(jobs), device)
    return np.concatenate(out).astype(np.float32)


def image_grid(images: np.ndarray, labels: list[str] | None = None, title: str | None = None,
               columns: int | None = None, scale: int = 4, row_labels: list[str] | None = None) -> Image.Image:
    """Lay images (N, H, W, 3) in [0, 1] out in a grid, each with an optional caption below it,
    an optional title on top and optional labels at the start of each row. Small images are
    enlarged ``scale`` times with nearest-neighbour sampling so pixels stay visible."""
    n, h, w, _ = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    font = ImageFont.load_default()
    cell_w, cell_h = w * scale, h * scale
    label_h = 14 if labels else 0
    title_h = 18 if title else 0
    row_w = 8 + max((int(font.getlength(r)) for r in row_labels), default=0) if row_labels else 0
    pad = 4
    width = row_w + columns * (cell_w + pad) + pad
    height = title_h + rows * (cell_h + label_h + pad) + pad
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, 3), title, fill=(0, 0, 0), font=font)
    pixels = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        x = row_w + pad + c * (cell_w + pad)
        y = title_h + pad + r * (cell_h + label_h + pad)
        grid.paste(Image.fromarray(pixels[i]).resize((cell_w, cell_h), Image.NEAREST), (x, y))
        if labels:
            text = labels[i]
            while font.getlength(text) > cell_w and len(text) > 1:
                text = text[:-1]
            draw.text((x, y + cell_h + 1), text, fill=(40, 40, 40), font=font)
    for r, text in enumerate(row_labels or []):
        draw.text((pad, title_h + pad + r * (cell_h + label_h + pad) + cell_h // 2 - 6), text, fill=(0, 0, 0), font=font)
    return grid
