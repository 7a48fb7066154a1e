"""Text conditioning for the UNet, for SD 1.x/2.x (hidden states) and SDXL (hidden states
plus pooled text embeddings and size/crop time ids), encoded once with the frozen text encoders."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .loading import BaseModel


@dataclass
class Conditioning:
    """UNet conditioning for N prompts."""

    hidden: torch.Tensor  # (N, L, D) encoder_hidden_states
    added: dict[str, torch.Tensor] | None = None  # SDXL: text_embeds (N, P), time_ids (N, 6)

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def index(self, idx: torch.Tensor | list[int]) -> "Conditioning":
        added = {k: v[idx] for k, v in self.added.items()} if self.added else None
        return Conditioning(self.hidden[idx], added)

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        hidden = torch.cat([p.hidden for p in parts])
        added = None
        if parts[0].added:
            added = {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}
        return Conditioning(hidden, added)

    def to(self, device=None, dtype=None) -> "Conditioning":
        added = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                 for k, v in self.added.items()} if self.added else None
        return Conditioning(self.hidden.to(device=device, dtype=dtype), added)

    def kwargs(self) -> dict:
        out = {"encoder_hidden_states": self.hidden}
        if self.added:
            out["added_cond_kwargs"] = self.added
        return out


def encode_prompts(base: BaseModel, prompts: list[str], device: torch.device | str = "cpu",
                   resolution: int | None = None, grad: bool = False) -> Conditioning:
    """Encode prompts with the model's text encoder(s). The empty prompt "" gives
    the unconditional embedding used for classifier-free guidance. With ``grad`` the result is
    differentiable in the text encoders' weights (an edit of the encoder trains through it);
    otherwise no graph is kept."""
    with torch.set_grad_enabled(grad):
        pipe = base.pipeline
        # Encode where the text encoder lives (it is the caller's: never moved), then move the result.
        encoder = pipe.text_encoder if pipe.text_encoder is not None else pipe.text_encoder_2
        here = encoder.device
        if base.uses_added_conditioning:
            hidden, _, pooled, _ = pipe.encode_prompt(
                prompts, device=here, num_images_per_prompt=1, do_classifier_free_guidance=False)
            size = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
            projection = pipe.text_encoder_2.config.projection_dim
            time_ids = pipe._get_add_time_ids((size, size), (0, 0), (size, size), dtype=hidden.dtype,
                                              text_encoder_projection_dim=projection)
            added = {"text_embeds": pooled, "time_ids": time_ids.to(here).repeat(len(prompts), 1)}
            return Conditioning(hidden, added).to(device)
        hidden, _ = pipe.encode_prompt(prompts, device=here, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return Conditioning(hidden).to(device)
