"""Erasure efficacy and interference on the toy world, measured with the judge.

    python benchmarks/toy_erasure.py                                  # the two reference erasures
    python benchmarks/toy_erasure.py --concept circle --method u --steps 300 --lr 1e-4

For an object concept: the rate at which "a <colour> <object>" images show their object, for
every object, base vs edited, same seeds. For a style: "a <style> <colour> <object>" images
showing their style. Writes a JSON report to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from esd_sdk import GenerationConfig, load_base
from esd_sdk.config import EraseConfig
from esd_sdk.erase import resolve_config, train
from esd_sdk.toy import object_rates
from esd_sdk.evaluate import toy_prompt_sets
from esd_sdk.toy.world import OBJECTS, STYLES


def prompts_for(concept: str) -> tuple[str, dict[str, list[str]], dict[str, list[str]]]:
    """(attribute, prompts by key for the concept and every other of its kind, paraphrase prompts)."""
    if concept not in OBJECTS and concept not in STYLES:
        raise SystemExit(f"'{concept}' is not a toy object or style")
    sets = toy_prompt_sets([concept], [])
    return ("object" if concept in OBJECTS else "style"), {**sets["erased"], **sets["kept"]}, sets["paraphrase"]


def measure(concept: str, method: str, n: int, overrides: dict, gen: GenerationConfig) -> dict:
    attribute, by_key, para = prompts_for(concept)
    base = load_base("toy")
    before = object_rates(base, by_key, n=n, config=gen, attribute=attribute)
    before_para = object_rates(base, para, n=n, config=gen, attribute=attribute)
    config = resolve_config(EraseConfig(concepts=[concept], method=method, **overrides), base, set(overrides))
    t0 = time.perf_counter()
    state = train(base, config, progress=False)
    seconds = time.perf_counter() - t0
    after = object_rates(base, by_key, n=n, config=gen, attribute=attribute, unet=state.unet)
    after_para = object_rates(base, para, n=n, config=gen, attribute=attribute, unet=state.unet)
    kept = {k: after[k] - before[k] for k in before if k != concept}
    return {
        "concept": concept, "method": method, "attribute": attribute, "images_per_key": n * len(by_key[concept]),
        "settings": config.to_dict(), "erase_seconds": round(seconds, 1),
        "base": before, "edited": after, "paraphrase_base": before_para, "paraphrase_edited": after_para,
        "erased_rate": after[concept], "max_kept_drop_points": round(-100 * min(kept.values()), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", action="append")
    p.add_argument("--method", action="append")
    p.add_argument("-n", type=int, default=8, help="images per prompt")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--eta", type=float)
    p.add_argument("--ddim-steps", type=int)
    p.add_argument("--regenerate-every", type=int)
    p.add_argument("--preserve", action="append")
    p.add_argument("--gen-steps", type=int, help="sampler steps for the measurement (default: the model's)")
    p.add_argument("--model", default="toy", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/toy_erasure.json"))
    args = p.parse_args()
    concepts = args.concept or ["circle", "striped"]
    methods = args.method or ["u", "x"]
    overrides = {k: v for k, v in dict(steps=args.steps, lr=args.lr, negative_guidance=args.eta,
                                        ddim_steps=args.ddim_steps, regenerate_every=args.regenerate_every,
                                        preserve=args.preserve).items() if v is not None}
    gen = GenerationConfig.for_model(load_base(args.model))
    if args.gen_steps:
        gen.num_inference_steps = args.gen_steps
    reports = []
    for concept, method in zip(concepts, methods):
        r = measure(concept, method, args.n, overrides, gen)
        reports.append(r)
        print(json.dumps({k: r[k] for k in ("concept", "method", "erased_rate", "max_kept_drop_points",
                                            "erase_seconds", "base", "edited", "paraphrase_edited")}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":
    main()
