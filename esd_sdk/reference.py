"""A plain, line-by-line implementation of the ESD update, kept as a yardstick.

Two full fp32 UNets (a trained copy and a frozen copy), separate conditional and
unconditional calls, no batching, no checkpointing, no autocast: the algorithm as the
paper states it. The engine in `esd_sdk.training` must produce the same weights from the same
seed (tests check it), and `benchmarks/erase_bench.py` measures how much faster and leaner
the engine is. It consumes random numbers in the engine's order so the two stay comparable.
"""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

from .conditioning import encode_prompts
from .config import EraseConfig
from .loading import BaseModel
from .selection import select_parameters


class ReferenceESD:
    """One ESD run held as plain objects; call `step()` repeatedly."""

    def __init__(self, base: BaseModel, config: EraseConfig, device: str | torch.device = "cpu"):
        from diffusers import DDIMScheduler

        config.validate()
        if config.preserve or config.regenerate_every != 1 or config.batch_size != 1:
            raise ValueError("the reference implements the paper's plain update only (no preserve, k=1, batch 1)")
        self.config, self.device = config, torch.device(device)
        self.unet = base.unet.to(self.device, torch.float32)
        self.frozen = copy.deepcopy(self.unet).requires_grad_(False)
        self.unet.requires_grad_(False)
        params = dict(self.unet.named_parameters())
        self.trained = [params[n] for n in select_parameters(self.unet, config.method).tensors]
        for p in self.trained:
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.trained, lr=config.lr)
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self.scheduler = DDIMScheduler.from_config(base.pipeline.scheduler.config)
        self.scheduler.set_timesteps(config.ddim_steps, device=self.device)
        cond = encode_prompts(base, [""] + config.concepts, self.device, config.resolution).to(self.device, torch.float32)
        self.uncond = cond.index([0])
        self.concepts = [cond.index([i]) for i in range(1, len(cond))]
        size = config.resolution or base.unet.config.sample_size * base.pipeline.vae_scale_factor
        f = base.pipeline.vae_scale_factor
        self.shape = (1, self.unet.config.in_channels, size // f, size // f)

    def step(self) -> float:
        """One Adam step on the mean loss of every concept, each on its own fresh x_t."""
        c, g = self.config, self.generator
        sampler = self.frozen if c.sampler == "frozen" else self.unet
        losses = []
        torch.randint(len(self.concepts), (1,), generator=g)  # the engine's per-step draw (see train_step)
        for concept in self.concepts:
            t_enc = int(torch.randint(c.ddim_steps, (1,), generator=g))
            with torch.no_grad():
                x = torch.randn(self.shape, generator=g).to(self.device) * self.scheduler.init_noise_sigma
                for t in self.scheduler.timesteps[:t_enc]:
                    e_u = sampler(x, t, **self.uncond.kwargs()).sample
                    e_c = sampler(x, t, **concept.kwargs()).sample
                    x = self.scheduler.step(e_u + c.sample_guidance * (e_c - e_u), t, x).prev_sample
                t = self.scheduler.timesteps[t_enc]
                e_0 = self.frozen(x, t, **self.uncond.kwargs()).sample
                e_p = self.frozen(x, t, **concept.kwargs()).sample
            e_n = self.unet(x, t, **concept.kwargs()).sample
            losses.append(F.mse_loss(e_n, e_0 - c.negative_guidance * (e_p - e_0)))
        loss = torch.stack(losses).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()
