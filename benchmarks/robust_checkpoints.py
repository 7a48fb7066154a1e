"""How a robust erase moves during its robust phase: the edit at several steps of one run, each scored.

    OMP_NUM_THREADS=1 python benchmarks/robust_checkpoints.py --seed 8 --at 60 70 80 90 100 \
        --preserve square --preserve triangle --preserve cross --method all \
        --set 'robust_templates=["a red {}", "a green {}", "a blue {}", "a yellow {}"]' \
        --out benchmarks/results/robust_toy/checkpoints/s8

One robust erase of the toy "circle" (the settings of robust_toy.py's robust variant) is run once;
`esd_sdk.erase`'s ``callback_on_step_end`` copies the trained tensors at each step of ``--at``, and
each copy is written as an erase output of its own (OUT/steps/stepN) and scored as robust_toy.py
scores an edit: plain prompts, kept concepts, and the inversion and embedding attacks (same seeds
for every step). The last step's row is the erase robust_toy.py would have scored. It answers
whether a late checkpoint would meet the goals where the last does not, i.e. whether picking a
checkpoint by a validation attack could make robust ESD reliable. ``--average-from S`` also scores the
mean of the trained tensors over steps S to the last (tail or stochastic weight averaging), written as
OUT/steps/meanS: whether averaging the swings of the robust phase holds better than its last step.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import torch

import esd_sdk
from esd_sdk.artifact import write_artifact
from robust_seeds import GOALS, figures, meets
from robust_toy import scored
from toy_erasure import setting, toy_base


def snapshots(base, at: list[int], out: Path, settings: dict,
              average_from: list[int] = ()) -> tuple[dict[int | str, Path], esd_sdk.EraseResult]:
    """Erase once, writing the edit at each step of ``at`` to OUT/steps/stepN and, for each S of
    ``average_from``, the mean of the trained tensors over steps S to the last to OUT/steps/meanS
    (keyed "mean S-LAST"); returns those directories."""
    kept: dict[int, dict[str, torch.Tensor]] = {}
    sums: dict[int, dict[str, torch.Tensor]] = {}

    def keep(end: esd_sdk.StepEnd) -> None:
        if end.step in at:
            kept[end.step] = {n: p.detach().clone() for n, p in end.trained.items()}
        for start in (s for s in average_from if end.step >= s):
            total = sums.setdefault(start, {n: torch.zeros_like(p, dtype=torch.float64) for n, p in end.trained.items()})
            for n, p in end.trained.items():
                total[n] += p.detach()

    result = esd_sdk.erase(base, "circle", progress=False, robust=True, callback_on_step_end=keep, **settings)
    last = result.state.step
    # key -> (directory name, the step its artifact records, tensors); a mean records the last step
    edits = {step: (f"step{step}", step, tensors) for step, tensors in sorted(kept.items())}
    for start, total in sorted(sums.items()):
        edits[f"mean {start}-{last}"] = (f"mean{start}", last, {n: t / (last - start + 1) for n, t in total.items()})
    unet = copy.deepcopy(result.unet)  # one copy, given each edit's tensors in turn (copy_ casts to fp32)
    params = dict(unet.named_parameters())
    dirs = {}
    for key, (name, step, tensors) in edits.items():
        with torch.no_grad():
            for n, value in tensors.items():
                params[n].copy_(value)
        dirs[key] = out / "steps" / name
        write_artifact(dirs[key], base, dataclasses.replace(result.state, unet=unet, step=step), overwrite=True)
    return dirs, result


def score(base, edit: Path, n: int) -> dict:
    """The figures robust_seeds.py tabulates for one edit, and whether they meet every goal."""
    row = figures(scored(edit, base, n))
    return {**row, "meets": meets(row)}


def markdown(data: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [f"# Robust erase of \"circle\" at seed {data['seed']}, scored at {len(data['rows'])} of its steps", "",
             f"{data['n']} images a prompt; goals: both attacks <= {pct(GOALS['asr'])}%, plain prompts <= "
             f"{pct(GOALS['erased'])}%, every kept concept within {pct(GOALS['kept_drop'])} points.", "",
             "| step | plain prompts % | inversion ASR % | embedding ASR % | controls % | max kept drop (pts) | every goal |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for step, r in data["rows"].items():
        lines.append(f"| {step} | {pct(r['erased'])} | {pct(r['inversion'])} | {pct(r['embedding'])} | "
                     f"{pct(r['controls'])} | {pct(r['kept_drop'])} | {'yes' if r['meets'] else 'no'} |")
    lines += ["", f"Settings: `{json.dumps(data['settings'])}`", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the erase's seed [0]")
    parser.add_argument("--at", type=int, nargs="+", default=[], help="the steps to score, e.g. 60 70 80 90 100")
    parser.add_argument("--average-from", type=int, nargs="+", default=[], metavar="S",
                        help="also score the mean of the trained tensors over steps S to the last, e.g. 60 80")
    parser.add_argument("--method", default="u", help="ESD method [u]")
    parser.add_argument("--preserve", action="append", default=[], help="prompt to preserve (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=setting,
                        help="an EraseConfig override, e.g. steps=120 (repeatable)")
    parser.add_argument("-n", type=int, default=8, help="images per prompt [8]")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    settings = {"method": args.method, "seed": args.seed, **({"preserve": args.preserve} if args.preserve else {}),
                **dict(args.set)}
    base = toy_base()
    steps = esd_sdk.EraseConfig.for_model(base, "circle", **settings).steps
    for flag, given in (("--at", args.at), ("--average-from", args.average_from)):
        bad = [s for s in given if not 1 <= s <= steps]
        if bad:
            parser.error(f"{flag} {bad[0]} is not a step of this {steps}-step erase: give steps from 1 to {steps}")
    if not args.at and not args.average_from:
        parser.error("nothing to score: give --at STEP... and/or --average-from STEP...")
    dirs, result = snapshots(base, sorted(set(args.at)), args.out, settings, sorted(set(args.average_from)))
    data = {"seed": args.seed, "n": args.n, "settings": result.config.to_dict(),
            "rows": {step: score(base, d, args.n) for step, d in dirs.items()}}
    (args.out / "checkpoints.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "checkpoints.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
