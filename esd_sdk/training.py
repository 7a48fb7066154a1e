"""The ESD erase engine: fine-tune a UNet so that it no longer produces a concept.

For a concept prompt c, each step (Gandikota et al. 2023, Eq. 4-5):
  1. t_enc ~ U{0..ddim_steps-1}; x_t is the latent after t_enc DDIM steps with classifier-free
     guidance from pure noise, conditioned on c, using the model being edited (the paper;
     upstream's code samples with the frozen model: sampler="frozen").
  2. t is the DDIM timestep x_t has reached (the noise level it is actually at).
  3. target = e*(x_t, t) - eta * (e*(x_t, c, t) - e*(x_t, t)) from the frozen model.
  4. loss = MSE(e(x_t, c, t), target), Adam on the selected tensors only.
With several concepts, every step does 1-3 for each concept (each with its own t_enc and x_t)
and averages their losses: one update never favours a concept, and the work of a run grows with
the number of concepts. Each concept's graph is freed by its own backward pass before the next
concept runs, so memory does not grow with the number of concepts.
Preserved prompts follow the frozen model's predictions on each concept's x_t (preserve_on
"concept"), on x_t from trajectories of their own ("own": where the kept concept's images are
made), or both.
The guided combination has coefficients that sum to one, so it is the same whether the model
predicts epsilon or v (v is affine in epsilon at fixed x_t): v-prediction models (SD 2.x) use
their raw outputs directly.

Where the time goes: step 1 is ~ddim_steps/2 guided UNet calls, so it runs batched (cond and
uncond in one call), without autograd, in the low precision. The frozen model is the same
module with the original values of the trained tensors swapped in (torch.func.functional_call),
so no second UNet is held; only the trained tensors get gradients.

Several processes (accelerate launch; see `esd_sdk.distributed`) share one global batch: each
denoises its own slice of it, and gradients are averaged before every Adam step.

Memory in bf16/fp16: autocast computes every Linear/Conv in the low precision, and it re-casts
frozen fp32 weights on every call (it caches casts only for leaf tensors that require grad).
So the engine stores the frozen Linear/Conv weights and biases in the low precision for the
run: the same values autocast would compute with (bit-identical predictions), half the memory,
and no per-call casts. Their exact fp32 values wait in an unlinked temporary file and are put
back when training ends (also on error or Ctrl-C); the trained tensors keep fp32 masters.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch.func import functional_call
from torch.nn import functional as F

from .conditioning import Conditioning, encode_prompts
from .artifact import CHECKPOINT_DIR, partial_dir, prepare_output, write_artifact
from .config import EraseConfig
from .distributed import Processes
from .errors import ConfigError, EraseInterrupted, NonFiniteLossError
from .files import atomic_dir
from .loading import BaseModel, load_base, weights_hash
from .selection import Selection, select_parameters

logger = logging.getLogger(__name__)


@dataclass
class EraseState:
    """What a finished (or interrupted) training run leaves in memory."""

    unet: torch.nn.Module  # the edited UNet, fp32
    config: EraseConfig
    selection: Selection
    original: dict[str, torch.Tensor]  # name -> original value of each trained tensor (fp32, CPU)
    base_hash: str
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    step: int = 0
    processes: int = 1  # data-parallel processes; the global batch is processes x config.batch_size


@dataclass
class EraseResult:
    """What `esd_sdk.erase` returns: the edited UNet, how it was trained, and where it was written."""

    state: EraseState
    output_dir: Path | None = None  # the erase output directory, when one was written
    manifest: dict | None = None  # its esd.json

    @property
    def unet(self) -> torch.nn.Module:
        return self.state.unet

    @property
    def config(self) -> EraseConfig:
        return self.state.config

    @property
    def losses(self) -> list[float]:
        return self.state.losses

    @property
    def seconds(self) -> float:
        return self.state.seconds


@dataclass(frozen=True)
class StepEnd:
    """What ``callback_on_step_end`` is given after each training step (on every process).

    ``trained`` are the live trained tensors (fp32 masters, by name as in ``unet.named_parameters()``):
    copy what you keep, since the next step changes them. ``unet`` is the model being trained (in a
    bf16/fp16 run its frozen layers are stored in that precision until training ends). Raise ``KeyboardInterrupt`` from the
    callback to stop after this step as Ctrl-C does: a checkpoint is written when there is an output
    directory, `EraseInterrupted` is raised, and ``resume=True`` continues exactly.
    """

    step: int  # steps done, 1..steps
    steps: int
    loss: float
    seconds: float  # since training started (this run, not counting a resumed run's earlier part)
    unet: torch.nn.Module
    trained: dict[str, torch.nn.Parameter]


class _LowPrecisionFrozen:
    """Frozen Linear/Conv weights and biases stored in the autocast dtype while training.

    Autocast would cast them to that dtype on every call anyway, so predictions are unchanged.
    The exact fp32 originals are written, one tensor at a time, to an unlinked temporary file
    and read back by `restore`. The other fp32 tensors (norms, trained tensors) are re-homed in
    fresh memory so that nothing keeps the loader's buffer (e.g. a memory map of the whole
    checkpoint) alive.
    """

    LAYERS = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype, trained: set[int]):
        self.file = tempfile.TemporaryFile(prefix="esd-fp32-")
        self.entries: list[tuple[torch.nn.Parameter, int, torch.Size]] = []
        seen: set[int] = set()
        try:
            for layer in module.modules():
                if not isinstance(layer, self.LAYERS):
                    continue
                for p in layer.parameters(recurse=False):
                    if id(p) in seen or id(p) in trained or p.dtype != torch.float32:
                        continue
                    seen.add(id(p))
                    cpu = p.detach().to("cpu").contiguous()
                    offset = self.file.tell()
                    self.file.write(memoryview(cpu.numpy()).cast("B"))
                    self.entries.append((p, offset, p.shape))
                    p.data = p.data.to(dtype)
            with torch.no_grad():
                for t in [*module.parameters(), *module.buffers()]:
                    if id(t) not in seen:
                        t.data = t.data.clone()
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        """Put the exact fp32 values back (idempotent)."""
        for p, offset, shape in self.entries:
            exact = torch.empty(shape, dtype=torch.float32)
            self.file.seek(offset)
            self.file.readinto(memoryview(exact.numpy()).cast("B"))
            p.data = exact.to(p.device)
        self.entries = []
        self.file.close()


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Trainer:
    """Holds the pieces of one erase run; `train` runs its steps."""

    def __init__(self, base: BaseModel, unet: torch.nn.Module, config: EraseConfig, device: torch.device,
                 checkpoint_dir: Path | None, processes: Processes | None = None):
        self.base, self.config, self.device = base, config, device
        self.checkpoint_dir = checkpoint_dir
        self.processes = processes or Processes()
        if config.robust and self.processes.world > 1:
            raise ConfigError("robust ESD runs in one process: launch it without accelerate (or --processes 1)")
        self.unet = unet.to(device)
        if self.unet.dtype != torch.float32:
            self.unet.to(dtype=torch.float32)  # fp32 master weights; autocast does the low precision
        self.unet.requires_grad_(False)
        self.unet.eval()  # no dropout in SD UNets, but be explicit: predictions must be deterministic
        self.base_hash = weights_hash(self.unet)
        self.selection = select_parameters(self.unet, config.method)
        params = dict(self.unet.named_parameters())
        self.trained = {name: params[name] for name in self.selection.tensors}
        for p in self.trained.values():
            p.requires_grad_(True)
        self.original = {name: p.detach().to("cpu", copy=True) for name, p in self.trained.items()}
        # Frozen values for the frozen forward passes. Under autocast every selected layer
        # (Linear/Conv2d) computes in the low precision anyway, so keep them in it: half the memory.
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        only_layers = config.method in ("x", "x-strict", "u", "self", "all")
        frozen_dtype = low if (low is not None and only_layers) else torch.float32
        self.frozen = {n: v.to(device=device, dtype=frozen_dtype) for n, v in self.original.items()}
        self.low_store = _LowPrecisionFrozen(self.unet, low, {id(p) for p in self.trained.values()}) if low else None
        use_ckpt = config.gradient_checkpointing if config.gradient_checkpointing is not None else device.type == "cuda"
        if use_ckpt:
            self.unet.enable_gradient_checkpointing()
        self.optimizer = torch.optim.Adam(self.trained.values(), lr=config.lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        # Scheduler for the x_t trajectories: DDIM over the model's own training schedule.
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler.from_config(base.pipeline.scheduler.config)
        self.scheduler.set_timesteps(config.ddim_steps, device=device)
        # Conditioning, encoded once: [uncond, concepts..., each preserved prompt in each preserve template...,
        # each concept in each concept template... (none with "{}" alone: the concepts themselves)]
        kept = [t.replace("{}", p) for p in config.preserve for t in config.preserve_templates]
        erased = [] if config.concept_templates == ["{}"] else [
            t.replace("{}", c) for c in config.concepts for t in config.concept_templates]
        prompts = [""] + config.concepts + kept + erased
        cond = encode_prompts(base, prompts, device, config.resolution).to(device, torch.float32)
        rows = lambda start, n: cond.index(list(range(start, start + n)))  # noqa: E731
        self.uncond, self.concepts = cond.index([0]), rows(1, len(config.concepts))
        self.preserve = rows(1 + len(config.concepts), len(kept)) if config.preserve else None
        # what the ESD term holds, in turns (`_turns`): the concepts in their templates
        self.erased = rows(len(prompts) - len(erased), len(erased)) if erased else self.concepts
        size = config.resolution or self.unet.config.sample_size * base.pipeline.vae_scale_factor
        scale = base.pipeline.vae_scale_factor
        if size % scale:
            raise ConfigError(f"resolution {size} is not a multiple of the VAE's factor {scale}")
        self.latent_shape = (config.batch_size, self.unet.config.in_channels, size // scale, size // scale)
        # concept -> (ddim_steps, B, C, h, w), when regenerate_every > 1 (latents only: small next to the UNet)
        self.trajectories: dict[int, torch.Tensor] = {}
        self.losses: list[float] = []
        self.step = 0
        self.stop = False  # a process was asked to stop (Ctrl-C, SIGTERM): all stop after this step
        self.adversary = _Adversary(self) if config.robust else None

    # -- model calls ----------------------------------------------------------------------

    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, frozen: bool) -> torch.Tensor:
        kwargs = cond.kwargs()
        if frozen:
            return functional_call(self.unet, self.frozen, (x, t), kwargs).sample
        return self.unet(x, t, **kwargs).sample

    def _noise(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Starting noise for the whole global batch (each process denoises its slice), from
        ``generator`` [the trainer's shared one]."""
        shape = (self.processes.world * self.latent_shape[0], *self.latent_shape[1:])
        return torch.randn(shape, generator=generator or self.generator)

    @torch.no_grad()
    def _sample(self, concept: Conditioning, n_steps: int, keep_all: bool = False, frozen: bool | None = None,
                generator: torch.Generator | None = None):
        """Run n_steps guided DDIM steps from fresh noise; returns x (or every intermediate x).
        ``concept``: one row for every trajectory, or one per trajectory. The model is the one being
        edited, or the frozen one with ``sampler="frozen"`` (or ``frozen``). The noise comes from
        ``generator`` [the trainer's]."""
        c = self.config
        x = self.processes.shard(self._noise(generator)).to(self.device) * self.scheduler.init_noise_sigma
        b = x.shape[0]
        cond = Conditioning.cat([self.uncond.index([0] * b), concept if len(concept) == b else concept.index([0] * b)])
        frozen = c.sampler == "frozen" if frozen is None else frozen
        states = []
        for t in self.scheduler.timesteps[:n_steps]:
            if keep_all:
                states.append(x)
            with _autocast(self.device, c.precision):
                eps = self._predict(torch.cat([x, x]), t, cond, frozen).float()  # (2B, C, h, w)
            e_u, e_c = eps.chunk(2)
            x = self.scheduler.step(e_u + c.sample_guidance * (e_c - e_u), t, x).prev_sample
        return torch.stack(states) if keep_all else x

    def _draw_x_t(self, key: int, prompt: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t at a random point t_enc of ``prompt``'s trajectory (fresh, or the one kept under
        ``key`` when trajectories are reused), and the DDIM timestep it has reached."""
        c = self.config
        t_enc = int(torch.randint(c.ddim_steps, (1,), generator=self.generator))
        if c.regenerate_every == 1:
            x = self._sample(prompt, t_enc)
        else:
            if key not in self.trajectories or self.step % c.regenerate_every == 0:
                self.trajectories[key] = self._sample(prompt, c.ddim_steps, keep_all=True)
            x = self.trajectories[key][t_enc]
        return x, self.scheduler.timesteps[t_enc]

    # -- one optimisation step --------------------------------------------------------------

    def concept_loss(self, k: int) -> torch.Tensor:
        """The ESD loss of concept ``k`` on a fresh x_t (plus its preservation and robust terms)."""
        c = self.config
        # 1. x_t at a random point of the concept's trajectory (each row's in its concept template)
        b, n = self.latent_shape[0], len(c.concept_templates)
        concept = self.erased.index(self._turns(k, b, n))
        x, t = self._draw_x_t(k * n + self.step * b % n, concept)  # reused trajectories: one per template of row 0
        n_keep = len(c.preserve) if self.preserve is not None and c.preserve_on != "own" else 0

        # 2. frozen predictions: unconditional, concept, and each preserved prompt, in one batch
        parts = [self.uncond.index([0] * b), concept]
        if n_keep:
            parts += [self.preserve.index(self._turns(i, b, len(c.preserve_templates))) for i in range(n_keep)]
        with torch.no_grad(), _autocast(self.device, c.precision):
            frozen = self._predict(x.repeat(2 + n_keep, 1, 1, 1), t, Conditioning.cat(parts), frozen=True).float()
        e_0, e_c = frozen[:b], frozen[b:2 * b]
        target = e_0 - c.negative_guidance * (e_c - e_0)

        # 3. the edited model's predictions for the concept (and preserved prompts, and the
        #    adversarial prompt of robust ESD, which must follow the same target), with autograd
        edit_parts = parts[1:]
        adversarial = self.adversary is not None and self.adversary.active(self.step)
        if adversarial:
            replay = self.adversary.replayed(k, self.step, b)  # a past adversarial word (robust_pool), before the refresh
            edit_parts = edit_parts + [self.adversary.conditioning(k, self.step, x, t, e_c)] + replay
        with _autocast(self.device, c.precision):
            pred = self._predict(x.repeat(len(edit_parts), 1, 1, 1), t, Conditioning.cat(edit_parts), frozen=False).float()
        loss = F.mse_loss(pred[:b], target)
        if n_keep:
            loss = loss + c.preserve_weight * F.mse_loss(pred[b:(1 + n_keep) * b], frozen[2 * b:])
        if adversarial:
            for i in range(1 + n_keep, len(edit_parts)):  # the current adversarial word, then a replayed one
                loss = loss + c.robust_weight * F.mse_loss(pred[i * b:(i + 1) * b], target)
        return loss

    def _turns(self, j: int, b: int, n: int) -> list[int]:
        """Which encoded prompt stands for prompt ``j`` (encoded in ``n`` templates, j's first) in each of
        a step's ``b`` rows: row i of step s takes template (s * b + i) mod n, so every template takes
        turns even at batch size 1."""
        return [j * n + (self.step * b + i) % n for i in range(b)]

    def keep_loss(self, j: int) -> torch.Tensor:
        """Preserved prompt ``j`` held to the frozen model on x_t from its own trajectory
        (``preserve_on`` own or both): where the kept concept's images are actually made. With
        several preserve templates, step s's trajectory is made and held in template s mod T."""
        c = self.config
        row = self._turns(j, 1, len(c.preserve_templates))[0]
        keep = self.preserve.index([row])
        x, t = self._draw_x_t(-1 - row, keep)  # preserved prompts' trajectories sit beside the concepts' (0, 1, ...)
        cond = keep.index([0] * x.shape[0])
        with torch.no_grad(), _autocast(self.device, c.precision):
            goal = self._predict(x, t, cond, frozen=True).float()
        with _autocast(self.device, c.precision):
            pred = self._predict(x, t, cond, frozen=False).float()
        return c.preserve_weight * F.mse_loss(pred, goal)

    def train_step(self) -> float:
        """One Adam step on the mean loss of every concept, averaged over processes."""
        n = len(self.config.concepts)
        # One draw per step, as when each step picked one random concept: a seeded single-concept
        # erase keeps the random stream (and so the result) of earlier versions, which the toy
        # defaults were tuned on (ESD-u's interference with the toy's square sits near a threshold).
        torch.randint(n, (1,), generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for k in range(n):
            loss = self.concept_loss(k) / n
            self.scaler.scale(loss).backward()  # frees this concept's graph: memory flat in n
            total += loss.detach()
        if self.preserve is not None and self.config.preserve_on != "concept":
            for j in range(len(self.config.preserve)):
                loss = self.keep_loss(j) / len(self.config.preserve)
                self.scaler.scale(loss).backward()
                total += loss.detach()
        loss, self.stop = self.processes.finish_step(list(self.trained.values()), total)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss} at step {self.step + 1}; the last good checkpoint is kept"
                f"{' in ' + str(self.checkpoint_dir) if self.checkpoint_dir else ''}: lower --lr or use --precision fp32")
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.losses.append(loss)
        return loss

    def lr_at(self, step: int) -> float:
        """The learning rate of (0-based) ``step``: a function of the step alone, so a resumed run
        continues the schedule exactly."""
        c = self.config
        if c.lr_schedule == "cosine":
            return c.lr * 0.5 * (1 + math.cos(math.pi * step / c.steps))
        return c.lr

    def release(self) -> None:
        """Training is over: the UNet gets its exact fp32 frozen weights back."""
        if self.low_store is not None:
            self.low_store.restore()
            self.low_store = None

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Everything needed to continue exactly: trained tensors, Adam moments, RNG, trajectories.
        Every process holds the same values but its own slice of the trajectories: those are
        gathered (so every process must call this), then rank 0 alone writes."""
        if self.checkpoint_dir is None:
            return
        trajectories = {k: self.processes.gather(v, dim=1) for k, v in sorted(self.trajectories.items())}
        if not self.processes.is_main:
            return
        tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in self.trained.items()}
        steps = {}
        for n, p in self.trained.items():
            state = self.optimizer.state.get(p)
            if state:
                tensors[f"exp_avg/{n}"] = state["exp_avg"].cpu().contiguous()
                tensors[f"exp_avg_sq/{n}"] = state["exp_avg_sq"].cpu().contiguous()
                steps[n] = float(state["step"])
        tensors["rng/generator"] = self.generator.get_state()
        if self.adversary is not None:
            tensors.update(self.adversary.state())
        for k, trajectory in trajectories.items():  # (ddim_steps, global batch, C, h, w)
            tensors[f"rng/trajectory/{k}"] = trajectory.cpu().contiguous()
        with atomic_dir(self.checkpoint_dir, overwrite=True) as tmp:
            save_file(tensors, str(tmp / "state.safetensors"))
            (tmp / "state.json").write_text(json.dumps({
                "step": self.step, "config": self.config.to_dict(), "base_hash": self.base_hash,
                "adam_steps": steps, "scaler": self.scaler.state_dict(), "losses": self.losses,
                "processes": self.processes.world,
            }) + "\n")

    def load_checkpoint(self) -> None:
        meta = json.loads((self.checkpoint_dir / "state.json").read_text())
        if meta["base_hash"] != self.base_hash:
            raise ConfigError(f"checkpoint in {self.checkpoint_dir} was made from another base model: "
                              "resume with the same --model, or start again with --overwrite")
        saved = EraseConfig.from_dict(meta["config"]).to_dict()
        ours = self.config.to_dict()
        changed = [k for k in saved if k not in ("steps", "checkpoint_every", "batch_size") and saved[k] != ours[k]]
        # The global batch fixes the random numbers; how it is split over processes does not.
        saved_processes = meta.get("processes", 1)
        if saved_processes * saved["batch_size"] != self.processes.world * self.config.batch_size:
            changed.append(f"processes x batch size ({saved_processes} x {saved['batch_size']})")
        if changed:
            raise ConfigError(f"cannot resume: {', '.join(changed)} differ from the checkpoint's; "
                              "use the same settings or start again with --overwrite")
        tensors = load_file(str(self.checkpoint_dir / "state.safetensors"))
        with torch.no_grad():
            for n, p in self.trained.items():
                p.copy_(tensors[f"param/{n}"])
                if n in meta["adam_steps"]:
                    self.optimizer.state[p] = {
                        "step": torch.tensor(meta["adam_steps"][n]),
                        "exp_avg": tensors[f"exp_avg/{n}"].to(self.device),
                        "exp_avg_sq": tensors[f"exp_avg_sq/{n}"].to(self.device),
                    }
        self.generator.set_state(tensors["rng/generator"])
        if self.adversary is not None:
            self.adversary.load_state(tensors)
        self.trajectories = {int(name.rsplit("/", 1)[1]): self.processes.shard(v, dim=1).to(self.device)
                             for name, v in tensors.items() if name.startswith("rng/trajectory/")}
        self.scaler.load_state_dict(meta["scaler"])
        self.step, self.losses = meta["step"], meta["losses"]
        logger.info("resumed from step %d", self.step)


class _Adversary:
    """The inner attack of robust ESD (AdvUnlearn, Zhang et al. 2024, with ESD's objective).

    For each concept it keeps an adversarial prompt: ``robust_tokens`` input embeddings in the
    text encoder's space, one word shared by ``robust_templates`` (by default the whole prompt, "{}"),
    which starts as the concept's own words and is refreshed every ``robust_every`` steps by
    ``robust_attack_steps`` steps of the embedding attack (`esd_sdk.attack.embedding_attack`,
    warm-started) against the model being edited, on latents of the concept in each template
    sampled once from the frozen model (``robust_objective="denoise"``), or by
    `esd_sdk.attack.match_attack` on the step's own x_t ("match", AdvUnlearn's objective: the edited
    model's prediction matched to the frozen model's for the concept). The trainer then asks the
    edited model's prediction for that prompt to follow the same negatively guided target as the concept's.
    Before ``robust_start`` of the steps the trainer is plain ESD: no attack, no adversarial term.
    """

    TEMPLATE = "{}"

    def __init__(self, trainer: "_Trainer"):
        from .attack import AttackTarget

        c = trainer.config
        self.trainer = trainer
        self.target = AttackTarget.from_pipeline(trainer.base.pipeline, unet=trainer.unet)
        self.target.resolution = trainer.latent_shape[-1] * trainer.base.pipeline.vae_scale_factor
        self.generator = torch.Generator().manual_seed(c.seed + 1)
        self.templates = list(c.robust_templates)
        # "denoise": each concept's latents the inner attack learns from, and the template of each one
        self.latents: list[torch.Tensor] = []
        self.prompts: list[str] = [t for t in self.templates for _ in range(c.robust_images)]
        if c.robust_objective == "denoise":
            self.latents = [self._concept_latents(k) for k in range(len(trainer.concepts))]
        self.soft: dict = {}  # concept -> its adversarial SoftPrompt
        self.cond: dict[int, Conditioning] = {}  # concept -> that prompt encoded (until the next refresh)
        self.pool: dict[int, list] = {}  # concept -> past (SoftPrompt, encoded) adversarial words (robust_pool), oldest first
        self.first_step = int(c.robust_start * c.steps)  # steps before it are plain ESD

    def _concept_latents(self, k: int) -> torch.Tensor:
        """``robust_images`` latents of concept ``k`` per template, sampled by the frozen model (CPU)."""
        t, c = self.trainer, self.trainer.config
        runs = -(-c.robust_images // c.batch_size)
        if self.templates == [self.TEMPLATE]:  # the concept's own prompt, already encoded; the trainer's noise
            prompts, generator = t.concepts.index([k]), None
        else:  # the adversary's noise, so that the trainer's stream stays the one-template erase's (below)
            words = [p.replace(self.TEMPLATE, c.concepts[k]) for p in self.templates]
            prompts = encode_prompts(t.base, words, t.device, c.resolution).to(t.device, torch.float32)
            generator = self.generator
            for _ in range(runs):  # what one template draws from it: a seed's plain ESD steps stay its own
                t._noise()
        return torch.cat([torch.cat([t._sample(prompts.index([i]), c.ddim_steps, frozen=True, generator=generator)
                                     for _ in range(runs)])[:c.robust_images].cpu() for i in range(len(self.templates))])

    def active(self, step: int) -> bool:
        """Whether the inner attack runs at ``step`` (from ``robust_start`` of the steps on)."""
        return step >= self.first_step

    def conditioning(self, k: int, step: int, x: torch.Tensor, t: torch.Tensor, e_c: torch.Tensor) -> Conditioning:
        """The adversarial prompt of concept ``k`` for each row of ``x`` (the templates in turn),
        refreshed against the current model when due ("match" attacks this step's x_t at timestep
        t, where the frozen model predicts e_c)."""
        from .attack import SoftPrompt, embedding_attack, init_vectors, match_attack

        c = self.trainer.config
        if k not in self.soft or step % c.robust_every == 0:
            with _autocast(self.trainer.device, c.precision):
                if c.robust_objective == "match":
                    start = self.soft.get(k) or SoftPrompt(
                        self.templates, init_vectors(self.target, 1, c.robust_tokens, c.concepts[k], self.generator), [0])
                    self.soft[k] = match_attack(self.target, x, t, e_c, start, steps=c.robust_attack_steps, lr=c.robust_lr)
                else:
                    self.soft[k] = embedding_attack(
                        self.target, self.latents[k], self.prompts, n_tokens=c.robust_tokens, shared=True,
                        steps=c.robust_attack_steps, lr=c.robust_lr, init=self.soft.get(k, c.concepts[k]),
                        batch_size=c.robust_batch, generator=self.generator)
            self.cond.pop(k, None)
        if k not in self.cond:
            self.cond[k] = self._encoded(self.soft[k])
        b = x.shape[0]  # row i of step s takes template (s * b + i) mod T: every one in turn, even at batch size 1
        return self.cond[k].index(self._rows(step, b))

    def _rows(self, step: int, b: int) -> list[int]:
        return [(step * b + i) % len(self.templates) for i in range(b)]

    @torch.no_grad()
    def _encoded(self, soft) -> Conditioning:
        """An adversarial word in its templates, encoded for the trainer (the text encoder is frozen)."""
        return soft.encode(self.target).to(self.trainer.device, torch.float32)

    def replayed(self, k: int, step: int, b: int) -> list[Conditioning]:
        """With ``robust_pool``: one past adversarial word of concept ``k`` for this step (the pool's
        members in turn; none while the pool is empty), then, every ``robust_pool_every`` robust steps,
        the current word joins the pool (the last ``robust_pool`` are kept). A list of zero or one."""
        c = self.trainer.config
        if not c.robust_pool:
            return []
        pool = self.pool.setdefault(k, [])
        out = [pool[step % len(pool)][1].index(self._rows(step, b))] if pool else []
        if k in self.soft and (step - self.first_step) % c.robust_pool_every == 0:
            word = self.soft[k].detach()
            pool.append((word, self._encoded(word)))
            del pool[:-c.robust_pool]
        return out

    def state(self) -> dict[str, torch.Tensor]:
        out = {"robust/generator": self.generator.get_state()}
        for k, soft in self.soft.items():
            for e, v in enumerate(soft.vectors):
                out[f"robust/soft/{k}/{e}"] = v.cpu().contiguous()
        for k, pool in self.pool.items():
            for j, (soft, _) in enumerate(pool):
                for e, v in enumerate(soft.vectors):
                    out[f"robust/pool/{k}/{j}/{e}"] = v.cpu().contiguous()
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        from .attack import SoftPrompt

        self.generator.set_state(tensors["robust/generator"])
        self.cond.clear()
        for k in range(len(self.trainer.concepts)):
            vectors = [tensors[f"robust/soft/{k}/{e}"] for e in range(len(self.target.text_encoders))
                       if f"robust/soft/{k}/{e}" in tensors]
            if vectors:
                self.soft[k] = SoftPrompt(self.templates, vectors, [0] * len(self.templates))
            pool = self.pool[k] = []
            while f"robust/pool/{k}/{len(pool)}/0" in tensors:
                word = SoftPrompt(self.templates, [tensors[f"robust/pool/{k}/{len(pool)}/{e}"]
                                                   for e in range(len(self.target.text_encoders))], [0] * len(self.templates))
                pool.append((word, self._encoded(word)))


def train(base: BaseModel, config: EraseConfig, device: str | torch.device | None = None,
          checkpoint_dir: Path | None = None, resume: bool = False, progress: bool = True,
          inplace: bool = False, processes: Processes | None = None,
          callback_on_step_end: Callable[[StepEnd], None] | None = None) -> EraseState:
    """Run the ESD optimisation and return the edited state.

    ``base.unet`` is left as it was: training runs on a copy, unless ``inplace=True`` (saves one
    UNet of memory at SD scale; then the returned UNet *is* ``base.unet``, edited). With
    ``checkpoint_dir``, a resumable checkpoint is written every ``config.checkpoint_every`` steps
    and on Ctrl-C or SIGTERM (at the end of the step); ``resume=True`` continues from it exactly.
    Under a launcher (``processes``, by default from the environment), each process trains on its
    slice of the global batch and rank 0 writes the checkpoints. ``callback_on_step_end`` is called
    with a `StepEnd` after every step (progress for a service, snapshots, an early stop).
    """
    from tqdm.auto import tqdm

    config.validate()
    processes = processes or Processes.from_environment(device)
    device = processes.device or torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unet = base.unet if inplace else copy.deepcopy(base.unet)
    trainer = _Trainer(base, unet, config, device, checkpoint_dir, processes)
    t0 = time.perf_counter()
    bar = None
    try:
        if resume:
            if checkpoint_dir is None or not (checkpoint_dir / "state.json").is_file():
                raise ConfigError(f"nothing to resume: no checkpoint in {checkpoint_dir}; run without --resume")
            trainer.load_checkpoint()
        logger.info("training %s on %d concept(s) in %d process(es)", trainer.selection.summary(),
                    len(config.concepts), processes.world)
        what = repr(config.concepts[0]) if len(config.concepts) == 1 else f"{len(config.concepts)} concepts"
        bar = tqdm(total=config.steps, initial=trainer.step, desc=f"ESD-{config.method} {what}",
                   disable=not progress or not processes.is_main, unit="step")
        with processes.stop_on_signals():
            while trainer.step < config.steps:
                loss = trainer.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}")
                if callback_on_step_end is not None:
                    callback_on_step_end(StepEnd(trainer.step, config.steps, loss, time.perf_counter() - t0,
                                                 trainer.unet, dict(trainer.trained)))
                if trainer.stop:
                    raise KeyboardInterrupt
                if config.checkpoint_every and trainer.step % config.checkpoint_every == 0 and trainer.step < config.steps:
                    trainer.save_checkpoint()
    except KeyboardInterrupt as e:
        # A stop shared by every process, at the end of a step: all save together. A raw Ctrl-C
        # inside a step of several processes cannot be shared: the last checkpoint stays.
        if trainer.stop or processes.world == 1:
            trainer.save_checkpoint()
            processes.barrier()  # the others wait for rank 0's checkpoint before exiting
        where = f"checkpoint in {checkpoint_dir}; continue with --resume" if checkpoint_dir else "no checkpoint directory"
        raise EraseInterrupted(f"interrupted at step {trainer.step}/{config.steps}: {where}") from e
    finally:
        if bar is not None:
            bar.close()
        trainer.release()
    for p in trainer.trained.values():
        p.requires_grad_(False)
    if hasattr(trainer.unet, "disable_gradient_checkpointing"):
        trainer.unet.disable_gradient_checkpointing()
    return EraseState(unet=trainer.unet, config=config, selection=trainer.selection, original=trainer.original,
                      base_hash=trainer.base_hash, losses=trainer.losses,
                      seconds=time.perf_counter() - t0, step=trainer.step, processes=processes.world)


def erase(model: str | Path | BaseModel, concepts: str | list[str] | None = None, method: str = "x",
          out: str | Path | None = None, *, config: EraseConfig | None = None, overwrite: bool = False,
          resume: bool = False, device: str | None = None, progress: bool = True, inplace: bool = False,
          callback_on_step_end: Callable[[StepEnd], None] | None = None, **overrides) -> EraseResult:
    """Erase ``concepts`` from ``model`` with ESD and, with ``out``, write the erase output directory.

        >>> result = esd_sdk.erase("toy", "circle", method="u", out="erased-circle")
        >>> result.unet            # the edited UNet; the base model is left as it was
        >>> result.manifest["training"]["seconds"]

    Args:
        model: a loaded `BaseModel`, or anything `load_base` takes ("toy", a directory, a hub id).
        concepts: prompt(s) naming what to erase.
        method: which tensors train: x, u, x-strict, self, all or re:REGEX (see `esd_sdk.selection`).
        out: directory for the edited UNet, its delta, manifest and model card (written atomically).
        config: a complete `EraseConfig` instead of ``concepts``/``method``/``overrides``.
        overwrite, resume: replace an existing ``out``; continue an interrupted run from its checkpoint.
        device: torch device (default: cuda if available).
        inplace: train ``model.unet`` itself instead of a copy (saves memory; the base is then edited).
        callback_on_step_end: called with a `StepEnd` (step, steps, loss, seconds, unet, trained
            tensors) after every step, e.g. to report progress from a service; raise
            ``KeyboardInterrupt`` in it to stop with a resumable checkpoint.
        **overrides: any `EraseConfig` setting (steps=, lr=, negative_guidance=, preserve=, ...). The
            others take the model's defaults (`EraseConfig.for_model`): the paper's, or the toy world's.

    Under ``accelerate launch`` every process calls this; they train together (``batch_size`` per
    process) and only rank 0 writes ``out`` (the others return a result without a manifest).
    """
    if config is not None and (concepts is not None or overrides):
        raise ConfigError("pass either config= or concepts and settings, not both")
    if config is None and concepts is None:
        raise ConfigError("nothing to erase: pass concepts, e.g. erase(model, \"van gogh\")")
    out = Path(out) if out is not None else None
    processes = Processes.from_environment(device)
    if out is not None:
        if processes.is_main:
            prepare_output(out, overwrite=overwrite, resume=resume)  # fail before any expensive work
        processes.barrier()  # the others start once a stale checkpoint is gone
    base = model if isinstance(model, BaseModel) else load_base(model)
    config = (config or EraseConfig.for_model(base, concepts, method, **overrides)).validate()
    ckpt = partial_dir(out) / CHECKPOINT_DIR if out is not None else None
    state = train(base, config, device=device, checkpoint_dir=ckpt, resume=resume, progress=progress, inplace=inplace,
                  processes=processes, callback_on_step_end=callback_on_step_end)
    if out is None:
        return EraseResult(state)
    manifest = write_artifact(out, base, state, overwrite=overwrite) if processes.is_main else None
    processes.barrier()  # nobody reports success before the output exists
    return EraseResult(state, out, manifest)
