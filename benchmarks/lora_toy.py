"""How faithfully a LoRA carries an erase, on the toy world: erased rate, kept drop and file size
at several ranks, against the full delta (the erase output's own UNet).

    python benchmarks/lora_toy.py                      # ESD-x "striped" and ESD-u "circle", 4 images per prompt
    python benchmarks/lora_toy.py -n 8 --rank 2 --rank 32
    python benchmarks/lora_toy.py --erased runs/plain-circle --erased runs/plain-striped   # score existing erases
    python benchmarks/lora_toy.py --no-score            # ranks, relative error and size only (a minute)

Each erase uses the toy defaults of `EraseConfig` (seed 0). Each LoRA is written by
`esd-sdk export --format lora` and loaded by its real consumer, diffusers'
``pipe.load_lora_weights`` (then fused), on a copy of the base model. Every model is scored by
the eval harness (`esd_sdk.evaluate`: the toy prompt sets, the toy judge, the same seeds as the
base model). Results: benchmarks/results/lora_toy/lora_toy.json and .md (--no-score: lora_structure.json/.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from esd_sdk import erase
from esd_sdk.artifact import load_edited_unet, load_manifest
from esd_sdk.delta import DELTA_NAME
from esd_sdk.evaluate import EvalReport, compare, measure, sampler_config, scoring_plan
from esd_sdk.export import export
from esd_sdk.export.lora import WEIGHT_NAME

ERASES = [("striped", "x"), ("circle", "u")]
RANKS = [1, 4, 16, 1024]  # 1024: full rank for every toy layer
ENERGIES = [0.9, 0.99]


def lora_unet(base, lora_dir: Path):
    """The base UNet with the LoRA loaded and fused by diffusers, on a copy (the base is untouched)."""
    pipe = base.with_components(unet=copy.deepcopy(base.unet)).pipeline
    pipe.load_lora_weights(lora_dir)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return pipe.unet


def row(name: str, plan, before, after, n: int, **extra) -> dict:
    report = EvalReport(edited_dir=name, base_model=plan.base.source, n_per_prompt=n, seed=0, sampler={},
                        protocol=plan.protocol, rows=compare(before, after))
    s = report.summary()
    kept = [r.drop for r in report.rows if r.prompt_set == "kept"]
    entry = {"variant": name, "erased": s["erased"], "paraphrase": s["paraphrase"], "kept": s["kept"],
             "kept_drop": sum(kept) / len(kept), "max_kept_drop": s["max_kept_drop"], **extra}
    print(json.dumps(entry), flush=True)
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=4, help="images per prompt")
    p.add_argument("--rank", type=int, action="append", help=f"fixed ranks [{RANKS}]")
    p.add_argument("--energy", type=float, action="append", help=f"energy-chosen ranks [{ENERGIES}]")
    p.add_argument("--erased", type=Path, action="append",
                   help="existing erase outputs to score instead of erasing ESD-x striped and ESD-u circle")
    p.add_argument("--no-score", action="store_true", help="skip the judge: ranks, relative error and sizes only")
    p.add_argument("--work", type=Path, default=Path("runs/lora_toy"), help="erase outputs and LoRAs")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lora_toy"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for artifact in args.erased or [args.work / f"esd-{method}-{concept}" for concept, method in ERASES]:
        if not args.erased:
            t0 = time.perf_counter()
            concept, method = artifact.name.split("-")[2], artifact.name.split("-")[1]
            erase("toy", concepts=[concept], method=method, out=artifact, overwrite=True, progress=False)
            print(f"{artifact.name}: erased in {time.perf_counter() - t0:.0f}s", flush=True)
        manifest = load_manifest(artifact)
        name = f"esd-{manifest['method']}-{'+'.join(manifest['concepts'])}"
        if manifest["config"].get("preserve"):
            name += f" (--preserve {' '.join(manifest['config']['preserve'])})"
        delta_bytes = (artifact / DELTA_NAME).stat().st_size
        if args.no_score:
            rows = [{"variant": "full delta", "bytes": delta_bytes}]
        else:
            plan = scoring_plan(manifest, None, None, None, None, None, 0, {})
            config = sampler_config(plan.base, None, None)
            before = measure(plan.base, plan.sets, plan.scorer, args.n, config)
            rows = [row("base model", plan, before, before, args.n),
                    row("full delta", plan, before, measure(plan.base, plan.sets, plan.scorer, args.n, config,
                                                            unet=load_edited_unet(artifact)), args.n, bytes=delta_bytes)]
        variants = [(f"rank {r}", {"rank": r}) for r in args.rank or RANKS]
        variants += [(f"energy {e:g}", {"rank_energy": e}) for e in args.energy or ENERGIES]
        for label, kwargs in variants:
            lora = export(artifact, format="lora", out=args.work / f"{artifact.name}-lora-{label.replace(' ', '')}",
                          overwrite=True, **kwargs).written
            ranks = sorted(lora.ranks.values())
            structure = dict(bytes=(lora.directory / WEIGHT_NAME).stat().st_size, ranks=f"{ranks[0]}-{ranks[-1]}",
                             relative_error=lora.relative_error, carried_share=lora.carried_share,
                             dropped_tensors=len(lora.dropped))
            if args.no_score:
                rows.append({"variant": f"LoRA {label}", **structure})
                print(json.dumps(rows[-1]), flush=True)
                continue
            after = measure(plan.base, plan.sets, plan.scorer, args.n, config, unet=lora_unet(plan.base, lora.directory))
            rows.append(row(f"LoRA {label}", plan, before, after, args.n, **structure))
        results.append({"erase": name, "summary": manifest["trained"]["summary"], "n_per_prompt": args.n, "rows": rows})
        stem = "lora_structure" if args.no_score else "lora_toy"
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(markdown(results))


def markdown(results: list[dict]) -> str:
    scored = any("erased" in e for r in results for e in r["rows"])
    lines = [f"Toy world, {results[0]['n_per_prompt']} images per prompt, toy judge; rates are the share of images "
             "showing the concept (erased: the erased concept's prompts; kept drop: mean over the kept concepts)."
             if scored else "Toy world, structure only (--no-score, no images): per-tensor SVD ranks, relative "
             "Frobenius error ||dW - BA|| / ||dW|| over the carried weights, file sizes.", ""]
    for r in results:
        lines += [f"**{r['erase']}** ({r['summary']})", "",
                  "| variant | ranks | rel. error | erased | paraphrase | kept drop (mean / max) | size |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for e in r["rows"]:
            size = f"{e['bytes'] / 1e6:.2f} MB" if "bytes" in e else "-"
            err = f"{e['relative_error']:.2g}" if "relative_error" in e else "-"
            scored = "erased" in e
            rates = (f"{100 * e['erased']:.1f}% | {100 * e['paraphrase']:.1f}% | "
                     f"{100 * e['kept_drop']:+.1f} / {100 * e['max_kept_drop']:+.1f} pts" if scored else "- | - | -")
            lines.append(f"| {e['variant']} | {e.get('ranks', '-')} | {err} | {rates} | {size} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
