"""The bundled toy world: a tiny, genuine text-to-image model of coloured, styled shapes,
and a judge that counts which concepts a generated image shows.

    >>> from esd_sdk import load_base, generate
    >>> from esd_sdk.toy import load_judge, prompt_rates
    >>> images = generate(load_base("toy"), "a red circle", n=16)
    >>> prompt_rates(load_judge(), images, "a red circle")      # {'object': 0.94, 'colour': 1.0}
"""

from __future__ import annotations

import numpy as np

from ..loading import toy_model_path
from .judge import Judge, Verdict
from .world import COLOUR_NAMES, OBJECT_NAMES, OBJECTS, STYLE_NAMES, STYLES, parse_prompt

__all__ = ["Judge", "Verdict", "load_judge", "prompt_rates", "OBJECT_NAMES", "COLOUR_NAMES", "STYLE_NAMES",
           "OBJECTS", "STYLES", "parse_prompt"]


def load_judge() -> Judge:
    """The judge shipped with the bundled toy model."""
    return Judge.from_pretrained(toy_model_path() / "judge")


def prompt_rates(judge: Judge, images: np.ndarray, prompt: str) -> dict[str, float]:
    """For each attribute the prompt names (object, colour, style), the fraction of images
    the judge says show it. Synonyms count as their canonical concept."""
    verdict = judge.judge(images)
    obj, colour, style = parse_prompt(prompt)
    rates = {}
    if obj is not None:
        rates["object"] = float(np.mean([o == obj for o in verdict.object]))
    if colour is not None:
        rates["colour"] = float(np.mean([c == colour for c in verdict.colour]))
    if style is not None:
        rates["style"] = float(np.mean([s == style for s in verdict.style]))
    return rates


def object_rates(base, prompts_by_key: dict[str, list[str]], n: int = 8, seed: int = 0, unet=None,
                 config=None, attribute: str = "object") -> dict[str, float]:
    """For each key, the fraction of images (over all its prompts, ``n`` each) in which the
    judge sees the attribute the prompt names. Same seeds for every model: base and edited
    rates differ by the edit, not by sampling noise."""
    from ..generation import generate

    judge = load_judge()
    keys, prompts = [], []
    for key, group in prompts_by_key.items():
        keys += [key] * len(group)
        prompts += group
    images = generate(base, prompts, n=n, seed=seed, unet=unet, config=config)
    out: dict[str, list[float]] = {}
    for i, (key, prompt) in enumerate(zip(keys, prompts)):
        out.setdefault(key, []).append(prompt_rates(judge, images[i * n:(i + 1) * n], prompt)[attribute])
    return {k: float(np.mean(v)) for k, v in out.items()}
