"""EraseConfig: every setting of an ESD erase, with the paper's defaults, saved into each artifact."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .loading import BaseModel

PRECISIONS = ("fp32", "bf16", "fp16")
SAMPLERS = ("edited", "frozen")
PRESERVE_ON = ("concept", "own", "both")
LR_SCHEDULES = ("constant", "cosine")
ROBUST_OBJECTIVES = ("denoise", "match")

# Tuned against the toy world's judge (benchmarks/toy_erasure.py; figures in README): the
# toy UNet is tiny, so fewer, larger steps; 4 trajectories a step steady the noisy single-sample
# gradient; 10 DDIM steps keep a whole erase well under a minute on 2 CPU cores. ESD-x trains
# only the cross-attention of two small blocks and needs a 10x larger step than ESD-u.
TOY_DEFAULTS = dict(steps=100, ddim_steps=10, batch_size=4)
TOY_LR = {"x": 2e-3, "x-strict": 2e-3}
TOY_LR_OTHER = 2e-4


def read_concepts(path: str | Path) -> list[str]:
    """Concepts listed in a file: one prompt a line (blank lines and # comments skipped), or a
    CSV with a ``concept`` column (the bundled prompt sets' format; each concept once, in order)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the concepts file {path} ({e}): pass a UTF-8 text or CSV file") from e
    if path.suffix.lower() == ".csv":
        import csv

        rows = list(csv.DictReader(text.splitlines()))
        if not rows or "concept" not in rows[0]:
            raise ConfigError(f"{path} has no 'concept' column: add one, or list one concept a line in a .txt file")
        concepts = list(dict.fromkeys(r["concept"].strip() for r in rows if r["concept"] and r["concept"].strip()))
    else:
        concepts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not concepts:
        raise ConfigError(f"{path} lists no concepts: write one prompt a line")
    return concepts


def toy_defaults(method: str) -> dict:
    """The toy world's defaults for a method."""
    return {**TOY_DEFAULTS, "lr": TOY_LR.get(method, TOY_LR_OTHER)}


def steps_scale(n_concepts: int) -> int:
    """How many times one concept's steps an N-concept erase runs by default: ceil(sqrt(N))."""
    return math.ceil(math.sqrt(max(n_concepts, 1)))


@dataclass
class EraseConfig:
    """Settings of one ESD erase. Defaults are the paper's (Gandikota et al. 2023, Sec. 4)."""

    concepts: list[str]  # prompts naming what to erase, e.g. ["van gogh"]; every step trains each one
    method: str = "x"  # x | x-strict | u | self | all | re:REGEX over module names
    negative_guidance: float = 1.0  # eta: target = e*(x,t) - eta * (e*(x,c,t) - e*(x,t)); paper's eta
    steps: int = 1000  # optimisation steps (each one a pass per concept: the work grows with the concepts)
    lr: float = 1e-5  # Adam learning rate
    lr_schedule: str = "constant"  # constant (the paper) | cosine: lr * (1 + cos(pi * step / steps)) / 2
    batch_size: int = 1  # trajectories per concept and step, per process (global: processes x this)
    ddim_steps: int = 50  # DDIM steps of the x_t trajectory; t_enc ~ U{0..ddim_steps-1}
    sample_guidance: float = 3.0  # classifier-free guidance while sampling x_t
    sampler: str = "edited"  # x_t from the model being edited (paper) or "frozen" (upstream code)
    regenerate_every: int = 1  # k: reuse one full trajectory for k steps (1 = the paper)
    preserve: list[str] = field(default_factory=list)  # prompts held to the frozen model's predictions
    preserve_weight: float = 1.0  # weight of the preservation loss
    # Where the preserved prompts are held: on the erased concept's x_t (concept), on x_t from their
    # own trajectories (own: one more sampled trajectory per preserved prompt and step), or both.
    preserve_on: str = "concept"
    # Prompts the concepts are erased in, "{}" standing for each (["{}"]: the concepts as given, the paper).
    # Several ("a photo of {}", "a painting of {}"): row i of step s is sampled, and its concept held to the
    # negatively guided target, in template (s * b + i) mod T: the same cost a step. On the toy (robust ESD-all
    # in the eval's colours, seeds 0 and 7) it moved which seed misses (README *Red-teaming*): default "{}".
    concept_templates: list[str] = field(default_factory=lambda: ["{}"])
    # Prompts the preserved concepts are held in, "{}" standing for each (["{}"]: the prompts as given).
    # Several ("a photo of {}", "a painting of {}"): each row of a step holds every preserved concept in
    # one template in turn (row i of step s: template (s * b + i) mod T), so the cost per step stays the
    # same. On the toy (seeds 0, 5, 6, 9) the kept shapes held in the eval's colours held, and the attacks came
    # back at three seeds (README *Red-teaming*): default "{}".
    preserve_templates: list[str] = field(default_factory=lambda: ["{}"])
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast; master weights stay fp32
    gradient_checkpointing: bool | None = None  # None: on for CUDA, off on CPU
    resolution: int | None = None  # image size of the trajectories; None: the model's default
    seed: int = 0  # seeds noise, t_enc and concept choice
    checkpoint_every: int = 100  # steps between resumable checkpoints (0: only on interrupt)
    # Robust (adversarial) ESD, AdvUnlearn-style: every `robust_every` steps, `robust_attack_steps`
    # of the embedding attack (esd_sdk.attack) find `robust_tokens` input embeddings that still make
    # the model being edited denoise concept images; the ESD target is then also applied to them.
    robust: bool = False
    robust_tokens: int = 6  # learned vectors in the adversarial prompt
    robust_attack_steps: int = 10  # inner attack steps per refresh (warm-started from the last)
    robust_every: int = 1  # outer steps between refreshes (1 x 10 from half-way: README *Red-teaming*)
    robust_lr: float = 5e-2  # the inner attack's Adam learning rate
    robust_images: int = 8  # concept latents (from the frozen model) the inner attack learns from, per template
    robust_batch: int = 8  # of those, latents per inner attack step (drawn at random each step)
    robust_weight: float = 1.0  # weight of the adversarial ESD loss
    # Fraction of the steps trained as plain ESD before the inner attack joins (while the concept's
    # own words still bring it back, the ESD term on them already does the adversary's work, so the
    # inner attack's cost goes to the later steps). Measured on the toy over 10 erase seeds (README
    # *Red-teaming*): 0.5 takes 2.39x plain's erase time instead of 3.61x (side by side) and leaves less on
    # average (13.1 / 15.6% under the two attacks against 24.1 / 20.9%; at worst 31.2 / 50.0% against
    # 68.8 / 71.9%, and no kept shape lost by more than 2 images where starting at once lost 18 of the square at one seed);
    # neither meets the per-seed goals reliably (0 seeds of 10 against 2, after stop 30's re-runs).
    robust_start: float = 0.5
    # What the inner attack optimises. "denoise": the diffusion-classifier loss on `robust_images`
    # frozen-model concept latents (UnlearnDiff's objective, the eval's embedding attack). "match":
    # AdvUnlearn's, the edited model's prediction for the step's own x_t matched to the frozen
    # model's prediction for the concept there (no latents to sample, the step's batch: 2.65x plain's
    # erase time instead of 3.47x on the toy, but it cost the preserved square 9.4 / 21.9 pts at seeds 0 / 2).
    robust_objective: str = "denoise"
    # Prompts the inner attack learns its adversarial word in, "{}" standing for it. ["{}"]: the word is
    # the whole prompt. Several ("a photo of {}", "a painting of {}"): one word shared by all of them, as
    # concept inversion learns one, on `robust_images` latents per template that the frozen model draws with
    # the concept in place of "{}"; each trajectory of a step is then held with one of them in turn. On the
    # toy (robust ESD-all, 10 seeds) templates in the attack's own contexts halve what inversion brings back
    # (9.1 -> 5.0%); other contexts do not help (README *Red-teaming*), so the default stays the word alone.
    robust_templates: list[str] = field(default_factory=lambda: ["{}"])
    # Past adversarial words replayed, against a min-max game that circles (a late robust erase scored at
    # steps 60-100 went 50 -> 31 -> 16 -> 44 -> 9% under inversion): every `robust_pool_every` robust steps
    # the current word joins a pool of the last `robust_pool`; each step one of them in turn is held to the
    # ESD target beside the current one (one more prompt in the step's batch). 0: no pool. Measured on the toy
    # (the 130-step recipe of README *Red-teaming*, 10 erase seeds, beside it on the same CPU): 4 pooled words lower
    # the means under attack (inversion 12.2 -> 7.8%, embedding 8.4 -> 6.9%) but not the kept-shape losses (7.5 pts
    # both) and meet every per-seed goal at 0 seeds of 10 (without: 2), so the default stays 0.
    robust_pool: int = 0
    robust_pool_every: int = 10

    def __post_init__(self):
        # Own copies, normalised: a list the caller passed is never aliased or changed.
        listed = lambda v: [v] if isinstance(v, str) else list(v)  # noqa: E731  (one prompt or several)
        self.concepts = [c.strip() for c in listed(self.concepts)]
        self.preserve = [p.strip() for p in listed(self.preserve)]
        self.robust_templates = listed(self.robust_templates)
        self.preserve_templates = listed(self.preserve_templates)
        self.concept_templates = listed(self.concept_templates)

    @classmethod
    def for_model(cls, base: "BaseModel | str", concepts: str | list[str], method: str = "x",
                  **overrides) -> "EraseConfig":
        """The settings for erasing ``concepts`` from ``base``: the paper's defaults, then the
        model's own (the toy world's, tuned against its judge), then ``overrides``.

            >>> EraseConfig.for_model(load_base("toy"), "circle", method="u").steps
            100
            >>> EraseConfig.for_model("sd1", "van gogh", lr=2e-5).lr     # a family name works too
            2e-05
        """
        family = base if isinstance(base, str) else base.family
        known = {f.name for f in dataclasses.fields(cls)} - {"concepts", "method"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown erase setting '{unknown[0]}': choose from {', '.join(sorted(known))}")
        defaults = toy_defaults(method) if family == "toy" else {}
        n = len([concepts] if isinstance(concepts, str) else concepts)
        if n > 1 and "steps" not in overrides:
            # Concepts that share weights pull against each other: ceil(sqrt(N)) times the steps
            # (every step already trains every concept). Measured on the toy: three objects in one
            # ESD-x edit left 6.2 / 6.2 / 0% at 100 steps and 0 / 6.2 / 0% at 200 (n=4).
            defaults["steps"] = defaults.get("steps", cls.steps) * steps_scale(n)
        return cls(concepts=concepts, method=method, **{**defaults, **overrides}).validate()

    def validate(self) -> "EraseConfig":
        """Check every setting; raise ConfigError naming the first bad one. Returns self."""
        if not self.concepts or any(not c for c in self.concepts):
            raise ConfigError("concept must be a non-empty prompt, e.g. --concept \"van gogh\"")
        if any(not p for p in self.preserve):
            raise ConfigError("preserve prompts must be non-empty")
        repeated = sorted({c for c in self.concepts if self.concepts.count(c) > 1})
        if repeated:
            raise ConfigError(f"'{repeated[0]}' is listed twice among the concepts: list each concept once")
        overlap = set(self.concepts) & set(self.preserve)
        if overlap:
            raise ConfigError(f"'{sorted(overlap)[0]}' is both erased and preserved: drop it from one list")
        if not self.negative_guidance > 0:
            raise ConfigError(f"negative guidance (eta) must be > 0, got {self.negative_guidance}: the paper uses 1.0")
        for name in ("steps", "batch_size", "ddim_steps", "regenerate_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint interval must be >= 0, got {self.checkpoint_every}")
        from .selection import check_method

        check_method(self.method)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got '{self.sampler}'")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr schedule must be one of {', '.join(LR_SCHEDULES)}, got '{self.lr_schedule}'")
        if self.preserve_on not in PRESERVE_ON:
            raise ConfigError(f"preserve on must be one of {', '.join(PRESERVE_ON)}, got '{self.preserve_on}'")
        if self.robust_pool < 0:
            raise ConfigError(f"robust pool must be >= 0 (0: no replayed adversarial words), got {self.robust_pool}")
        for name in ("robust_tokens", "robust_attack_steps", "robust_every", "robust_images", "robust_batch",
                     "robust_pool_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if not self.robust_lr > 0 or self.robust_weight < 0:
            raise ConfigError(f"robust lr must be > 0 and robust weight >= 0, got {self.robust_lr}, {self.robust_weight}")
        if self.robust_objective not in ROBUST_OBJECTIVES:
            raise ConfigError(f"robust objective must be one of {', '.join(ROBUST_OBJECTIVES)}, got '{self.robust_objective}'")
        for name, word in (("robust", "adversarial word"), ("preserve", "preserved prompt"), ("concept", "concept")):
            templates = getattr(self, f"{name}_templates")
            if not templates:
                raise ConfigError(f'no {name} template given: pass at least one, e.g. "{{}}" (the {word} alone)')
            bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
            if bad:
                raise ConfigError(f"{name} template {bad[0]!r} needs exactly one {{}} where the {word} goes, "
                                  'e.g. "a photo of {}"')
        if self.preserve_templates != ["{}"] and not self.preserve:
            raise ConfigError("preserve templates given but nothing is preserved: pass --preserve PROMPT as well")
        if self.robust_objective == "match" and len(self.robust_templates) > 1:
            raise ConfigError("the match objective attacks one template: pass one --robust-template, or use the denoise objective")
        if not 0 <= self.robust_start < 1:
            raise ConfigError(f"robust start must be a fraction of the steps in [0, 1), got {self.robust_start}: "
                              "e.g. 0.5 starts the inner attack half-way")
        if self.sample_guidance < 0 or self.preserve_weight < 0:
            raise ConfigError("sample guidance and preserve weight must be >= 0")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EraseConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown erase setting(s): {', '.join(unknown)}")
        return cls(**data)
