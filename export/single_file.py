"""One .safetensors in the original Stable Diffusion checkpoint layout (what A1111 and ComfyUI
load, and what diffusers' ``from_single_file`` reads): the edited UNet, the base's VAE and text
encoder, under the CompVis/LDM names.

    >>> esd_sdk.export("erased-circle", format="single-file")          # -> erased-circle.safetensors
    >>> StableDiffusionPipeline.from_single_file("erased-circle.safetensors", config="BASE_DIR")

Layout (SD 1.x):
    model.diffusion_model.*        the UNet (input_blocks / middle_block / output_blocks)
    first_stage_model.*            the VAE (encoder.down / mid / decoder.up, 1x1-conv attention)
    cond_stage_model.transformer.* the CLIP text encoder (transformers' own names)

The names follow the LDM code's module tree, derived here block by block from the diffusers
config (layers per block, which blocks have attention), so any SD-1.x-shaped model maps,
whatever its size. SD 2.x and SDXL checkpoints store their OpenCLIP text encoders in another
layout (fused q/k/v, ``resblocks``); they are refused with a one-line error for now.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import UnsupportedModelError
from ..files import atomic_file, check_output
from .pipeline import assemble

logger = logging.getLogger(__name__)

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


@dataclass
class SingleFileExport:
    """What `export_single_file` returns."""

    path: Path
    tensors: int
    bytes: int

    def describe(self) -> str:
        return (f"wrote {self.path} ({self.tensors} tensors, {self.bytes / 1e6:.1f} MB, original SD layout); load it "
                "with StableDiffusionPipeline.from_single_file (or A1111 / ComfyUI)")


def _rename(name: str, table: dict[str, str]) -> str:
    """Replace the first path component(s) of ``name`` found in ``table`` (e.g. resnet layers)."""
    for old, new in table.items():
        if name.startswith(old + "."):
            return new + name[len(old):]
    return name


def unet_names(unet) -> dict[str, str]:
    """diffusers UNet2DConditionModel parameter name -> LDM name (without the model prefix)."""
    cfg = unet.config
    layers = cfg.layers_per_block
    if not isinstance(layers, int):
        raise UnsupportedModelError("single-file export needs the same layers_per_block in every block")
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    prefixes = dict(fixed)
    for b in range(len(cfg.down_block_types)):
        for j in range(layers):
            i = 1 + b * (layers + 1) + j
            prefixes[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{i}.0"
            prefixes[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{i}.1"
        prefixes[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{1 + b * (layers + 1) + layers}.0.op"
    for b, kind in enumerate(cfg.up_block_types):
        for j in range(layers + 1):
            prefixes[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{b * (layers + 1) + j}.0"
            prefixes[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{b * (layers + 1) + j}.1"
        upsampler_slot = 2 if "CrossAttn" in kind else 1
        prefixes[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{b * (layers + 1) + layers}.{upsampler_slot}.conv"
    prefixes.update({"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
                     "mid_block.resnets.1": "middle_block.2"})
    names = {}
    for name in unet.state_dict():
        prefix = max((p for p in prefixes if name.startswith(p + ".")), key=len, default=None)
        if prefix is None:
            raise UnsupportedModelError(f"single-file export cannot place the UNet tensor {name}")
        rest = name[len(prefix) + 1:]
        names[name] = f"{prefixes[prefix]}.{_rename(rest, RESNET) if '.resnets.' in name else rest}"
    return names


def vae_tensors(vae) -> dict[str, torch.Tensor]:
    """The VAE's tensors under LDM names; attention projections become 1x1 convolutions."""
    n_up = len(vae.config.up_block_types)
    out = {}
    for name, tensor in vae.state_dict().items():
        new = name
        for part, ldm in (("encoder", "encoder"), ("decoder", "decoder")):
            if not name.startswith(part + "."):
                continue
            rest = name[len(part) + 1:]
            if rest.startswith("down_blocks."):
                _, b, kind, j, tail = rest.split(".", 4)
                rest = f"down.{b}.downsample.{tail}" if kind == "downsamplers" else f"down.{b}.block.{j}.{tail}"
            elif rest.startswith("up_blocks."):
                _, b, kind, j, tail = rest.split(".", 4)
                b = n_up - 1 - int(b)  # LDM's decoder counts up-blocks from the lowest resolution's end
                rest = f"up.{b}.upsample.{tail}" if kind == "upsamplers" else f"up.{b}.block.{j}.{tail}"
            elif rest.startswith("mid_block.resnets."):
                _, _, j, tail = rest.split(".", 3)
                rest = f"mid.block_{int(j) + 1}.{tail}"
            elif rest.startswith("mid_block.attentions.0."):
                rest = "mid.attn_1." + _rename(rest[len("mid_block.attentions.0."):], VAE_ATTENTION)
                if tensor.dim() == 2:
                    tensor = tensor[:, :, None, None]
            rest = rest.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
            new = f"{ldm}.{rest}"
        out["first_stage_model." + new] = tensor
    return out


def checkpoint_tensors(pipeline) -> dict[str, torch.Tensor]:
    """Every tensor of an SD 1.x pipeline under the original checkpoint's names."""
    tensors = {f"model.diffusion_model.{new}": pipeline.unet.state_dict()[old]
               for old, new in unet_names(pipeline.unet).items()}
    tensors.update(vae_tensors(pipeline.vae))
    tensors.update({f"cond_stage_model.transformer.{k}": v for k, v in pipeline.text_encoder.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def export_single_file(source: str | Path, out: str | Path, *, overwrite: bool = False) -> SingleFileExport:
    """Write the erase output ``source`` (its base with the edited UNet) as one .safetensors file."""
    out = check_output(out, overwrite)
    if out.suffix != ".safetensors":
        raise UnsupportedModelError(f"a single-file checkpoint is a .safetensors file: got --out {out}")
    base, manifest = assemble(source)
    if base.family not in ("sd1", "toy", "custom") or getattr(base.pipeline, "text_encoder_2", None) is not None:
        raise UnsupportedModelError(
            f"single-file export writes the SD 1.x layout; {base.describe()} needs the OpenCLIP text-encoder layout "
            "(SD 2.x / SDXL), not supported yet: export --format pipeline instead")
    tensors = checkpoint_tensors(base.pipeline)
    with atomic_file(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "esd_base_model": manifest["base_model"],
                                               "esd_concepts": ",".join(manifest["concepts"]),
                                               "esd_method": manifest["method"]})
    logger.info("wrote %s (%d tensors)", out, len(tensors))
    return SingleFileExport(out, len(tensors), out.stat().st_size)
