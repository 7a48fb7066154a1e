"""Random-weight pipelines of real diffusers architectures, for tests and benchmarks.

Nothing here downloads anything: the tokenizer is the toy world's byte-level BPE (built on
the fly), every model is a real diffusers/transformers class with random weights. Speed and
memory do not depend on the weight values, so `sd1_unet_config()` (diffusers' default
UNet2DConditionModel config, which is SD 1.x's) gives SD-1.x-scale numbers without weights.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _tokenizer(directory: Path):
    from .toy.train import build_tokenizer

    return build_tokenizer(directory)


def _text_config(tokenizer, hidden: int, layers: int = 2, projection: int | None = None) -> dict:
    return dict(vocab_size=tokenizer.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=16,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, projection_dim=projection or hidden)


def tiny_unet_config(cross_attention_dim: int = 32) -> dict:
    return dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8)


def mid_unet_config() -> dict:
    """A mid-size UNet (~50M parameters, 32x32 latents): the UNet's weights, not the libraries,
    dominate memory, and its calls dominate time, as at SD scale (860M)."""
    return dict(sample_size=32, in_channels=4, out_channels=4, block_out_channels=(128, 256, 512),
                layers_per_block=1, cross_attention_dim=512, attention_head_dim=8, norm_num_groups=32,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def sd1_unet_config() -> dict:
    """The SD 1.x UNet (859.5M parameters): diffusers' default UNet2DConditionModel blocks, with
    SD 1.x's 64x64 latents and 768-wide CLIP text states (diffusers' defaults are None and 1280)."""
    return dict(sample_size=64, cross_attention_dim=768)


def build_random_sd(directory: str | Path, unet_config: dict | None = None, prediction_type: str = "epsilon",
                    seed: int = 0) -> Path:
    """Save a StableDiffusionPipeline with random weights to ``directory/model`` and return that path."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    directory = Path(directory)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(tiny_unet_config() if unet_config is None else unet_config))
    tokenizer = _tokenizer(directory / "_tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(tokenizer, unet.config.cross_attention_dim)))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8)[: 1 + _latent_factor_log2(unet)],
                        down_block_types=("DownEncoderBlock2D",) * (1 + _latent_factor_log2(unet)),
                        up_block_types=("UpDecoderBlock2D",) * (1 + _latent_factor_log2(unet)),
                        latent_channels=unet.config.in_channels, norm_num_groups=8)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(directory / "model")
    return directory / "model"


def _latent_factor_log2(unet) -> int:
    # 32x32 images for a 16x16 latent UNet (factor 2); SD-scale UNets (64x64 latents) use factor 8.
    return 3 if unet.config.sample_size >= 64 else 1


def build_random_sdxl(directory: str | Path, seed: int = 0) -> Path:
    """A tiny StableDiffusionXLPipeline with SDXL's added text/time conditioning."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = _tokenizer(directory / "_tokenizer")
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=32)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**_text_config(tokenizer, 32))),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(tokenizer, 32, projection=32))),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(directory / "model")
    return directory / "model"
