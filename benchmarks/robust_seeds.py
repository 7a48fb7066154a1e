"""Plain vs robust ESD across erase seeds: one table from the robust_toy.py reports of each seed.

    python benchmarks/robust_seeds.py benchmarks/results/robust_toy/seeds/across_seeds_start50/sources.txt \
        --out benchmarks/results/robust_toy/seeds/across_seeds_start50    # the default (from half-way)
    python benchmarks/robust_seeds.py benchmarks/results/robust_toy/seeds/across_seeds/sources.txt \
        --out benchmarks/results/robust_toy/seeds/across_seeds            # from the start (before stop 28)

The sources file lists robust_toy.json paths (relative to the file), one a line, each optionally
followed by the one variant to take from it (``plain`` or ``robust``); a seed may take its plain and
robust rows from different files, a later line overriding an earlier one. Per seed it
says whether robust ESD meets the toy goals of README *Red-teaming* (both attacks <= 5%, plain prompts
<= 2%, every kept concept within 3 points: at 32 images a rate, one image is 3.1%, so these mean
1, 0 and 0 images) and whether it lowers both attacks below plain ESD's; then the means, and how
many seeds meet the goals with a 95% Wilson interval for that rate. Plain rows may be any one recipe
(the default, or e.g. ``--method all``) and robust rows any one recipe (e.g. ``--set robust_start=0.5``),
if every row of each is the same; the table's first line names both. Every row must preserve the same
prompts (``--preserve square``, or e.g. all three kept shapes), which the first line names too. Reads
reports only: no model runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from multi_concept_reeval import wilson

GOALS = {"asr": 0.05, "erased": 0.02, "kept_drop": 0.03}


def figures(variant: dict) -> dict:
    a = variant["attacks"]
    return {"erased": variant["erased"], "inversion": a["inversion"]["asr"], "embedding": a["embedding"]["asr"],
            "controls": min(a["inversion"]["control"], a["embedding"]["control"]), "kept_drop": variant["max_kept_drop"],
            # None in reports from before the eval scored colours
            "kept_colour": variant.get("kept_colour"), "kept_colour_base": variant.get("kept_colour_base")}


def colour_mean(rows: list[dict]) -> dict:
    """The mean kept-in-the-colour-asked rate of the edits and of the base over the rows that carry one
    (reported beside the goals, not one of them), and how many do."""
    have = [r for r in rows if r.get("kept_colour") is not None and r.get("kept_colour_base") is not None]
    mean = lambda key: sum(r[key] for r in have) / len(have) if have else None  # noqa: E731
    return {"edited": mean("kept_colour"), "base": mean("kept_colour_base"), "seeds": len(have)}


# The robust settings a table compares, with the value each had before it existed (older reports lack it).
ROBUST_KEYS = {"robust_tokens": 6, "robust_attack_steps": 10, "robust_every": 1, "robust_lr": 0.05, "robust_images": 8,
               "robust_batch": 8, "robust_weight": 1.0, "robust_start": 0.0, "robust_objective": "denoise",
               "robust_templates": ["{}"], "robust_pool": 0, "robust_pool_every": 10}


def recipe_of(data: dict, row: dict) -> tuple[dict, dict]:
    """(the plain recipe, the robust recipe) of one report. Plain: its --set overrides other than the
    seed and the robust_* ones (plain ESD ignores those), and its ESD method where it is not u. Robust:
    every setting of ROBUST_KEYS as the robust erase ran it (from its recorded config; else the report's
    overrides), plus the plain recipe."""
    overrides = {k: v for k, v in data["settings"].items() if k != "seed"}
    if row.get("method", "u") != "u":
        overrides["method"] = row["method"]
    plain = {k: v for k, v in overrides.items() if not k.startswith("robust")}
    ran = row.get("robust", {}).get("config") or {**overrides, **row.get("robust_settings", {})}
    robust = {**{k: ran.get(k, v) for k, v in ROBUST_KEYS.items()}, **plain}
    return plain, robust


def collect(sources: Path) -> tuple[dict[int, dict[str, dict]], dict[str, dict]]:
    """seed -> {"plain": figures, "robust": figures} from the reports the sources file lists, and
    the recipe each variant's rows share (`recipe_of`): {"plain": ..., "robust": ..., "preserve": [...]}.
    Every row must preserve the same prompts (the square among them), and every row of a variant be
    of the same recipe."""
    seeds: dict[int, dict[str, dict]] = {}
    shared: dict[str, dict] = {}  # variant -> the recipe of its first row
    preserve: list[str] | None = None  # the prompts the first row preserves
    for line in sources.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        line, *only = line.split()
        if only and (len(only) > 1 or only[0] not in ("plain", "robust")):
            raise SystemExit(f"{line}: after the path, name one variant to take from it (plain or robust), got {' '.join(only)}")
        data = json.loads((sources.parent / line).read_text())
        row = next(r for r in data["rows"] if r["concept"] == "circle")
        plain, robust = recipe_of(data, row)
        kept = (data["preserve"] or {}).get("circle", [])
        if "square" not in kept or set(data["preserve"]) != {"circle"}:
            raise SystemExit(f"{line}: preserves {data['preserve']}, not the square for the circle: list only those")
        preserve = kept if preserve is None else preserve
        if kept != preserve:
            raise SystemExit(f"{line}: preserves {' '.join(kept)}, but an earlier line preserved {' '.join(preserve)}: "
                             "list reports that preserve the same prompts")
        seed = data["settings"].get("seed", 0)
        for name, recipe in (("plain", plain), ("robust", robust)):
            if name not in row or (only and name != only[0]):
                continue
            first = shared.setdefault(name, recipe)
            if recipe != first:
                words = describe if name == "robust" else describe_plain
                raise SystemExit(f"{line}: {name} ESD {words(recipe)}, but an earlier line had {words(first)}: "
                                 f"list one {name} recipe, so that every row is the same")
            seeds.setdefault(seed, {})[name] = {**figures(row[name]), "source": line}
    if "robust" not in shared:
        raise SystemExit(f"{sources} lists no robust run: add the robust_toy.json reports of robust erases")
    return seeds, {**shared, "preserve": preserve}


def goals(r: dict) -> dict[str, bool]:
    """Which of the three toy goals one robust run meets."""
    return {"asr": max(r["inversion"], r["embedding"]) <= GOALS["asr"], "erased": r["erased"] <= GOALS["erased"],
            "kept": r["kept_drop"] <= GOALS["kept_drop"]}


def meets(r: dict) -> bool:
    return all(goals(r).values())


def lowers(plain: dict, robust: dict) -> bool:
    """Whether robust ESD's rate under both attacks is below plain ESD's at the same seed."""
    return all(robust[a] < plain[a] for a in ("inversion", "embedding"))


def average(rows: list[dict]) -> dict:
    """The mean of each rate over ``rows`` of figures."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in ("erased", "inversion", "embedding", "kept_drop")}


def robust_rows(seeds: dict[int, dict[str, dict]]) -> list[dict]:
    """The robust figures of every seed that has them, in seed order."""
    return [seeds[s]["robust"] for s in sorted(seeds) if "robust" in seeds[s]]


def summary(seeds: dict[int, dict[str, dict]]) -> dict:
    both = sorted(s for s, v in seeds.items() if {"plain", "robust"} <= set(v))
    robust = robust_rows(seeds)
    met = sum(meets(r) for r in robust)
    lower = sum(lowers(seeds[s]["plain"], seeds[s]["robust"]) for s in both)
    mean = {name: average([seeds[s][name] for s in both]) for name in ("plain", "robust")} if both else {}
    each = {g: sum(goals(r)[g] for r in robust) for g in ("asr", "erased", "kept")}
    # The two goals no attack is needed for (plain prompts, kept shapes), for both variants: what ESD itself manages.
    attack_free = {name: sum(goals(v[name])["erased"] and goals(v[name])["kept"] for v in seeds.values() if name in v)
                   for name in ("plain", "robust")}
    return {"seeds": len(robust), "met": met, "met_interval": wilson(met, len(robust)), "met_each": each,
            "attack_free": attack_free, "plain_seeds": sum("plain" in v for v in seeds.values()), "paired_seeds": len(both),
            "robust_lower_both_attacks": lower, "mean_over_paired_seeds": mean, "mean_of_robust_rows": average(robust),
            "min_control": min(v[n]["controls"] for v in seeds.values() for n in v),
            "kept_colour": {name: colour_mean([v[name] for v in seeds.values() if name in v]) for name in ("plain", "robust")}}


def describe(recipe: dict) -> str:
    """A robust recipe in words: refresh x inner steps, where the inner attack starts, and any
    setting that differs from ROBUST_KEYS' values."""
    text = f"{recipe['robust_every']} x {recipe['robust_attack_steps']} from {recipe['robust_start']:g} of the steps"
    other = {k: v for k, v in recipe.items() if k not in ("robust_every", "robust_attack_steps", "robust_start")
             and ROBUST_KEYS.get(k, object()) != v}
    return text + "".join(f", {k}={v}" for k, v in other.items())


def describe_plain(recipe: dict) -> str:
    """A plain recipe in words: the toy defaults, and the settings (the method included) that differ from them."""
    return "toy defaults" + "".join(f", {k}={v}" for k, v in recipe.items())


def markdown(seeds: dict[int, dict[str, dict]], s: dict, recipes: dict[str, dict] | None = None) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    pts = lambda v: f"{100 * v:.1f} pts"  # noqa: E731
    cells = lambda r: f"{pct(r['erased'])} / {pct(r['inversion'])} / {pct(r['embedding'])} / {pts(r['kept_drop'])}"  # noqa: E731
    recipes = recipes or {}
    plain, robust = recipes.get("plain", {}), recipes.get("robust", ROBUST_KEYS)
    method = plain.get("method") or robust.get("method", "u")  # the plain rows', else the robust rows' (none plain)
    lines = [f"ESD-{method} \"circle\" --preserve {' '.join(recipes.get('preserve') or ['square'])} on the toy, "
             f"{describe_plain({k: v for k, v in plain.items() if k != 'method'})}; "
             f"robust {describe({k: v for k, v in robust.items() if (k, v) != ('method', method)})}. "
             "Eval and attack seed 0, 32 images a rate, toy judge. Cells: plain prompts / inversion ASR / "
             "embedding ASR / max kept drop.", "",
             "| erase seed | plain ESD | robust ESD | robust meets the goals | robust below plain (both attacks) |",
             "| --- | --- | --- | --- | --- |"]
    for seed in sorted(seeds):
        v = seeds[seed]
        p, r = v.get("plain"), v.get("robust")
        below = "" if not (p and r) else ("yes" if lowers(p, r) else "no")
        lines.append(f"| {seed} | {cells(p) if p else 'n/a'} | {cells(r) if r else 'n/a'} | "
                     f"{('**yes**' if meets(r) else 'no') if r else ''} | {below} |")
    if s["mean_over_paired_seeds"]:
        m = s["mean_over_paired_seeds"]
        lines.append(f"| mean of {s['paired_seeds']} | {cells(m['plain'])} | {cells(m['robust'])} | | |")
    elif not s["plain_seeds"]:  # robust rows alone
        lines.append(f"| mean of {s['seeds']} | n/a | {cells(s['mean_of_robust_rows'])} | | |")
    lo, hi = s["met_interval"]
    lines += ["", f"Robust ESD meets the ASR, plain-prompt and kept goals at **{s['met']} of {s['seeds']}** erase seeds "
                  f"(95% Wilson interval {100 * lo:.0f}-{100 * hi:.0f}%); one goal at a time: both attacks <= 5% at "
                  f"{s['met_each']['asr']}, plain prompts <= 2% at {s['met_each']['erased']}, kept within 3 points at "
                  f"{s['met_each']['kept']}."
                  + (f" It lowers both attacks below plain ESD's at {s['robust_lower_both_attacks']} of {s['paired_seeds']}."
                     if s["paired_seeds"] else " No plain ESD rows to compare with.")
                  + f" Lowest control on the base model: {pct(s['min_control'])}.",
              "", f"The two goals that need no attack (plain prompts <= 2%, kept within 3 points) together: robust ESD at "
                  f"{s['attack_free']['robust']} of {s['seeds']}"
                  + (f", plain ESD at {s['attack_free']['plain']} of {s['plain_seeds']}." if s["plain_seeds"] else ".")]
    colour = {name: c for name, c in s["kept_colour"].items() if c["seeds"]}
    if colour:  # the kept goal counts shapes; a kept shape repainted in another colour passes it
        lines += ["", "Kept images in the colour their prompt asks for (not a goal), base / edited: "
                      + ", ".join(f"{name} ESD {pct(c['base'])} / {pct(c['edited'])} (mean of {c['seeds']} seeds)"
                                  for name, c in colour.items()) + "."]
    return "\n".join(lines) + "\n"


def sources_args(doc: str, lines: str, outputs: str, count: int = 1,
                 options: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The command line of a table script: ``count`` sources files of ``lines`` (checked to exist; one
    path, or a list of ``count``), --out, and whatever ``options`` adds to the parser."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("sources", type=Path, nargs=None if count == 1 else count,
                        help=f"a text file of {lines}, one a line" + ("" if count == 1 else f" ({count} of them)"))
    parser.add_argument("--out", type=Path, help=f"write {outputs} here")
    if options:
        options(parser)
    args = parser.parse_args()
    for path in [args.sources] if count == 1 else args.sources:
        if not path.is_file():
            parser.error(f"{path} is not a file: list {lines} in it, one a line")
    return args


def main() -> None:
    args = sources_args(__doc__, "robust_toy.json paths", "across_seeds.md and .json")
    seeds, recipes = collect(args.sources)
    s = summary(seeds)
    text = markdown(seeds, s, recipes)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "across_seeds.md").write_text(text)
        (args.out / "across_seeds.json").write_text(json.dumps({"seeds": seeds, "robust_recipe": recipes["robust"], "plain_recipe": recipes.get("plain", {}),
                                                          "preserve": recipes["preserve"], "summary": s}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
