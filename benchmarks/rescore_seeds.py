"""The same edits scored again with more images and fresh seeds: is a per-seed miss the edit's or the draw's?

    python benchmarks/rescore_seeds.py benchmarks/results/robust_toy/seeds/rescore_all_p3_colours/sources.txt \
        --out benchmarks/results/robust_toy/seeds/rescore_all_p3_colours

At 32 images a rate (robust_toy.py's default) one image is 3.1%, so the toy goals of README *Red-teaming*
(both attacks <= 5%, plain prompts <= 2%, every kept concept within 3 points) read as at most 1, 0 and 0
images: a single image decides a seed. Scored with 32 images a prompt (128 a rate: 6, 2 and 3 images),
the same thresholds are read to 0.8%. Each line of the sources file is

    SEED EVAL_DIR [REPORT]

EVAL_DIR: what `esd-sdk eval EDIT --seed 1000 -n 32 --attack inversion --attack embedding --no-update --out EVAL_DIR`
wrote (eval.json, attack/attack.json) for the edit of that erase seed; REPORT: the robust_toy.json that
first scored the same edit, for the side-by-side column (its robust row). Paths are relative to the file.
Reads reports only: no model runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from multi_concept_reeval import wilson
from robust_seeds import average, figures, goals, meets, sources_args


def rescored(eval_dir: Path) -> dict:
    """The figures of one re-scored edit, named as robust_seeds' are, with the images behind each rate."""
    ev = json.loads((eval_dir / "eval.json").read_text())
    at = json.loads((eval_dir / "attack" / "attack.json").read_text())
    asr = {r["attack"]: r for r in at["results"]}
    missing = {"inversion", "embedding"} - set(asr)
    if missing:
        raise SystemExit(f"{eval_dir}: no {' or '.join(sorted(missing))} attack in attack/attack.json: "
                         "score it with --attack inversion --attack embedding")
    images = {r["prompt_set"]: r["images"] for r in ev["rows"]}
    return {"erased": ev["summary"]["erased"], "inversion": asr["inversion"]["asr"], "embedding": asr["embedding"]["asr"],
            "controls": min(asr["inversion"]["control"], asr["embedding"]["control"]),
            "kept_drop": ev["summary"]["max_kept_drop"], "images": images.get("erased"), "seed": ev["seed"]}


def collect(sources: Path) -> dict[int, dict]:
    """seed -> {"rescored": figures, "first": figures of the first scoring (or None)}."""
    seeds: dict[int, dict] = {}
    for line in sources.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        seed, eval_dir, *report = line.split()
        first = None
        if report:
            data = json.loads((sources.parent / report[0]).read_text())
            first = figures(data["rows"][0]["robust"])
        seeds[int(seed)] = {"rescored": rescored(sources.parent / eval_dir), "first": first}
    if not seeds:
        raise SystemExit(f"{sources} lists no scored edits: one 'SEED EVAL_DIR [REPORT]' a line")
    return seeds


def summary(seeds: dict[int, dict]) -> dict:
    n = len(seeds)
    out: dict = {"seeds": n}
    for key in ("rescored", "first"):
        rows = [v[key] for v in seeds.values() if v[key]]
        if not rows:
            continue
        met = sum(meets(r) for r in rows)
        out[key] = {"met": met, "of": len(rows), "met_interval": wilson(met, len(rows)),
                    "met_each": {g: sum(goals(r)[g] for r in rows) for g in ("asr", "erased", "kept")},
                    "mean": average(rows),
                    "min_control": min(r["controls"] for r in rows)}
    return out


def markdown(seeds: dict[int, dict], s: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    cells = lambda r: f"{pct(r['erased'])} / {pct(r['inversion'])} / {pct(r['embedding'])} / {100 * r['kept_drop']:.1f} pts"  # noqa: E731
    some = next(iter(seeds.values()))["rescored"]
    lines = [f"The same edits scored again: eval and attack seed {some['seed']}, {some['images']} images a rate, toy judge "
             "(first scoring: seed 0, 32 images a rate). Cells: plain prompts / inversion ASR / embedding ASR / max kept drop.",
             "", "| erase seed | first scoring | meets the goals | scored again | meets the goals |", "| --- | --- | --- | --- | --- |"]
    yes = lambda r: "**yes**" if meets(r) else "no"  # noqa: E731
    for seed in sorted(seeds):
        v = seeds[seed]
        f, r = v["first"], v["rescored"]
        lines.append(f"| {seed} | {cells(f) if f else 'n/a'} | {yes(f) if f else ''} | {cells(r)} | {yes(r)} |")
    row = lambda key: cells(s[key]["mean"]) if key in s else "n/a"  # noqa: E731
    lines.append(f"| mean of {s['seeds']} | {row('first')} | | {row('rescored')} | |")
    lines.append("")
    for key, name in (("first", "At the first scoring"), ("rescored", "Scored again")):
        if key not in s:
            continue
        k = s[key]
        lo, hi = k["met_interval"]
        lines.append(f"{name} the edits meet every goal at **{k['met']} of {k['of']}** erase seeds (95% Wilson interval "
                     f"{100 * lo:.0f}-{100 * hi:.0f}%); one at a time: both attacks <= 5% at {k['met_each']['asr']}, plain "
                     f"prompts <= 2% at {k['met_each']['erased']}, kept within 3 points at {k['met_each']['kept']}. "
                     f"Lowest control on the base model: {pct(k['min_control'])}.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    args = sources_args(__doc__, "'SEED EVAL_DIR [REPORT]' lines", "rescored.md and .json")
    seeds = collect(args.sources)
    s = summary(seeds)
    text = markdown(seeds, s)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "rescored.md").write_text(text)
        (args.out / "rescored.json").write_text(json.dumps({"seeds": seeds, "summary": s}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
