"""Peak memory and time of `--format onnx-pipeline` at SD 1.x scale, next to the UNet-only
`--format onnx` export, on this CPU, with random weights (speed and memory do not depend on them).

    flock /tmp/bigmem.lock .venv/bin/python benchmarks/onnx_pipeline_sd.py     # ~10 GB RAM

The model is `esd_sdk.testing.build_random_sd` with the SD 1.x UNet (859.5M parameters); its
text encoder and VAE are the small random ones of that helper, so the figures are the UNet's
plus a little. The erase output is made by hand from the base (its UNet unchanged): an erase
at this scale does not fit this machine, and the export does not look at the values. Each
export runs in its own process; peak memory is that process's max RSS.
Results: benchmarks/results/onnx_pipeline_sd/onnx_pipeline_sd.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import resource, sys, esd_sdk
esd_sdk.export(sys.argv[1], format=sys.argv[2], out=sys.argv[3])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB: this export's peak
"""


def hand_made_erase_output(base: Path, out: Path) -> Path:
    """An erase output whose UNet is the base's: enough for exporters, which never read the values."""
    from esd_sdk.artifact import MANIFEST_NAME
    from esd_sdk.loading import load_base, weights_hash

    shutil.copytree(base / "unet", out / "unet")
    unet_hash = weights_hash(load_base(base).unet)
    (out / MANIFEST_NAME).write_text(json.dumps({
        "format": "esd-sdk", "base_model": str(base.resolve()), "base_family": "sd1", "base_hash": unet_hash,
        "edited_hash": unet_hash, "concepts": ["none"], "method": "u", "config": {}}) + "\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/onnx_pipeline_sd"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx_pipeline_sd"))
    p.add_argument("--formats", nargs="+", default=["onnx-pipeline", "onnx"])
    args = p.parse_args()
    from esd_sdk.testing import build_random_sd, sd1_unet_config

    shutil.rmtree(args.work, ignore_errors=True)
    base = build_random_sd(args.work / "base", unet_config=sd1_unet_config())
    edit = hand_made_erase_output(base, args.work / "edit")
    results = []
    for fmt in args.formats:
        out = args.work / f"edit-{fmt}"
        t0 = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", CHILD, str(edit), fmt, str(out)], check=True,
                               stdout=subprocess.PIPE, text=True)
        peak = int(child.stdout.split()[-1])
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        meta = json.loads((out / "esd_export.json").read_text())
        results.append({"format": fmt, "seconds": round(time.perf_counter() - t0, 1),
                        "peak_rss_gib": round(peak / 2**20, 2),
                        "bytes": size, "unet_parity": meta["parity"]["max_abs_diff"]})
        print(json.dumps(results[-1]), flush=True)
        shutil.rmtree(out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx_pipeline_sd.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["SD 1.x UNet (859.5M, random weights), small text encoder/VAE, fp32, this CPU, one process per export.",
             "", "| format | time | peak RSS | size on disk | UNet parity |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['format']} | {r['seconds'] / 60:.1f} min | {r['peak_rss_gib']:.1f} GiB | {r['bytes'] / 1e9:.2f} GB | "
              f"{r['unet_parity']:.2g} |" for r in results]
    (args.out / "onnx_pipeline_sd.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
