"""Does editing the text encoder resist the attacks better than editing the UNet? (issue #10)

AdvUnlearn (Zhang et al. 2024) found that adversarial unlearning generalises best when it edits
the text encoder. This measures that claim on the toy world, side by side with UNet robust ESD:

    python benchmarks/robust_text_encoder.py --concept striped           # vs ESD-x robust
    python benchmarks/robust_text_encoder.py --concept circle --preserve square

The text-encoder edit trains a copy of the text encoder with ESD's objective (the frozen UNet's
prediction for the concept prompt, re-encoded by the edited encoder, must follow the negatively
guided target), the same inner embedding attack as `erase --robust` (now through the edited
encoder), and a cheap retain term in embedding space: every toy prompt without the concept, and
the empty prompt of classifier-free guidance, must encode as before. x_t, the frozen predictions
and the inner attack's latents come from esd_sdk's own trainer. Scored like robust_toy.py: plain
prompts, kept concepts and both attacks at their default budgets, with the base-model controls.
Writes <out>/<concept>.json and .md.
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

RESULTS = Path(__file__).parent / "results" / "robust_text_encoder"
METHODS = {"circle": "u", "striped": "x"}


def retain_prompts(concept: str) -> list[str]:
    """Every toy prompt that does not name the concept (or a synonym), and the empty prompt."""
    words = set(OBJECTS.get(concept) or STYLES.get(concept) or (concept,))
    prompts = [f"a {s} {c} {o}" if s != "plain" else f"a {c} {o}"
               for s in STYLES for o in OBJECTS for c in COLOUR_NAMES]
    return [""] + [p for p in prompts if not words & set(p.split())]


def train_text_encoder(base, concept: str, steps: int, lr: float, robust: bool, retain_weight: float, seed: int):
    """ESD on a copy of the text encoder; returns (edited BaseModel, seconds, losses)."""
    config = EraseConfig.for_model(base, [concept], "x", seed=seed, steps=steps)  # the toy's sampler settings
    # The trainer samples x_t and gives the frozen predictions; its own (UNet) parameters never step.
    trainer = _Trainer(base, copy.deepcopy(base.unet), config, torch.device("cpu"), None)
    encoder = copy.deepcopy(base.pipeline.text_encoder).requires_grad_(True)
    edited = base.with_components(text_encoder=encoder)
    target = AttackTarget.from_pipeline(edited.pipeline, unet=trainer.unet)
    keep = retain_prompts(concept)
    with torch.no_grad():
        keep_ref = encode_prompts(base, keep).hidden
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    soft, losses = None, []
    if robust:
        latents = _Adversary(trainer).latents[0]  # the same concept latents as `erase --robust` learns from
    generator = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    for step in range(steps):
        g = trainer.generator
        t_enc = int(torch.randint(config.ddim_steps, (1,), generator=g))
        x = trainer._sample(trainer.concepts.index([0]), t_enc)
        t = trainer.scheduler.timesteps[t_enc]
        b = x.shape[0]
        with torch.no_grad():
            cond = Conditioning.cat([trainer.uncond.index([0] * b), trainer.concepts.index([0] * b)])
            frozen = trainer._predict(torch.cat([x, x]), t, cond, frozen=True)
        e_0, e_c = frozen.chunk(2)
        goal = e_0 - config.negative_guidance * (e_c - e_0)
        conds = [encode_prompts(edited, [concept]).hidden.expand(b, -1, -1)]
        if robust:
            soft = embedding_attack(target, latents, "{}", n_tokens=config.robust_tokens,
                                    steps=config.robust_attack_steps, lr=config.robust_lr,
                                    init=soft if soft is not None else concept, generator=generator)
            conds.append(soft.encode(target).hidden.expand(b, -1, -1))
        pred = trainer.unet(x.repeat(len(conds), 1, 1, 1), t, encoder_hidden_states=torch.cat(conds)).sample
        loss = sum(F.mse_loss(p, goal) for p in pred.chunk(len(conds)))
        loss = loss + retain_weight * F.mse_loss(encode_prompts(edited, keep).hidden, keep_ref)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concept", default="striped", choices=sorted(METHODS))
    parser.add_argument("--preserve", action="append", default=[], help="kept concepts the UNet edit holds")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam lr of the text-encoder edit")
    parser.add_argument("--retain-weight", type=float, default=1.0)
    parser.add_argument("--variants", nargs="+", default=["unet", "text-encoder"], choices=["unet", "text-encoder"])
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = esd_sdk.load_base("toy")
    rows = {}
    if "unet" in args.variants:
        t0 = time.perf_counter()
        result = esd_sdk.erase(base, args.concept, method=METHODS[args.concept], robust=True, progress=False,
                               steps=args.steps, **({"preserve": args.preserve} if args.preserve else {}))
        rows["unet"] = {"seconds": round(time.perf_counter() - t0, 1),
                        **score(base, base, result.unet, args.concept, args.preserve, args.n, 0)}
        print("unet", json.dumps(rows["unet"]), flush=True)
    if "text-encoder" in args.variants:
        edited, seconds, losses = train_text_encoder(base, args.concept, args.steps, args.lr, True, args.retain_weight, 0)
        rows["text-encoder"] = {"seconds": round(seconds, 1), "loss_first10": sum(losses[:10]) / 10,
                                "loss_last10": sum(losses[-10:]) / 10,
                                **score(base, edited, None, args.concept, args.preserve, args.n, 0)}
        print("text-encoder", json.dumps(rows["text-encoder"]), flush=True)
    data = {"concept": args.concept, "preserve": args.preserve, "steps": args.steps, "lr": args.lr,
            "retain_weight": args.retain_weight, "n": args.n, "threads": torch.get_num_threads(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.concept}.json").write_text(json.dumps(data, indent=2) + "\n")
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"Toy world, robust ESD on '{args.concept}' ({args.steps} steps, seed 0, {args.n} images per prompt, "
             f"toy judge), preserve {args.preserve or 'none'}.", "",
             "| edit | plain prompts | inversion ASR | embedding ASR | controls inv./emb. | max kept drop | train s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        erased = sum(r["erased"].values()) / len(r["erased"])
        a = r["attacks"]
        lines.append(f"| {name} | {pct(erased)} | {pct(a['inversion']['asr'])} | {pct(a['embedding']['asr'])} | "
                     f"{pct(a['inversion']['control'])} / {pct(a['embedding']['control'])} | "
                     f"{pct(r['max_kept_drop'])} | {r['seconds']:.0f} |")
    (args.out / f"{args.concept}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
