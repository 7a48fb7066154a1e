"""Train the bundled toy text-to-image model and its judge, reproducibly from a seed.

    python -m esd_sdk.toy.train --out esd_sdk/toy/model            # everything (~1 h on 2 CPU cores)
    python -m esd_sdk.toy.train --out DIR --stage unet --unet-steps 200   # one stage, e.g. a smoke run

Stages, each reading what the earlier ones wrote into --out:
  tokenizer  a CLIP byte-level BPE tokenizer whose merges make every world word one token
  vae        a small AutoencoderKL, 32x32x3 <-> 16x16x4, and the latent scaling factor
  judge      the classifier used to count concepts (see judge.py)
  unet       UNet2DConditionModel + CLIPTextModel, jointly, epsilon-prediction, with EMA
The result is a StableDiffusionPipeline directory (model_index.json, tokenizer/, text_encoder/,
vae/, unet/, scheduler/) plus judge/.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import world
from .judge import Judge

logger = logging.getLogger("esd_sdk.toy.train")

MAX_LENGTH = 16  # tokens, including <|startoftext|> and <|endoftext|>

# Architecture of the toy model (kept here so the script is the single source of truth).
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=world.IMAGE_SIZE,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=16,
)
UNET_CONFIG = dict(
    sample_size=world.IMAGE_SIZE // 2, in_channels=4, out_channels=4,
    # Cross-attention at 8x8 and 4x4 only: attention over 16x16 tokens doubled the step time.
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(48, 96, 96), layers_per_block=1, cross_attention_dim=64,
    attention_head_dim=8, norm_num_groups=16,
)
TEXT_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH, projection_dim=64,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)


# ----------------------------------------------------------------------------- tokenizer

def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges until every word is a single token. Ties break lexicographically."""
    seqs = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in words]
    merges = []
    while True:
        counts = Counter(p for s in seqs for p in zip(s, s[1:]))
        if not counts:
            return merges
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        merged = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == pair:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            merged.append(tuple(out))
        seqs = merged


def build_tokenizer(out: Path):
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    base = list(bytes_to_unicode().values())
    merges = _learn_merges(world.vocabulary())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    directory = out / "tokenizer"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                              model_max_length=MAX_LENGTH, pad_token="<|endoftext|>")
    tokenizer.save_pretrained(directory)
    for word in world.vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    return tokenizer


# ----------------------------------------------------------------------------- VAE

def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) in [0, 1]


def train_vae(out: Path, steps: int, seed: int, batch_size: int = 32):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    t0 = time.time()
    for step in range(steps):
        lr = 1e-3 * min(1.0, (step + 1) / 100) * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.95 + 0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        images = _to_tensor(world.render_batch(rng, batch_size)[0]) * 2 - 1
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = F.mse_loss(recon, images) + 0.1 * F.l1_loss(recon, images)
        kl = posterior.kl().mean() / images[0].numel()
        loss = rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            logger.info("vae step %d/%d rec %.5f kl %.2f (%.0fs)", step, steps, rec.item(), kl.item(), time.time() - t0)
    vae.eval()
    with torch.no_grad():
        images = _to_tensor(world.render_batch(np.random.default_rng(seed + 1), 512)[0]) * 2 - 1
        latents = vae.encode(images).latent_dist.mean
        recon = vae.decode(latents).sample
        logger.info("vae held-out mse %.5f, latent std %.3f", F.mse_loss(recon, images).item(), latents.std().item())
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.save_pretrained(out / "vae")
    return vae


# ----------------------------------------------------------------------------- judge

def _judge_batch(rng: np.random.Generator, vae, n: int):
    """Renders, a third clean, a third noisy/blurred, a third VAE round-tripped (+noise)."""
    images, labels = world.render_batch(rng, n, p_none=0.12)
    x = _to_tensor(images)
    k = n // 3
    noise = torch.from_numpy(rng.uniform(0, 0.12, size=(n, 1, 1, 1)).astype(np.float32))
    x[k:2 * k] = x[k:2 * k] + noise[k:2 * k] * torch.randn_like(x[k:2 * k])
    blur = F.avg_pool2d(F.pad(x[k:k + k // 2], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x[k:k + k // 2] = blur
    with torch.no_grad():
        x[2 * k:] = (vae.decode(vae.encode(x[2 * k:] * 2 - 1).latent_dist.sample()).sample + 1) / 2
    x[2 * k:] = x[2 * k:] + noise[2 * k:] * 0.5 * torch.randn_like(x[2 * k:])
    # Colour/brightness jitter everywhere: generated colours are never exact.
    gain = torch.from_numpy(rng.uniform(0.85, 1.15, size=(n, 3, 1, 1)).astype(np.float32))
    x = (x * gain).clamp(0, 1)
    target = [torch.from_numpy(a) for a in (labels.object, labels.colour, labels.style)]
    return x, target


def judge_accuracy(judge: Judge, images: np.ndarray, labels: world.Labels) -> dict[str, float]:
    v = judge.judge(images)
    obj = np.array([world.JUDGE_OBJECT_NAMES.index(o) for o in v.object])
    has = labels.object < len(world.OBJECT_NAMES)
    col = np.array([world.COLOUR_NAMES.index(c) for c in v.colour])
    sty = np.array([world.STYLE_NAMES.index(s) for s in v.style])
    return {
        "object": float((obj == labels.object).mean()),
        "colour": float((col == labels.colour)[has].mean()),
        "style": float((sty == labels.style)[has].mean()),
    }


def train_judge(out: Path, steps: int, seed: int, batch_size: int = 96):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 2)
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, (obj, col, sty) = _judge_batch(rng, vae, batch_size)
        lo, lc, ls = judge(x)
        has = obj < len(world.OBJECT_NAMES)
        loss = F.cross_entropy(lo, obj) + F.cross_entropy(lc[has], col[has]) + F.cross_entropy(ls[has], sty[has])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            logger.info("judge step %d/%d loss %.4f (%.0fs)", step, steps, loss.item(), time.time() - t0)
    judge.eval()
    images, labels = world.render_batch(np.random.default_rng(seed + 3), 2000, p_none=0.1)
    acc = judge_accuracy(judge, images, labels)
    logger.info("judge held-out accuracy on clean renders: %s", acc)
    judge.save_pretrained(out / "judge")
    (out / "judge" / "metrics.json").write_text(json.dumps({"held_out_clean": acc, "steps": steps, "seed": seed}, indent=2) + "\n")
    return judge


# ----------------------------------------------------------------------------- UNet + text encoder

def _encode_dataset(vae, rng: np.random.Generator, n: int):
    """Render n images, return posterior means/stds of their latents and their labels."""
    means, stds, labels = [], [], []
    with torch.no_grad():
        for start in range(0, n, 1000):
            images, lab = world.render_batch(rng, min(1000, n - start))
            dist = vae.encode(_to_tensor(images) * 2 - 1).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
            labels.append(np.stack([lab.object, lab.colour, lab.style], 1))
    return torch.cat(means), torch.cat(stds), np.concatenate(labels)


def train_unet(out: Path, steps: int, seed: int, batch_size: int = 32, lr: float = 5e-4, n_images: int = 20000,
               ema_decay: float = 0.999, save_every: int = 1000):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 4)
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    scale = vae.config.scaling_factor
    means, stds, labels = _encode_dataset(vae, rng, n_images)
    logger.info("encoded %d training images", len(means))

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one", "steps_offset")})
    logger.info("unet %.2fM params, text encoder %.2fM params",
                sum(p.numel() for p in unet.parameters()) / 1e6, sum(p.numel() for p in text_encoder.parameters()) / 1e6)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    token_cache: dict[str, list[int]] = {}

    def tokens(captions: list[str]) -> torch.Tensor:
        for c in captions:
            if c not in token_cache:
                token_cache[c] = tokenizer(c, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
        return torch.tensor([token_cache[c] for c in captions])

    def save(tag: str):
        _save_pipeline(out, tokenizer, ema_text, ema_unet)
        logger.info("saved EMA weights (%s)", tag)

    t0 = time.time()
    for step in range(steps):
        # -- learning rate: linear warm-up, cosine decay to 5%
        frac = step / steps
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 200) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        # -- batch: latents sampled from the posterior, a fresh caption per image
        idx = torch.from_numpy(rng.integers(0, len(means), size=batch_size))
        latents = (means[idx] + stds[idx] * torch.randn_like(means[idx])) * scale  # (B, 4, 16, 16)
        captions = [world.caption(rng, *labels[i]) for i in idx.tolist()]
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,))
        noisy = noise_scheduler.add_noise(latents, noise, t)
        # -- forward / backward
        context = text_encoder(tokens(captions))[0]  # (B, L, 64)
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # -- EMA, with a warm-up so early weights do not dominate
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for src, dst in ((unet, ema_unet), (text_encoder, ema_text)):
                for p, e in zip(src.parameters(), dst.parameters()):
                    e.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            logger.info("unet step %d/%d loss %.4f lr %.2e (%.2fs/step)", step, steps, loss.item(),
                        opt.param_groups[0]["lr"], (time.time() - t0) / (step + 1))
        if (step + 1) % save_every == 0 or step == steps - 1:
            save(f"step {step + 1}")
    meta = {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "train_seconds": round(time.time() - t0)}
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


def _save_pipeline(out: Path, tokenizer, text_encoder, unet):
    from diffusers import DDIMScheduler

    text_encoder.save_pretrained(out / "text_encoder")
    unet.save_pretrained(out / "unet")
    if not (out / "scheduler" / "scheduler_config.json").exists():
        DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.39.0",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--stage", choices=["all", "tokenizer", "vae", "judge", "unet"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--judge-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=7000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--n-images", type=int, default=20000, help="renders the UNet trains on")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("all", "tokenizer"):
        build_tokenizer(args.out)
    if args.stage in ("all", "vae"):
        train_vae(args.out, args.vae_steps, args.seed)
    if args.stage in ("all", "judge"):
        train_judge(args.out, args.judge_steps, args.seed)
    if args.stage in ("all", "unet"):
        train_unet(args.out, args.unet_steps, args.seed, batch_size=args.batch_size, lr=args.lr,
                   n_images=args.n_images)


if __name__ == "__main__":
    main()
