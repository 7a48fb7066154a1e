"""Measure how well the toy model draws what it is asked for, with the judge.

    python -m esd_sdk.toy.quality                 # the bundled model, its default sampler
    python -m esd_sdk.toy.quality --model DIR -n 16 --scheduler DPMSolverMultistepScheduler --steps 25

Prompts: "a <colour> <object>" for every colour and object (main word and synonym), and
"a <style> <colour> <object>" for every style. Reports, per object/colour/style, the
fraction of images the judge says show it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ..generation import GenerationConfig, generate
from ..loading import BaseModel, load_base
from . import load_judge
from .world import COLOUR_NAMES, OBJECTS, STYLES


def quality_prompts() -> dict[str, list[str]]:
    objects = [f"a {c} {o}" for o in OBJECTS for c in COLOUR_NAMES]
    synonyms = [f"a {c} {words[1]}" for words in OBJECTS.values() for c in COLOUR_NAMES]
    styles = [f"a {words[0]} {c} {o}" for s, words in STYLES.items() if s != "plain" for o in OBJECTS for c in COLOUR_NAMES[:2]]
    return {"objects": objects, "synonyms": synonyms, "styles": styles}


def measure_quality(base: BaseModel, n: int = 8, config: GenerationConfig | None = None, seed: int = 1000) -> dict:
    """Judge-measured rates for the quality prompts (see module docstring)."""
    from . import prompt_rates
    from .world import parse_prompt

    judge = load_judge()
    report: dict = {"n_per_prompt": n}
    t0 = time.perf_counter()
    for group, prompts in quality_prompts().items():
        images = generate(base, prompts, n=n, seed=seed, config=config)
        per: dict[str, dict[str, list[float]]] = {}
        for i, prompt in enumerate(prompts):
            rates = prompt_rates(judge, images[i * n:(i + 1) * n], prompt)
            obj, colour, style = parse_prompt(prompt)
            key = {"objects": obj, "synonyms": prompt.split()[-1], "styles": style}[group]
            for attr, value in rates.items():
                per.setdefault(key, {}).setdefault(attr, []).append(value)
        report[group] = {k: {a: float(np.mean(v)) for a, v in attrs.items()} for k, attrs in per.items()}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("-n", type=int, default=8, help="images per prompt")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--scheduler", help="diffusers scheduler class to sample with (default: the model's)")
    args = parser.parse_args(argv)
    base = load_base(args.model)
    config = GenerationConfig.for_model(base)
    if args.steps:
        config.num_inference_steps = args.steps
    if args.guidance is not None:
        config.guidance_scale = args.guidance
    if args.scheduler:
        import diffusers

        base.pipeline.scheduler = getattr(diffusers, args.scheduler).from_config(base.pipeline.scheduler.config)
    report = measure_quality(base, n=args.n, config=config)
    report["sampler"] = {"scheduler": type(base.pipeline.scheduler).__name__, **config.__dict__}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
