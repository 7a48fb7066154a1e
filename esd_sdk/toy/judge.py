"""The toy world's judge: a small CNN that says which object, colour and style an image shows.

Trained by `esd_sdk.toy.train` on clean, noisy, blurred and VAE-round-tripped renders (so
that it is not fooled by the artefacts of generated samples), with an extra "none" object
class for images that show no shape at all: an erased concept must not be counted as
present just because the judge had to pick one of the known classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .world import COLOUR_NAMES, JUDGE_OBJECT_NAMES, STYLE_NAMES

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "judge.safetensors"


@dataclass
class Verdict:
    """Per-image predictions of the judge, as class names."""

    object: list[str]
    colour: list[str]
    style: list[str]
    object_confidence: np.ndarray  # (N,) probability of the predicted object class


class Judge(nn.Module):
    """Three-headed classifier over 32x32 RGB images in [0, 1]."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.GELU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.GELU(),
            )

        self.features = nn.Sequential(
            block(3, width), nn.MaxPool2d(2),  # (B, w, 16, 16)
            block(width, 2 * width), nn.MaxPool2d(2),  # (B, 2w, 8, 8)
            block(2 * width, 4 * width),  # (B, 4w, 8, 8)
        )
        self.object_head = nn.Linear(4 * width, len(JUDGE_OBJECT_NAMES))
        self.colour_head = nn.Linear(4 * width, len(COLOUR_NAMES))
        self.style_head = nn.Linear(4 * width, len(STYLE_NAMES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images: (B, 3, 32, 32) in [0, 1]. Returns logits for object, colour, style."""
        h = self.features(images * 2 - 1).mean(dim=(2, 3))  # (B, 4w)
        return self.object_head(h), self.colour_head(h), self.style_head(h)

    @torch.inference_mode()
    def judge(self, images: torch.Tensor | np.ndarray) -> Verdict:
        """Classify images given as (B, 3, H, W) tensors or (B, H, W, 3) arrays in [0, 1]."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images).permute(0, 3, 1, 2)
        images = images.float()
        if images.shape[-1] != 32:
            images = F.interpolate(images, size=(32, 32), mode="area")
        obj, col, sty = self(images)
        p_obj = obj.softmax(-1)
        return Verdict(
            object=[JUDGE_OBJECT_NAMES[i] for i in p_obj.argmax(-1).tolist()],
            colour=[COLOUR_NAMES[i] for i in col.argmax(-1).tolist()],
            style=[STYLE_NAMES[i] for i in sty.argmax(-1).tolist()],
            object_confidence=p_obj.max(-1).values.numpy(),
        )

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps({
            "width": self.width,
            "objects": JUDGE_OBJECT_NAMES, "colours": COLOUR_NAMES, "styles": STYLE_NAMES,
        }, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Judge":
        from safetensors.torch import load_file

        directory = Path(directory)
        config = json.loads((directory / CONFIG_NAME).read_text())
        if config["objects"] != JUDGE_OBJECT_NAMES or config["styles"] != STYLE_NAMES or config["colours"] != COLOUR_NAMES:
            raise ValueError(f"judge at {directory} was trained on another toy world; retrain it with esd_sdk.toy.train")
        judge = cls(width=config["width"])
        judge.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return judge.eval()
