"""Does editing the text encoder resist the attacks better than editing the UNet? (issue #10)

AdvUnlearn (Zhang et al. 2024) found that adversarial unlearning generalises best when it edits
the text encoder. This measures that claim on the toy world, side by side with UNet ESD (plain and
robust at the defaults), each edit scored with the same seeds:

    OMP_NUM_THREADS=1 python benchmarks/robust_text_encoder.py --concept circle --preserve square --lr 3e-3 --seed 1
    OMP_NUM_THREADS=1 python benchmarks/robust_text_encoder.py --concept striped --preserve dotted --lr 3e-3 \
        --template "{}" --template "a {} red circle" ...

The text-encoder edit trains a copy of the text encoder, the UNet frozen, with ESD's objective: x_t
on the edited model's own trajectory for the concept in one of the templates, and the edited
encoder's conditioning of that prompt must make the frozen UNet follow the negatively guided
target. Robust, from --robust-start of the steps, the same inner embedding attack as `erase
--robust`, now through the edited encoder, adds its word's term. A retain term in embedding space
holds every toy prompt without the concept, and the empty prompt of classifier-free guidance. x_t,
the frozen predictions and the inner attack's latents come from esd_sdk's own trainer. Scored like
robust_toy.py: plain prompts, kept concepts and both attacks at their default budgets, with the
base-model controls. Writes <out>/<concept>_s<seed>.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import esd_sdk
from esd_sdk.attack import ATTACKS, AttackTarget, _Runner, budgets_for, embedding_attack
from esd_sdk.conditioning import Conditioning, encode_prompts
from esd_sdk.config import EraseConfig
from esd_sdk.evaluate import measure, sampler_config, toy_prompt_sets
from esd_sdk.scorers import make_scorer
from esd_sdk.toy.world import COLOUR_NAMES, OBJECTS, STYLES
from esd_sdk.training import _Adversary, _Trainer
from robust_toy import cpu_name

RESULTS = Path(__file__).parent / "results" / "robust_text_encoder"
METHODS = {"circle": "u", "striped": "x"}


def retain_prompts(concept: str) -> list[str]:
    """Every toy prompt that does not name the concept (or a synonym), and the empty prompt."""
    words = set(OBJECTS.get(concept) or STYLES.get(concept) or (concept,))
    prompts = [f"a {s} {c} {o}" if s != "plain" else f"a {c} {o}"
               for s in STYLES for o in OBJECTS for c in COLOUR_NAMES]
    return [""] + [p for p in prompts if not words & set(p.split())]


def train_text_encoder(base, concept: str, steps: int, lr: float, robust: bool, retain_weight: float, seed: int,
                       templates: list[str], robust_start: float = 0.5):
    """ESD on a copy of the text encoder, the UNet frozen; returns (edited BaseModel, seconds, losses).

    Each step: x_t on the edited model's own trajectory for the concept in one of ``templates``
    (the frozen UNet conditioned by the edited encoder, as ESD samples), the negatively guided
    target from the frozen model with the base encoder, and the edited encoder's conditioning of
    that prompt must produce it. Robust: from ``robust_start`` of the steps, the inner embedding
    attack (through the edited encoder) finds a word that still draws the concept, and its
    conditioning must follow the same target. Retain: every prompt without the concept, and the
    empty prompt of classifier-free guidance, encodes as before."""
    config = EraseConfig.for_model(base, [concept], "x", seed=seed, steps=steps)  # the toy's sampler settings
    # The trainer samples x_t and gives the frozen predictions; its own (UNet) parameters never step.
    trainer = _Trainer(base, copy.deepcopy(base.unet), config, torch.device("cpu"), None)
    trainer.unet.requires_grad_(False)  # the trainer readies its selected tensors for training: none train here
    encoder = copy.deepcopy(base.pipeline.text_encoder).requires_grad_(True)
    edited = base.with_components(text_encoder=encoder)
    target = AttackTarget.from_pipeline(edited.pipeline, unet=trainer.unet)
    keep = retain_prompts(concept)
    prompts = [t.replace("{}", concept) for t in templates]
    with torch.no_grad():
        keep_ref = encode_prompts(base, keep).hidden
        frozen_cond = encode_prompts(base, prompts)  # the base encoder's: the target's conditioning
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    soft, losses = None, []
    if robust:
        latents = _Adversary(trainer).latents[0]  # the same concept latents as `erase --robust` learns from
    generator = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    for step in range(steps):
        g = trainer.generator
        i = step % len(prompts)
        t_enc = int(torch.randint(config.ddim_steps, (1,), generator=g))
        now = encode_prompts(edited, [prompts[i]], grad=True).hidden  # the edited encoder's, trained through
        x = trainer._sample(Conditioning(now.detach()), t_enc)  # the edited model's trajectory (its UNet is the base's)
        t = trainer.scheduler.timesteps[t_enc]
        b = x.shape[0]
        with torch.no_grad():
            cond = Conditioning.cat([trainer.uncond.index([0] * b), frozen_cond.index([i] * b)])
            frozen = trainer._predict(torch.cat([x, x]), t, cond, frozen=True)
        e_0, e_c = frozen.chunk(2)
        goal = e_0 - config.negative_guidance * (e_c - e_0)
        conds = [now.expand(b, -1, -1)]
        if robust and step >= int(robust_start * steps):
            soft = embedding_attack(target, latents, "{}", n_tokens=config.robust_tokens,
                                    steps=config.robust_attack_steps, lr=config.robust_lr,
                                    init=soft if soft is not None else concept, generator=generator)
            conds.append(soft.encode(target).hidden.expand(b, -1, -1))
        pred = trainer.unet(x.repeat(len(conds), 1, 1, 1), t, encoder_hidden_states=torch.cat(conds)).sample
        loss = sum(F.mse_loss(p, goal) for p in pred.chunk(len(conds)))
        loss = loss + retain_weight * F.mse_loss(encode_prompts(edited, keep, grad=True).hidden, keep_ref)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    encoder.requires_grad_(False)
    return edited, time.perf_counter() - t0, losses


def score(base, edited_base, edited_unet, concept: str, preserve: list[str], n: int, seed: int) -> dict:
    """Plain and kept rates (toy judge), and both attacks with their base controls."""
    sets = toy_prompt_sets([concept], preserve, seed)
    judge = make_scorer("toy")
    config = sampler_config(base, None, None)
    before = measure(base, sets, judge, n, config)
    after = measure(edited_base, sets, judge, n, config, unet=edited_unet)
    rates = lambda m: {s: {k: round(float(sum(v) / len(v)), 4) for k, v in d.items()} for s, d in m.values.items()}  # noqa: E731
    b, a = rates(before), rates(after)
    out = {"erased_base": b["erased"], "erased": a["erased"], "kept_base": b["kept"], "kept": a["kept"],
           "max_kept_drop": max(b["kept"][k] - a["kept"][k] for k in b["kept"]), "attacks": {}}
    runner = _Runner(base, edited_unet, judge, config, n, seed, False, edited_base=edited_base)
    for key, rows in sets["erased"].items():
        plain = {m: runner.rate(runner.images(rows, m), rows) for m in ("edited", "base")}
        latents = runner.concept_latents(rows, 8)
        for attack, budget in budgets_for(ATTACKS).items():
            result, _ = runner.attack(attack, budget, key, rows, latents, plain)
            out["attacks"][attack] = {"asr": result.asr, "control": result.control, "plain": result.plain}
    return out


VARIANTS = ["unet-plain", "unet", "text-encoder-plain", "text-encoder"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concept", default="striped", choices=sorted(METHODS))
    parser.add_argument("--preserve", action="append", default=[], help="kept concepts the UNet edit holds")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3,
                        help="Adam lr of the text-encoder edit (3e-3: the lowest of 1e-4 ... 1e-2 that erased at seed 0)")
    parser.add_argument("--retain-weight", type=float, default=1.0)
    parser.add_argument("--template", action="append", dest="templates", default=None,
                        help='prompts the text-encoder edit erases the concept in ["{}" and the four colours]')
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS,
                        help="UNet ESD (plain, robust at the defaults) and the text-encoder edit (plain, robust)")
    parser.add_argument("--robust-start", type=float, default=0.5,
                        help="fraction of the steps the text-encoder edit trains before its inner attack joins")
    parser.add_argument("--seed", type=int, default=0, help="erase seed (eval and attacks: seed 0)")
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    templates = args.templates or ["{}"] + [f"a {c} {{}}" for c in COLOUR_NAMES]
    torch.manual_seed(0)
    base = esd_sdk.load_base("toy")
    rows = {}
    for variant in args.variants:
        if variant.startswith("unet"):
            robust = variant == "unet"
            t0 = time.perf_counter()
            result = esd_sdk.erase(base, args.concept, method=METHODS[args.concept], robust=robust, progress=False,
                                   steps=args.steps, seed=args.seed,
                                   **({"preserve": args.preserve} if args.preserve else {}))
            rows[variant] = {"seconds": round(time.perf_counter() - t0, 1),
                             **score(base, base, result.unet, args.concept, args.preserve, args.n, 0)}
        else:
            robust = variant == "text-encoder"
            edited, seconds, losses = train_text_encoder(base, args.concept, args.steps, args.lr, robust,
                                                         args.retain_weight, args.seed, templates,
                                                         robust_start=args.robust_start)
            rows[variant] = {"seconds": round(seconds, 1), "loss_first10": sum(losses[:10]) / 10,
                             "loss_last10": sum(losses[-10:]) / 10,
                             **score(base, edited, None, args.concept, args.preserve, args.n, 0)}
        print(variant, json.dumps(rows[variant]), flush=True)
    data = {"concept": args.concept, "preserve": args.preserve, "steps": args.steps, "lr": args.lr,
            "retain_weight": args.retain_weight, "robust_start": args.robust_start, "templates": templates,
            "seed": args.seed, "n": args.n,
            "threads": torch.get_num_threads(), "cpu": cpu_name(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.concept}_s{args.seed}"
    (args.out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"Toy world, ESD on '{args.concept}' ({args.steps} steps, erase seed {args.seed}, eval and attack seed 0, "
             f"{args.n} images per prompt, toy judge, {data['cpu']}), kept: {args.preserve or 'every other'}; "
             f"the UNet edits hold {args.preserve or 'nothing'}, the text-encoder edit (lr {args.lr}, "
             f"retain weight {args.retain_weight}, inner attack from {args.robust_start} of the steps) erases in "
             f"{templates} and holds every prompt without the concept.",
             "", "| edit | plain prompts | inversion ASR | embedding ASR | controls inv./emb. | max kept drop | train s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for variant, r in rows.items():
        erased = sum(r["erased"].values()) / len(r["erased"])
        a = r["attacks"]
        lines.append(f"| {variant} | {pct(erased)} | {pct(a['inversion']['asr'])} | {pct(a['embedding']['asr'])} | "
                     f"{pct(a['inversion']['control'])} / {pct(a['embedding']['control'])} | "
                     f"{pct(r['max_kept_drop'])} | {r['seconds']:.0f} |")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
