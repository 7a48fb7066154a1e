"""Many concepts in one edit, on the toy world: erasure, interference and time against one concept.

    python benchmarks/multi_concept.py                      # every experiment, 4 images per prompt
    python benchmarks/multi_concept.py --only objects -n 8  # one experiment
    python benchmarks/multi_concept.py --only objects-u --set steps=300 --name objects-u-300

Experiments (toy defaults of `EraseConfig`, seed 0; every step trains every concept, so an
N-concept erase does N concept passes per step, and ceil(sqrt(N)) times the steps; scoring is
`esd_sdk.evaluate.evaluate`, the toy judge, the same seeds for base and edited):

    objects    ESD-x "circle", "square", "triangle" in one edit, --preserve cross; kept: cross
    objects-u  the same with ESD-u (the paper's choice for objects; not in the default run: on
               the toy its shared-weight edit takes the cross with it as the steps grow)
    textures   ESD-x "striped", "dotted" in one edit, --preserve plain; kept: plain
    single-*   the same method on the first concept alone: the time each multi erase is
               compared with (run in the same process, just before it; --no-single skips them)
    timing     erase time against the number of concepts (1, 3, 10) on a tiny random SD pipeline,
               interleaved rounds, median seconds and the ratio to one concept

Goals (issue 13): each erased concept <= 5%, the kept one within 3 points of the base. Each
multi-concept run also reports how often an erased prompt draws *any* erased concept (the eval's any_erased).
Writes multi_concept.json/.md (and eval reports and grids per run) to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toy_erasure import run_erase, scored, setting, toy_base

EXPERIMENTS = {
    "single-u": dict(concepts=["circle"], method="u"),
    "single-x-circle": dict(concepts=["circle"], method="x"),
    "objects": dict(concepts=["circle", "square", "triangle"], method="x", preserve=["cross"], keep=["cross"],
                    single="single-x-circle"),
    "objects-u": dict(concepts=["circle", "square", "triangle"], method="u", preserve=["cross"], keep=["cross"],
                      single="single-u"),
    "single-x": dict(concepts=["striped"], method="x"),
    "textures": dict(concepts=["striped", "dotted"], method="x", preserve=["plain"], keep=["plain"], single="single-x"),
}
GOAL_ERASED, GOAL_KEPT = 0.05, 0.03
TIMING_COUNTS = (1, 3, 10)


def timing(out: Path, rounds: int = 3) -> dict:
    """Seconds of an ESD-x erase (5 steps, 8 DDIM steps) of 1, 3 and 10 concepts, interleaved."""
    import statistics
    import tempfile
    import time

    from esd_sdk import load_base
    from esd_sdk.config import EraseConfig
    from esd_sdk.testing import build_random_sd
    from esd_sdk.training import train

    with tempfile.TemporaryDirectory() as tmp:
        model = build_random_sd(tmp)
        base = load_base(model)
        seconds: dict[int, list[float]] = {n: [] for n in TIMING_COUNTS}
        for _ in range(rounds):
            for n in TIMING_COUNTS:
                config = EraseConfig(concepts=[f"concept {i}" for i in range(n)], method="x", steps=5, ddim_steps=8, lr=1e-3)
                t0 = time.perf_counter()
                train(base, config, progress=False)
                seconds[n].append(time.perf_counter() - t0)
    median = {n: statistics.median(v) for n, v in seconds.items()}
    result = {"model": "tiny random SD (esd_sdk.testing.build_random_sd)", "rounds": rounds,
              "seconds": {str(n): [round(x, 3) for x in v] for n, v in seconds.items()},
              "ratio_to_one": {str(n): round(median[n] / median[1], 2) for n in TIMING_COUNTS}}
    (out / "timing.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| concepts | median s | x one concept |", "| --- | --- | --- |"]
    lines += [f"| {n} | {median[n]:.2f} | {median[n] / median[1]:.2f} |" for n in TIMING_COUNTS]
    (out / "timing.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result["ratio_to_one"]), flush=True)
    return result


def verdict(entry: dict) -> dict:
    rows = entry["rows"]
    erased = {r["key"]: r["edited"] for r in rows if r["prompt_set"] == "erased"}
    kept = {r["key"]: r["drop"] for r in rows if r["prompt_set"] == "kept"}
    return {"erased": erased, "kept_drop": kept, "any_erased": entry.get("any_erased"),
            "meets_goal": all(v <= GOAL_ERASED for v in erased.values()) and all(abs(d) <= GOAL_KEPT for d in kept.values())}


def markdown(entries: list[dict], n: int) -> str:
    lines = [f"Toy world, {n} images per prompt, toy judge. Goal: erased <= {GOAL_ERASED:.0%}, kept within "
             f"{100 * GOAL_KEPT:.0f} points of the base.", "",
             "| run | concepts | erased (edited rate) | kept (drop) | goal | any erased concept drawn | erase s | x one concept |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        v = e["verdict"]
        erased = ", ".join(f"{k} {100 * r:.1f}%" for k, r in v["erased"].items())
        kept = ", ".join(f"{k} {100 * d:+.1f} pts" for k, d in v["kept_drop"].items())
        ratio = f"{e['time_ratio']:.2f}" if e.get("time_ratio") else ""
        anyone = ", ".join(f"{k} {100 * r:.1f}%" for k, r in (e.get("any_erased") or {}).items())
        lines.append(f"| {e['name']} | {len(e['settings']['concepts'])} | {erased} | {kept} | "
                     f"{'yes' if v['meets_goal'] else 'no'} | {anyone} | {e['erase_seconds']} | {ratio} |")
    lines += ["", "Settings of each run: multi_concept.json (`settings`). Times are measured in one process, "
              "the single-concept erase just before the multi-concept one. \"Any erased concept drawn\": the share "
              "of each erased prompt's images in which the judge sees any of the erased concepts (a circle prompt "
              "drawing a triangle passes the eval's per-concept rate but draws an erased concept)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["objects", "objects-u", "textures", "timing"], action="append", help="experiments [all]")
    p.add_argument("-n", type=int, default=4, help="images per prompt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=setting,
                   help="an EraseConfig override for the multi-concept erases, e.g. steps=200")
    p.add_argument("--name", help="run name suffix [the experiment's]")
    p.add_argument("--no-single", action="store_true", help="skip the single-concept erase (no time ratio)")
    p.add_argument("--device", help="run erases and scoring on this torch device, e.g. cuda [cpu]")
    p.add_argument("--work", type=Path, default=Path("runs/multi_concept"), help="erase outputs")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/multi_concept"))
    args = p.parse_args()
    overrides = dict(args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "multi_concept.json"
    base = toy_base(args.device)

    def record(entry: dict) -> None:  # re-read first: experiments may run in parallel processes
        entries = json.loads(summary_path.read_text()) if summary_path.is_file() else []
        entries = [e for e in entries if e["name"] != entry["name"]] + [entry]
        summary_path.write_text(json.dumps(entries, indent=2) + "\n")
        (args.out / "multi_concept.md").write_text(markdown(entries, args.n))

    for name in args.only or ["objects", "textures", "timing"]:
        if name == "timing":
            timing(args.out)
            continue
        spec = dict(EXPERIMENTS[name])
        keep, single = spec.pop("keep"), spec.pop("single")
        single_seconds = None
        if not args.no_single:
            artifact, single_seconds = run_erase(args.work, single, base, **EXPERIMENTS[single])
            entry = scored(single, artifact, single_seconds, args.out, args.n, base_model=base)
            record({**entry, "verdict": verdict(entry)})
        run_name = args.name or name
        artifact, seconds = run_erase(args.work, run_name, base, **{**spec, **overrides})
        entry = scored(run_name, artifact, seconds, args.out, args.n, keep=keep, base_model=base)
        entry["any_erased"] = {r["key"]: r["any_erased"] for r in entry["rows"] if r["prompt_set"] == "erased"}
        ratio = seconds / single_seconds if single_seconds else None
        record({**entry, "verdict": verdict(entry), "time_ratio": ratio, "single_seconds": single_seconds})
        print(json.dumps({"name": run_name, **verdict(entry), "time_ratio": ratio}), flush=True)


if __name__ == "__main__":
    main()
