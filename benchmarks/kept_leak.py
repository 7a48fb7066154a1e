"""Where do the kept concepts' lost images go? Destroyed, or drawn as the erased concept?

    OMP_NUM_THREADS=1 python benchmarks/kept_leak.py runs/robust_toy/xeon_s*/robust-circle \
        --out benchmarks/results/robust_toy/kept_leak/all_p3_colours_130_keep_xeon

An erase that costs a kept concept images either destroys them (the judge sees another shape, or
none) or moves the erased concept to the kept prompt: "a green cross" drawn as a circle. The second
is the concept coming back with no attack at all. Each EDIT is scored with the eval's pieces (`esd_sdk.evaluate`: its prompt sets, scorer and sampler; toy
judge, eval seed 0 and 8 images a prompt unless told: the same images as robust_toy.py's scoring; the base
model's images once for all the edits, which must erase the same concepts)
and the table gives, per edit, the largest kept drop and the share of the kept prompts' images that
show the erased concept (the eval's ``kept_shows_erased``), base and edited, beside the kept drop of
each concept and how many of its lost images show the erased concept. Writes kept_leak.json and
kept_leak.md to --out; nothing is written into the edits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def leak(report) -> dict:
    """One edit's figures from an `EvalReport`: per kept concept the drop and the images lost and moved."""
    s = report.summary()
    kept = {}
    for r in (r for r in report.rows if r.prompt_set == "kept"):
        lost = round((r.base - r.edited) * r.images)
        moved = round(((r.any_erased or 0.0) - (r.any_erased_base or 0.0)) * r.images)
        kept[r.key] = {"drop": r.drop, "images": r.images, "lost": lost, "moved": moved}
    return {"erased": s["erased"], "max_kept_drop": s["max_kept_drop"], "kept_shows_erased": s.get("kept_shows_erased"),
            "kept_shows_erased_base": s.get("kept_shows_erased_base"), "kept": kept}


def markdown(rows: list[dict], n: int, seed: int) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"Toy judge, eval seed {seed}, {n} images a prompt. Kept images lost: base minus edited images of the "
             "kept concept; of them, drawn as the erased concept: the rise in the kept prompts' images that show it.", "",
             "| edit | plain prompts | max kept drop | kept prompts showing the erased concept, base / edited | "
             "kept images lost (drawn as the erased concept), by concept |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        by = ", ".join(f"{k} {v['lost']} ({v['moved']})" for k, v in r["kept"].items() if v["lost"] > 0 or v["moved"] > 0)
        lines.append(f"| {r['edit']} | {pct(r['erased'])} | {100 * r['max_kept_drop']:.1f} pts | "
                     f"{pct(r['kept_shows_erased_base'])} / {pct(r['kept_shows_erased'])} | {by or 'none'} |")
    lost = sum(v["lost"] for r in rows for v in r["kept"].values() if v["lost"] > 0)
    moved = sum(max(v["moved"], 0) for r in rows for v in r["kept"].values())
    lines += ["", f"Over {len(rows)} edits: {lost} kept images lost, {moved} kept images more than the base's drawn as "
              "the erased concept" + (f" ({100 * moved / lost:.0f}% of the lost)." if lost else ".")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("edits", nargs="+", type=Path, help="esd-sdk erase output directories")
    parser.add_argument("-n", type=int, default=8, help="images per prompt")
    parser.add_argument("--seed", type=int, default=0, help="eval seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    missing = [str(e) for e in args.edits if not (e / "esd.json").is_file()]
    if missing:
        parser.error(f"not an esd-sdk erase output (no esd.json): {', '.join(missing)}")
    from esd_sdk.artifact import load_edited_unet, load_manifest
    from esd_sdk.evaluate import EvalReport, compare, measure, sampler_config, scoring_plan

    # one plan and one base measurement for every edit (the eval's own pieces, as `esd-sdk sweep` uses them):
    # the base images are the same for every edit of the same concepts
    manifests = [load_manifest(edit) for edit in args.edits]
    concepts = {tuple(m["concepts"]) for m in manifests}
    if len(concepts) > 1:
        parser.error(f"the edits erase different concepts ({', '.join(map(str, sorted(concepts)))}): "
                     "pass edits of the same concepts, one run each")
    plan = scoring_plan(manifests[0], None, None, None, None, None, args.seed, {})
    config = sampler_config(plan.base, None, None)
    before = measure(plan.base, plan.sets, plan.scorer, args.n, config)
    rows = []
    for edit in args.edits:
        unet = load_edited_unet(edit).to(plan.base.unet.device)
        after = measure(plan.base, plan.sets, plan.scorer, args.n, config, unet=unet)
        report = EvalReport(str(edit), plan.base.source, args.n, args.seed, {}, plan.protocol, compare(before, after))
        rows.append({"edit": str(edit), **leak(report)})
        print(json.dumps({k: rows[-1][k] for k in ("edit", "max_kept_drop", "kept_shows_erased")}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kept_leak.json").write_text(json.dumps({"n": args.n, "seed": args.seed, "rows": rows}, indent=2) + "\n")
    (args.out / "kept_leak.md").write_text(markdown(rows, args.n, args.seed))
    print((args.out / "kept_leak.md").read_text())


if __name__ == "__main__":
    main()
