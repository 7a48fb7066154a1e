"""Score finished multi-concept edits again, on more images and other seeds than the run that made
them: is a miss by one or two images of 32 the edit, or the eval's sampling noise?

    python benchmarks/multi_concept_reeval.py runs/mc/s*/objects-* -n 16 --seed 1000 --out runs/reeval

Each EDIT is an `esd-sdk erase` output directory; its erased concepts come from its manifest and
--keep (default: cross) are the kept ones. The base model's rates are measured on the same seeds.
Writes reeval.json and reeval.md (per-concept rates, the goal, the 95% Wilson interval of the
worst erased rate) to --out; nothing is written into the edits.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from esd_sdk.evaluate import evaluate
from multi_concept import GOAL_ERASED, GOAL_KEPT
from toy_erasure import toy_base


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate of ``hits`` in ``n``."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("edits", nargs="+", type=Path)
    p.add_argument("-n", type=int, default=16, help="images per prompt")
    p.add_argument("--seed", type=int, default=1000, help="first eval seed (the runs used 0)")
    p.add_argument("--keep", action="append", help="kept concepts [cross]")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/multi_concept/reeval"))
    args = p.parse_args()
    base = toy_base("cpu")
    rows = []
    for edit in args.edits:
        report = evaluate(edit, base_model=base, keep=args.keep or ["cross"], n=args.n, seed=args.seed, update=False)
        erased = {r.key: r.edited for r in report.rows if r.prompt_set == "erased"}
        kept = {r.key: r.drop for r in report.rows if r.prompt_set == "kept"}
        per_rate = {r.key: r.images for r in report.rows if r.prompt_set == "erased"}
        worst = max(erased, key=erased.get)
        row = {"edit": str(edit), "config": json.loads((edit / "esd.json").read_text())["config"],
               "erased": erased, "kept_drop": kept, "images_per_rate": per_rate[worst],
               "meets_goal": all(v <= GOAL_ERASED for v in erased.values()) and all(abs(d) <= GOAL_KEPT for d in kept.values())}
        row["worst_erased_interval"] = [worst, *wilson(round(erased[worst] * per_rate[worst]), per_rate[worst])]
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("edit", "erased", "kept_drop", "meets_goal")}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reeval.json").write_text(json.dumps({"n": args.n, "seed": args.seed, "rows": rows}, indent=2) + "\n")
    lines = [f"Toy judge, {args.n} images per prompt from eval seed {args.seed} on. Goal: erased <= {GOAL_ERASED:.0%}, "
             f"kept within {100 * GOAL_KEPT:.0f} points of the base.", "",
             "| edit | erased | kept (drop) | goal | worst erased, 95% interval |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        erased = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["erased"].items())
        kept = ", ".join(f"{k} {100 * d:+.1f} pts" for k, d in r["kept_drop"].items())
        ci = r["worst_erased_interval"]
        ci_text = f"{ci[0]}: {100 * ci[1]:.1f}-{100 * ci[2]:.1f}% of {r['images_per_rate']}"
        lines.append(f"| {r['edit']} | {erased} | {kept} | {'yes' if r['meets_goal'] else 'no'} | {ci_text} |")
    (args.out / "reeval.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
