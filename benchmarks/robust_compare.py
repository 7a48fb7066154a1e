"""Two sets of robust erases, side by side: is the difference between them more than the erase seeds' draw?

    python benchmarks/robust_compare.py \
        benchmarks/results/robust_toy/seeds/across_seeds_all_p3_colours_130_keep/sources.txt \
        benchmarks/results/robust_toy/seeds/across_seeds_all_p3_colours_130_keep_xeon/sources.txt \
        --labels "AMD EPYC" "Intel Xeon" --out benchmarks/results/robust_toy/seeds/compare_130_keep_cpus

Each sources file is what `robust_seeds.py` reads (robust_toy.json reports, one a line); the robust rows
of each are compared: a recipe against another, or one recipe's commands run on two machines. For each
figure (plain prompts, inversion ASR, embedding ASR, max kept drop) it gives both means and a two-sided
permutation test of their difference (the rows relabelled at random, seeded: the share of relabellings
whose difference in means is at least as large); for the per-seed goals (robust_seeds.GOALS, all
three at one seed), both counts and Fisher's exact test. With 10 seeds a side only large differences
show. Writes compare.md and compare.json to --out. Reads reports only: no model runs.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import robust_seeds
from robust_seeds import average, collect, describe, meets, sources_args

FIGURES = {"erased": "plain prompts", "inversion": "inversion ASR", "embedding": "embedding ASR", "kept_drop": "max kept drop"}


def permutation_p(a: list[float], b: list[float], rounds: int = 20000, seed: int = 0) -> float:
    """Two-sided p of mean(b) - mean(a) under random relabelling of the pooled values, with the
    observed labelling counted once ((hits + 1) / (rounds + 1): never 0)."""
    observed = abs(sum(b) / len(b) - sum(a) / len(a))
    pooled, rng, hits = list(a) + list(b), random.Random(seed), 0
    for _ in range(rounds):
        rng.shuffle(pooled)
        left, right = pooled[:len(a)], pooled[len(a):]
        hits += abs(sum(right) / len(right) - sum(left) / len(left)) >= observed - 1e-12
    return (hits + 1) / (rounds + 1)


def fisher_p(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided Fisher exact test of k_a of n_a against k_b of n_b: the probability, with the margins
    fixed, of every table no likelier than the one observed."""
    k, n = k_a + k_b, n_a + n_b
    prob = lambda x: math.comb(n_a, x) * math.comb(n_b, k - x) / math.comb(n, k)  # noqa: E731
    observed = prob(k_a)
    return min(1.0, sum(prob(x) for x in range(max(0, k - n_b), min(k, n_a) + 1) if prob(x) <= observed * (1 + 1e-9)))


def robust_rows(sources: Path) -> tuple[list[dict], dict]:
    """The robust figures a sources file lists, in seed order, and their recipe."""
    seeds, recipes = collect(sources)
    return robust_seeds.robust_rows(seeds), recipes["robust"]


def compare(a: list[dict], b: list[dict], rounds: int = 20000) -> dict:
    mean_a, mean_b = average(a), average(b)
    out = {key: {"a": mean_a[key], "b": mean_b[key], "p": permutation_p([r[key] for r in a], [r[key] for r in b], rounds)}
           for key in FIGURES}
    met_a, met_b = sum(map(meets, a)), sum(map(meets, b))
    out["every_goal"] = {"a": met_a, "b": met_b, "n_a": len(a), "n_b": len(b), "p": fisher_p(met_a, len(a), met_b, len(b))}
    return out


def markdown(result: dict, labels: list[str], recipes: list[dict]) -> str:
    pct = lambda v, key: f"{100 * v:.1f}" + (" pts" if key == "kept_drop" else "%")  # noqa: E731
    lines = [f"Robust erases compared: {labels[0]} (robust {describe(recipes[0])}) against {labels[1]} "
             f"(robust {describe(recipes[1])}). Means over the erase seeds; p: two-sided permutation test of the "
             "difference in means, Fisher's exact test for the per-seed goals.", "",
             f"| figure | {labels[0]} | {labels[1]} | p |", "| --- | --- | --- | --- |"]
    for key, name in FIGURES.items():
        r = result[key]
        lines.append(f"| {name} | {pct(r['a'], key)} | {pct(r['b'], key)} | {r['p']:.3f} |")
    g = result["every_goal"]
    lines.append(f"| every goal at one seed | {g['a']} of {g['n_a']} | {g['b']} of {g['n_b']} | {g['p']:.3f} |")
    return "\n".join(lines) + "\n"


def at_least_one(text: str) -> int:
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return int(text)


def main() -> None:
    def options(parser):
        parser.add_argument("--labels", nargs=2, default=["A", "B"], help="names of the two sets in the table")
        parser.add_argument("--rounds", type=at_least_one, default=20000, help="relabellings of the permutation test [20000]")

    args = sources_args(__doc__, "robust_toy.json paths", "compare.md and compare.json", count=2, options=options)
    (a, recipe_a), (b, recipe_b) = (robust_rows(path) for path in args.sources)
    result = compare(a, b, args.rounds)
    text = markdown(result, args.labels, [recipe_a, recipe_b])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.md").write_text(text)
        (args.out / "compare.json").write_text(json.dumps({"labels": args.labels, "sources": [str(p) for p in args.sources],
                                                           "rounds": args.rounds, **result}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
