"""Red-team plain ESD on the toy world: can `esd-sdk attack` bring the erased concept back?

    python benchmarks/attack_toy.py                     # ESD-u "circle" and ESD-x "striped", default budgets
    python benchmarks/attack_toy.py --only tokens       # inversion ASR against the number of learned tokens

Experiments (erases by the CLI at its toy defaults, seed 0; attacks by `esd_sdk.attack.run_attacks`
at its default budgets, seed 0, 8 images per prompt, the toy judge):

    default  for each erase: the plain-prompt rate, the ASR of `inversion` and `embedding`, and
             their controls on the base model (the same attack learned on the base; goal >= 80%)
    tokens   ESD-u "circle": inversion with 1, 4 and 8 learned tokens, embedding with 3 and 6, other
             budgets at their defaults: why the defaults spend tokens rather than steps

Erase outputs go to --work (reused when present, unless --fresh); reports to --out: per erase
attack.json/attack.md/grids, and the summary attack_toy.json/attack_toy.md. Times are wall-clock
seconds on this machine at --threads torch threads (recorded).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from esd_sdk.attack import DEFAULT_BUDGETS, run_attacks

ERASES = [("circle", "u"), ("striped", "x")]
TOKENS = {"inversion": (1, 4, 8), "embedding": (3, 6)}


def erased(work: Path, concept: str, method: str, fresh: bool) -> tuple[Path, float | None]:
    """The erase output for (concept, method), made by the CLI at its defaults if missing."""
    out = work / f"erased-{concept}"
    manifest = out / "esd.json"
    if manifest.is_file() and not fresh and json.loads(manifest.read_text())["method"] == method:
        return out, json.loads(manifest.read_text())["training"]["seconds"]
    subprocess.run([sys.executable, "-m", "esd_sdk", "erase", "--model", "toy", "--concept", concept, "--method", method,
                    "--out", str(out), "--overwrite", "-q"], check=True)
    return out, json.loads(manifest.read_text())["training"]["seconds"]


def markdown(data: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"Toy world, ESD at the CLI's toy defaults; attacks at their default budgets; {data['n']} images per "
             f"prompt, seed {data['seed']}, toy judge; {data['threads']} torch thread(s), {data['machine']}.", "",
             "| erase | attack | plain | start | ASR | control start | control (base) | attack s | control s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in data.get("default", []):
        for r in e["results"]:
            lines.append(f"| {e['name']} | {r['attack']} | {pct(r['plain'])} | {pct(r['start'])} | **{pct(r['asr'])}** | "
                         f"{pct(r['control_start'])} | {pct(r['control'])} | {r['seconds']:.0f} | "
                         f"{r['control_seconds']:.0f} |")
    lines += ["", "Edited model: plain = the plain prompts (the eval's erased set), start = the attack prompts before "
              "optimisation, ASR = after (the attack learned on the edited model). Base model: control start and "
              "control, the same attack learned on the base. attack s: learning + generating on the edited model.", "",
              "Budgets: " + "; ".join(f"{k}: {', '.join(f'{n} {v}' for n, v in b.items())}"
                                      for k, b in data["budgets"].items())]
    if data.get("tokens"):
        lines += ["", "ESD-u circle against the number of learned tokens (other budgets default):", "",
                  "| attack | tokens | start | ASR | control (base) | attack s |", "| --- | --- | --- | --- | --- | --- |"]
        for t in data["tokens"]:
            lines.append(f"| {t['attack']} | {t['n_tokens']} | {pct(t['start'])} | {pct(t['asr'])} | "
                         f"{pct(t['control'])} | {t['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["default", "tokens"], action="append", help="experiments to run [default]")
    p.add_argument("-n", type=int, default=8, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the toy on a shared CPU)")
    p.add_argument("--fresh", action="store_true", help="erase again even if --work holds the outputs")
    p.add_argument("--work", type=Path, default=Path("runs/attack"), help="erase outputs")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/attack_toy"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only or ["default"])
    args.out.mkdir(parents=True, exist_ok=True)
    summary = args.out / "attack_toy.json"
    data = json.loads(summary.read_text()) if summary.is_file() else {}
    data.update(n=args.n, seed=args.seed, threads=args.threads, machine=f"{platform.machine()}, torch {torch.__version__}",
                budgets={k: asdict(v) for k, v in DEFAULT_BUDGETS.items()})

    def save() -> None:
        summary.write_text(json.dumps(data, indent=2) + "\n")
        (args.out / "attack_toy.md").write_text(markdown(data))

    if "default" in only:
        data["default"] = []
        for concept, method in ERASES:
            edit, erase_seconds = erased(args.work, concept, method, args.fresh)
            name = f"esd-{method}-{concept}"
            t0 = time.perf_counter()
            report = run_attacks(edit, n=args.n, seed=args.seed, out=args.out / name, progress=sys.stderr.isatty())
            entry = {"name": name, "erase_seconds": erase_seconds, "total_seconds": round(time.perf_counter() - t0, 1),
                     "summary": report.summary(), "results": [asdict(r) for r in report.results]}
            data["default"].append(entry)
            print(json.dumps({"name": name, **report.summary()}), flush=True)
            save()
    if "tokens" in only:
        edit, _ = erased(args.work, *ERASES[0], args.fresh)
        data["tokens"] = []
        for attack, counts in TOKENS.items():
            for k in counts:
                report = run_attacks(edit, [attack], n_tokens=k, n=args.n, seed=args.seed, update=False,
                                     out=args.work / f"tokens-{attack}-{k}", progress=sys.stderr.isatty())
                r = report.results[0]
                data["tokens"].append({"attack": attack, "n_tokens": k, "start": r.start, "asr": r.asr,
                                       "control": r.control, "seconds": r.seconds})
                print(json.dumps(data["tokens"][-1]), flush=True)
                save()


if __name__ == "__main__":
    main()
