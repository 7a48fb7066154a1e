"""Score finished multi-concept edits again, on more images and other seeds than the run that made
them: is a miss by one or two images of 32 the edit, or the eval's sampling noise?

    python benchmarks/multi_concept_reeval.py runs/mc/s*/objects-* -n 16 --seed 1000 --out runs/reeval
    python benchmarks/multi_concept_reeval.py --pool runs/reeval/reeval.json \
        --with benchmarks/results/multi_concept/seeds/multi_concept.json

Each EDIT is an `esd-sdk erase` output directory; its erased concepts come from its manifest and
--keep (default: cross) are the kept ones. The base model's rates are measured on the same seeds.
Writes reeval.json and reeval.md (per-concept rates, the goal, the 95% Wilson interval of the
worst erased rate) to --out; nothing is written into the edits.

--pool adds up the images of a reeval.json and of the runs' own evals (a multi_concept.json whose
entries are named like the edits) and prints the pooled rates and the goal, as markdown.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from esd_sdk.artifact import load_manifest
from multi_concept import GOAL_ERASED, GOAL_KEPT, verdict


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate of ``hits`` in ``n``."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rescore(edits: list[Path], n: int, seed: int, keep: list[str], out: Path) -> None:
    from esd_sdk.evaluate import evaluate
    from toy_erasure import toy_base

    base = toy_base("cpu")
    rows = []
    for edit in edits:
        report = evaluate(edit, base_model=base, keep=keep, n=n, seed=seed, update=False)
        v = verdict({"rows": [{**r.__dict__, "drop": r.drop} for r in report.rows]})
        images = next(r.images for r in report.rows if r.prompt_set == "erased")  # the same for every erased concept
        row = {"edit": str(edit), "config": load_manifest(edit)["config"], "erased": v["erased"],
               "kept_drop": v["kept_drop"], "images_per_rate": images, "meets_goal": v["meets_goal"]}
        row["worst_erased_interval"] = _worst(row["erased"], images)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("edit", "erased", "kept_drop", "meets_goal")}), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reeval.json").write_text(json.dumps({"n": n, "seed": seed, "rows": rows}, indent=2) + "\n")
    lines = [f"Toy judge, {n} images per prompt from eval seed {seed} on. Goal: erased <= {GOAL_ERASED:.0%}, "
             f"kept within {100 * GOAL_KEPT:.0f} points of the base.", "",
             "| edit | erased | kept (drop) | goal | worst erased, 95% interval |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['edit']} | {_rates(r['erased'])} | {_drops(r['kept_drop'])} | "
                     f"{'yes' if r['meets_goal'] else 'no'} | {_interval_text(r['worst_erased_interval'], r['images_per_rate'])} |")
    (out / "reeval.md").write_text("\n".join(lines) + "\n")


def pool(reeval: Path, runs: Path) -> str:
    """Markdown: each edit of ``reeval`` with its run's own eval in ``runs`` (a multi_concept.json
    entry of the same name) added in: erased rates over both evals' images; the kept concepts must
    be within the goal on each eval."""
    first = {e["name"]: e for e in json.loads(runs.read_text())}
    lines = ["| edit | erased, pooled | images per rate | kept (drop), first / this eval | goal, pooled | worst erased, 95% interval |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in json.loads(reeval.read_text())["rows"]:
        entry = first[Path(r["edit"]).name]
        earlier = {x["key"]: x for x in entry["rows"] if x["prompt_set"] == "erased"}
        images = r["images_per_rate"] + earlier[next(iter(r["erased"]))]["images"]
        erased = {k: (round(v * r["images_per_rate"]) + round(earlier[k]["edited"] * earlier[k]["images"])) / images
                  for k, v in r["erased"].items()}
        kept_first = entry["verdict"]["kept_drop"]
        meets = (all(v <= GOAL_ERASED for v in erased.values())
                 and all(abs(d) <= GOAL_KEPT for d in [*kept_first.values(), *r["kept_drop"].values()]))
        kept = ", ".join(f"{k} {100 * kept_first[k]:+.1f} / {100 * d:+.1f} pts" for k, d in r["kept_drop"].items())
        lines.append(f"| {entry['name']} | {_rates(erased)} | {images} | {kept} | {'yes' if meets else 'no'} | "
                     f"{_interval_text(_worst(erased, images), images)} |")
    return "\n".join(lines) + "\n"


def _worst(erased: dict, images: int) -> list:
    """[concept, low, high]: the worst erased rate's 95% interval."""
    worst = max(erased, key=erased.get)
    return [worst, *wilson(round(erased[worst] * images), images)]


def _interval_text(interval: list, images: int) -> str:
    return f"{interval[0]}: {100 * interval[1]:.1f}-{100 * interval[2]:.1f}% of {images}"


def _rates(erased: dict) -> str:
    return ", ".join(f"{k} {100 * v:.1f}%" for k, v in erased.items())


def _drops(kept: dict) -> str:
    return ", ".join(f"{k} {100 * d:+.1f} pts" for k, d in kept.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("edits", nargs="*", type=Path)
    p.add_argument("-n", type=int, default=16, help="images per prompt")
    p.add_argument("--seed", type=int, default=1000, help="first eval seed (the runs used 0)")
    p.add_argument("--keep", action="append", help="kept concepts [cross]")
    p.add_argument("--out", type=Path, default=Path("runs/reeval"))
    p.add_argument("--pool", type=Path, help="a reeval.json to pool with --with instead of scoring EDITs")
    p.add_argument("--with", dest="runs", type=Path, help="the runs' multi_concept.json (for --pool)")
    args = p.parse_args()
    if args.pool:
        if not args.runs:
            p.error("--pool needs --with MULTI_CONCEPT_JSON: the runs whose evals it adds")
        print(pool(args.pool, args.runs), end="")
    elif args.edits:
        rescore(args.edits, args.n, args.seed, args.keep or ["cross"], args.out)
    else:
        p.error("pass EDIT directories to score, or --pool REEVAL_JSON --with MULTI_CONCEPT_JSON")


if __name__ == "__main__":
    main()
