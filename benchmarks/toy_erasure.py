"""Erasure efficacy and interference on the toy world, measured with `esd-sdk eval`'s harness.

    python benchmarks/toy_erasure.py                       # all experiments below, 8 images per prompt
    python benchmarks/toy_erasure.py --only single -n 4    # one experiment, fewer images

Experiments (each erase uses the toy defaults of `EraseConfig`, seed 0; scoring is
`esd_sdk.evaluate.evaluate`: same seeds for base and edited, the toy judge):

    single   ESD-u "circle" and ESD-x "striped": erased, paraphrase and kept rates
    multi    ESD-u on "circle", "square" and "triangle" in one run, without and with
             --preserve cross/striped/dotted: interference on the kept concepts
    sweep    `esd_sdk.evaluate.sweep` of the "circle" erase over eta: the trade-off plot

Erase outputs go to --work (not kept); reports (eval.json/eval.md/grids per run, sweep.json/
sweep.md/sweep.png, and a summary toy_erasure.json/.md) to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from esd_sdk import erase
from esd_sdk.evaluate import evaluate, sweep

SINGLE = [("circle", "u"), ("striped", "x")]
MULTI = ["circle", "square", "triangle"]
MULTI_KEEP = ["cross", "striped", "dotted"]
ETAS = [0.25, 0.5, 1.0, 2.0, 4.0]


def toy_base(device: str | None = None):
    """The toy model, loaded once for every erase and scoring of a run, on ``device`` if given
    (e.g. "cuda": erases, scoring and the judge all run there)."""
    from esd_sdk import load_base

    base = load_base("toy")
    if device:
        base.pipeline.to(device)
    return base


def setting(text: str) -> tuple[str, object]:
    """argparse type of ``--set KEY=VALUE`` (an EraseConfig override; VALUE read as JSON when it parses)."""
    import argparse

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE (e.g. steps=200)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run_erase(work: Path, name: str, base, **settings) -> tuple[Path, float]:
    out = work / name
    t0 = time.perf_counter()
    erase(base, out=out, overwrite=True, progress=False, **settings)
    return out, time.perf_counter() - t0


def scored(name: str, artifact: Path, seconds: float, out: Path, n: int, **eval_args) -> dict:
    report = evaluate(artifact, n=n, output_dir=out / name, **eval_args)
    entry = {"name": name, "erase_seconds": round(seconds, 1), "settings": json.loads((artifact / "esd.json").read_text())["config"],
             "summary": report.summary(), "rows": [{**r.__dict__, "drop": r.drop} for r in report.rows]}
    print(json.dumps({"name": name, "erase_seconds": entry["erase_seconds"], **report.summary()}), flush=True)
    return entry


def markdown(entries: list[dict], n: int) -> str:
    lines = [f"Toy world, {n} images per prompt, toy judge (rates: share of images showing the concept).", "",
             "| run | set | concept | base | edited | drop |", "| --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        for r in e["rows"]:
            lines.append(f"| {e['name']} | {r['prompt_set']} | {r['key']} | {100 * r['base']:.1f}% | "
                         f"{100 * r['edited']:.1f}% | {100 * r['drop']:+.1f} pts |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["single", "multi", "sweep"], action="append", help="experiments to run [all]")
    p.add_argument("-n", type=int, default=8, help="images per prompt")
    p.add_argument("--eta", type=float, action="append", help=f"sweep values [{ETAS}]")
    p.add_argument("--work", type=Path, default=Path("runs/toy_erasure"), help="erase outputs")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/toy_erasure"))
    args = p.parse_args()
    only = set(args.only or ["single", "multi", "sweep"])
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "toy_erasure.json"
    entries = json.loads(summary_path.read_text()) if summary_path.is_file() else []

    def record(entry: dict) -> None:
        entries[:] = [e for e in entries if e["name"] != entry["name"]] + [entry]
        summary_path.write_text(json.dumps(entries, indent=2) + "\n")
        (args.out / "toy_erasure.md").write_text(markdown(entries, args.n))

    base = toy_base()
    if "single" in only or "sweep" in only:
        for concept, method in SINGLE if "single" in only else SINGLE[:1]:
            name = f"esd-{method}-{concept}"
            artifact, seconds = run_erase(args.work, name, base, concepts=[concept], method=method)
            record(scored(name, artifact, seconds, args.out, args.n, base_model=base))
    if "multi" in only:
        for preserve in ([], MULTI_KEEP):
            name = "esd-u-circle+square+triangle" + ("-preserve" if preserve else "")
            artifact, seconds = run_erase(args.work, name, base, concepts=MULTI, method="u", preserve=preserve)
            record(scored(name, artifact, seconds, args.out, args.n, keep=MULTI_KEEP, base_model=base))
    if "sweep" in only:
        report = sweep(args.work / "esd-u-circle", args.eta or ETAS, n=args.n, output_dir=args.out / "sweep-esd-u-circle")
        print(report.markdown(), flush=True)


if __name__ == "__main__":
    main()
