"""Plain vs robust ESD on the toy world: does `erase --robust` keep the concept gone under attack,
what does it cost the kept concepts, and how much longer does it take?

    python benchmarks/robust_toy.py                              # ESD-u "circle" and ESD-x "striped"
    python benchmarks/robust_toy.py --only circle --robust-every 2 --robust-attack-steps 10
    python benchmarks/robust_toy.py --only circle --preserve square --timing 1x5 1x10   # erase time only
    python benchmarks/robust_toy.py --only circle --preserve square --timing 1x10@0 1x10@0.5  # @: --robust-start (default 0.5)
    python benchmarks/robust_toy.py --only circle --preserve square --timing 1x10 1x10:match  # :--robust-objective
    python benchmarks/robust_toy.py --only circle --preserve square --timing 1x10 1x10,robust_images=16  # ,KEY=VALUE
    python benchmarks/robust_toy.py --only circle --preserve square --method all    # another ESD method for both
    python benchmarks/robust_toy.py --only circle --preserve square --timing 1x10 1x10,method=all  # against plain ESD-u

For each erase, plain and robust are trained back to back from the same base and seed (the erase
time ratio is measured side by side, in one process), then scored the same way:
- `esd_sdk.evaluate`: the erased rate with plain prompts and every kept concept, base vs edited;
- `esd_sdk.attack.run_attacks`: inversion and embedding at their default budgets, with their
  controls on the base model (same seeds for both edits).
Writes robust_toy.json and robust_toy.md to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import torch

import esd_sdk
from esd_sdk.attack import run_attacks
from esd_sdk.evaluate import evaluate
from esd_sdk.selection import METHODS
from toy_erasure import setting, toy_base
from robust_seeds import describe, recipe_of

ERASES = {"circle": "u", "striped": "x"}
NEIGHBOURS = {"circle": ["square", "triangle", "cross"], "striped": ["dotted"]}  # held by --preserve-neighbours
RESULTS = Path(__file__).parent / "results" / "robust_toy"


def cpu_name() -> str:
    """The CPU's model and the vector kernels torch picks on it. An erase at one thread repeats exactly
    on one machine; another CPU's kernels may round differently, and a report should say where it ran."""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or platform.machine()}, {torch.backends.cpu.get_cpu_capability()}"


def method_of(concept: str, args) -> str:
    """The ESD method both variants erase ``concept`` with: --method, else the concept's own (ERASES)."""
    return args.method or ERASES[concept]


def shared_settings(concept: str, args) -> dict:
    """The settings plain and robust share: --preserve(-neighbours), --preserve-weight, --set."""
    keep = {"preserve": args.preserve or NEIGHBOURS[concept]} if args.preserve_neighbours or args.preserve else {}
    if args.preserve_weight is not None:
        keep["preserve_weight"] = args.preserve_weight
    return {**keep, **args.set}


def scored(edit: Path, base, n: int) -> dict:
    """One edit scored as every row here is: the eval (plain prompts, kept concepts) and both attacks, seed 0."""
    report = evaluate(edit, n=n, update=False, base_model=base)
    attacks = run_attacks(edit, n=n, update=False, progress=False, base_model=base)
    s = report.summary()
    return {"erased": s["erased"], "erased_base": s["erased_base"], "kept": s["kept"], "max_kept_drop": s["max_kept_drop"],
            "attacks": attacks.summary(), "kept_drops": {r.key: r.drop for r in report.rows if r.prompt_set == "kept"},
            "kept_shows_erased": s.get("kept_shows_erased"), "kept_colour": s.get("kept_colour"),
            "kept_colour_base": s.get("kept_colour_base")}


def one(base, concept: str, method: str, work: Path, args) -> dict:
    robust = {k: v for k, v in dict(robust_tokens=args.robust_tokens, robust_attack_steps=args.robust_attack_steps,
                                    robust_every=args.robust_every).items() if v is not None}
    row = {"concept": concept, "method": method, "robust_settings": robust}
    keep = shared_settings(concept, args)
    variants = (("plain", keep), ("robust", {"robust": True, **robust, **keep}))
    for name, extra in [v for v in variants if v[0] in args.variants]:
        out = work / f"{name}-{concept}"
        t0 = time.perf_counter()
        result = esd_sdk.erase(base, concept, method=method, out=out, overwrite=True, progress=False, **extra)
        seconds = time.perf_counter() - t0
        row[name] = {"erase_seconds": round(seconds, 1), "training_seconds": round(result.seconds, 1),
                     **scored(out, base, args.n), "config": result.config.to_dict()}
        print(f"{concept} {name}: {json.dumps(row[name]['attacks'])} erased {row[name]['erased']} kept drop "
              f"{row[name]['max_kept_drop']} in {seconds:.0f}s", flush=True)
    if len(args.variants) == 2:
        row["time_ratio"] = row["robust"]["training_seconds"] / row["plain"]["training_seconds"]
    return row


def timing_spec(text: str) -> tuple[str, dict]:
    """argparse type of a --timing variant, EVERYxSTEPS[@START][:OBJECTIVE][,KEY=VALUE...]
    (@: --robust-start, :: --robust-objective, ,KEY=VALUE: an EraseConfig override, VALUE JSON when it parses,
    so a list may hold commas: ,robust_templates=["a {}", "the {}"]): its name and settings."""
    head, *extra = re.split(r",(?=\w+=)", text)
    budget, _, objective = head.lower().partition(":")
    budget, _, start = budget.partition("@")
    try:
        every, steps = (int(v) for v in budget.split("x"))
        start = float(start) if start else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not EVERYxSTEPS[@START][:OBJECTIVE][,KEY=VALUE...] (e.g. 1x10@0.5)") from None
    settings = {"robust": True, "robust_every": every, "robust_attack_steps": steps,
                **({"robust_start": start} if start is not None else {}),
                **({"robust_objective": objective} if objective else {}), **dict(setting(e) for e in extra)}
    return f"robust {text}", settings


def timing(base, args) -> dict:
    """Erase time only (no scoring): plain ESD against robust ESD at each EVERYxSTEPS setting,
    alternating order round by round, the same base and seed; medians and ratios to plain."""
    import statistics
    import tempfile

    concept = (args.only or ["circle"])[0]
    keep = shared_settings(concept, args)
    variants = {"plain": {}, **dict(args.timing)}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                extra = dict(variants[name])
                method = extra.pop("method", method_of(concept, args))  # ",method=all": that variant's own
                result = esd_sdk.erase(base, concept, method=method, out=Path(tmp) / "edit", overwrite=True,
                                       progress=False, **keep, **extra)
                seconds[name].append(result.seconds)
                print(f"round {r + 1} {name}: {result.seconds:.1f}s", flush=True)
    median = {name: statistics.median(v) for name, v in seconds.items()}
    data = {"concept": concept, "method": method_of(concept, args), "preserve": keep.get("preserve"), "settings": keep,
            "threads": torch.get_num_threads(), "rounds": args.rounds, "seconds": seconds,
            "ratio_to_plain": {name: median[name] / median["plain"] for name in variants}}
    lines = [f"Erase time only, toy, ESD-{data['method']} \"{concept}\"{' --preserve ' + ' '.join(keep['preserve']) if keep.get('preserve') else ''}, "
             f"{args.rounds} alternating round(s), {data['threads']} torch thread(s).", "",
             "| variant | seconds (each round) | median | x plain |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {', '.join(f'{v:.1f}' for v in seconds[name])} | {median[name]:.1f} | "
              f"**{data['ratio_to_plain'][name]:.2f}x** |" for name in variants]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robust_timing.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "robust_timing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return data


def ran(data: dict) -> str:
    """The robust erase's inner attack as it ran (its recorded config, in robust_seeds' words):
    "defaults" alone would not say which, since the defaults change between versions."""
    row = next((r for r in data["rows"] if "config" in r.get("robust", {})), None)
    return f" ({describe(recipe_of(data, row)[1])})" if row else ""


def markdown(data: dict) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    frac = pct
    overrides = {k: v for k, v in data["settings"].items() if k != "seed"}  # --set, besides the erase seed
    lines = [f"Toy world, toy defaults, erase seed {data['settings'].get('seed', 0)}, eval seed 0; "
             f"{data['n']} images per prompt, toy judge; {data['threads']} torch "
             f"thread(s). Robust settings: {data['rows'][0]['robust_settings'] or 'defaults'}{ran(data)}; preserve: "
             f"{data['preserve'] or 'none'}{'; --set ' + ', '.join(f'{k}={v}' for k, v in overrides.items()) if overrides else ''}.",
             "",
             "| erase | variant | plain prompts | inversion ASR | embedding ASR | control inv. / emb. (base) | max kept drop "
             "| kept in the colour asked (base / edited) | erase s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in data["rows"]:
        for name in [v for v in ("plain", "robust") if v in row]:
            r = row[name]
            a = r["attacks"]
            lines.append(f"| ESD-{row['method']} {row['concept']} | {name} | {pct(r['erased'])} | "
                         f"**{frac(a['inversion']['asr'])}** | **{frac(a['embedding']['asr'])}** | "
                         f"{frac(a['inversion']['control'])} / {frac(a['embedding']['control'])} | "
                         f"{pct(r['max_kept_drop'])} | {pct(r.get('kept_colour_base'))} / {pct(r.get('kept_colour'))} | "
                         f"{r['training_seconds']:.0f} |")
        if "time_ratio" in row:
            lines.append(f"| | robust / plain time | | | | | | | **{row['time_ratio']:.2f}x** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(ERASES))
    parser.add_argument("-n", type=int, default=8, help="images per prompt")
    parser.add_argument("--method", choices=METHODS,
                        help="ESD method of plain and robust alike [circle: u, striped: x]")
    parser.add_argument("--robust-tokens", type=int)
    parser.add_argument("--robust-attack-steps", type=int)
    parser.add_argument("--robust-every", type=int)
    parser.add_argument("--preserve-neighbours", action="store_true",
                        help="both variants hold the other concepts of the same kind with --preserve")
    parser.add_argument("--preserve", action="append", help="prompt both variants preserve (instead of all neighbours)")
    parser.add_argument("--preserve-weight", type=float)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=setting,
                        help="an EraseConfig override for both variants, e.g. steps=200 (repeatable)")
    parser.add_argument("--timing", nargs="+", type=timing_spec, metavar="EVERYxSTEPS[@START][:OBJECTIVE][,KEY=VALUE...]",
                        help="time the erases only (no scoring): plain vs robust at each setting, e.g. 1x5 1x10 "
                             "1x10@0.5 1x10:match 1x10,robust_images=16 (@: --robust-start, :: --robust-objective, "
                             ",KEY=VALUE: an EraseConfig override for that variant alone)")
    parser.add_argument("--rounds", type=int, default=2, help="--timing: alternating rounds [2]")
    parser.add_argument("--variants", nargs="+", default=["plain", "robust"], choices=["plain", "robust"])
    parser.add_argument("--device", help="torch device for erases, scoring and attacks, e.g. cuda [cpu]")
    parser.add_argument("--work", type=Path, default=Path("runs/robust_toy"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.set = dict(args.set)
    base = toy_base(args.device)
    if args.timing:
        timing(base, args)
        return
    rows = [one(base, c, method_of(c, args), args.work, args) for c in (args.only or ERASES)]
    data = {"n": args.n, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "cpu": cpu_name(), "torch": torch.__version__,
            "preserve": ({c: args.preserve or NEIGHBOURS[c] for c in (args.only or ERASES)}
                         if args.preserve_neighbours or args.preserve else None),
            "preserve_weight": args.preserve_weight, "settings": args.set,
            "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robust_toy.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "robust_toy.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
