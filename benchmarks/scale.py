"""Seconds and peak memory of each stage at the true SD 1.x / SDXL UNet sizes (random weights).

    flock /tmp/bigmem.lock python benchmarks/scale.py --size sd1                 # every stage, ~30 min on 2 cores
    flock /tmp/bigmem.lock python benchmarks/scale.py --size sdxl --stages onnx_fp32,onnx_fp16

Stages, each in its own process (its peak RSS is that process's alone, read from wait4's
rusage when it exits), in order, sharing a work directory:

- ``build``: a random-weight pipeline whose UNet has the true architecture (sd1: diffusers'
  default UNet2DConditionModel with 64x64 latents and 768-wide text states, 859.5 M parameters;
  sdxl: SDXL's UNet, 2.57 B), saved as safetensors; its text encoder and VAE are tiny (they
  do not change what is measured here: the UNet's memory and time).
- ``erase``: ESD-x, a few steps in bf16 autocast, written as an erase output (the fold:
  standalone UNet + delta + manifest).
- ``onnx_fp32`` / ``onnx_fp16``: `esd_sdk.export.export_onnx` of the erase output (of the base
  UNet when ``erase`` was not run), with its parity gate and ONNX Runtime's optimizer.
- ``serve``: one image through `Text2ImagePipeline` on the fp32 ONNX export (ONNX Runtime, CPU).

Peak memory is reported against the fp32 UNet's size (parameters x 4 bytes): the export goal
is <= 1.5x. Two peaks per stage: peak RSS (wait4's ru_maxrss, which also counts the file-backed
pages of weights files mapped while they are read) and peak anonymous memory (RssAnon sampled
every 50 ms: what the process must own; file pages can be dropped under memory pressure). Writes benchmarks/results/scale_<size>.json and .md. Not part of CI (too slow).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STAGES = ("build", "erase", "onnx_fp32", "onnx_fp16", "serve")


def sdxl_unet_config() -> dict:
    """SDXL base's UNet (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json)."""
    return dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)


def _unet_config(size: str) -> dict:
    from esd_sdk.testing import sd1_unet_config

    return sd1_unet_config() if size == "sd1" else sdxl_unet_config()


def stage(name: str, size: str, work: Path) -> dict:
    """Run one stage in this process; returns what it measured besides time and memory."""
    import torch

    model, edited = work / "model", work / "edited"
    source = edited if edited.is_dir() else model
    if name == "build":
        from esd_sdk.testing import build_random_sd

        if size == "sd1":
            build_random_sd(work / "build", unet_config=_unet_config(size)).rename(model)
        else:  # the UNet alone: the SDXL erase and serving stages are out of a CPU's reach
            from diffusers import UNet2DConditionModel

            torch.manual_seed(0)
            UNet2DConditionModel(**_unet_config(size)).save_pretrained(model / "unet")
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(model / "unet")
        return {"unet_params": sum(p.numel() for p in unet.parameters())}
    if name == "erase":
        from esd_sdk import erase

        result = erase(str(model), "a red circle", method="x", out=edited, progress=False, steps=2, ddim_steps=2,
                       precision="bf16", resolution=256)
        return {"erase_seconds": result.manifest["training"]["seconds"], "steps": 2, "ddim_steps": 2,
                "resolution": 256, "precision": "bf16"}
    if name.startswith("onnx_"):
        from esd_sdk.export import export_onnx

        precision = name.split("_")[1]
        r = export_onnx(source, work / name, precision=precision, overwrite=True)
        return {"parity_max_abs_diff": r.parity.max_abs_diff, "tolerance": r.parity.tolerance,
                "optimization": r.optimization, "external_data": r.external_data,
                "bytes_on_disk": sum(p.stat().st_size for p in (work / name).rglob("*") if p.is_file())}
    if name == "serve":
        from esd_sdk.loading import load_base
        from esd_sdk.serving.pipeline import Text2ImagePipeline
        from esd_sdk.serving.runtime import load_runtime

        pipe = Text2ImagePipeline(load_base(str(model)), load_runtime(work / "onnx_fp32", "onnxruntime", provider="cpu"))
        image = pipe(["a red circle"], seeds=[0], steps=2)
        return {"image_shape": list(image.shape), "steps": 2}
    raise ValueError(name)


class _AnonPeak:
    """The highest RssAnon of a process, sampled every 50 ms from /proc: the memory it must own.

    ``ru_maxrss`` also counts file-backed pages (a safetensors or ONNX weights file mapped while
    it is read), which the kernel can drop under pressure; both peaks are reported."""

    def __init__(self, pid: int):
        import threading

        self.path, self.peak_kib, self.done = f"/proc/{pid}/status", 0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done.wait(0.05):
            try:
                with open(self.path) as f:
                    kib = next((int(line.split()[1]) for line in f if line.startswith("RssAnon:")), 0)
            except (OSError, ValueError):
                continue
            self.peak_kib = max(self.peak_kib, kib)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak_kib


def run(size: str, stages: list[str], work: Path) -> dict:
    """Each stage in a child process, in order; a failed stage is recorded and stops the run."""
    report = {"size": size, "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
              "stages": {}}
    for name in stages:
        result = work / f"{name}.json"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--size", size, "--stage", name, "--work", str(work)])
        anon = _AnonPeak(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        entry = {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
                 "peak_anon_gib": round(anon.stop() / 2**20, 2), "exit": os.waitstatus_to_exitcode(status)}
        if result.is_file():
            entry.update(json.loads(result.read_text()))
        report["stages"][name] = entry
        print(name, json.dumps(entry), flush=True)
        if entry["exit"] != 0:
            break
    params = next((e["unet_params"] for e in report["stages"].values() if "unet_params" in e), None)
    if params is None and (work / "build.json").is_file():
        params = json.loads((work / "build.json").read_text())["unet_params"]
    if params:
        report["unet_params"] = params
        report["unet_fp32_gib"] = round(params * 4 / 2**30, 2)
        for e in report["stages"].values():
            e["peak_over_fp32_unet"] = round(e["peak_rss_gib"] / report["unet_fp32_gib"], 2)
            if "peak_anon_gib" in e:
                e["anon_over_fp32_unet"] = round(e["peak_anon_gib"] / report["unet_fp32_gib"], 2)
    return report


def markdown(report: dict) -> str:
    lines = [f"# Scale: {report['size']} UNet ({report.get('unet_params', 0) / 1e6:.1f} M parameters, "
             f"fp32 {report.get('unet_fp32_gib', '?')} GiB), random weights", "",
             "| stage | seconds | peak RSS GiB | peak / fp32 UNet | peak anonymous GiB | anonymous / fp32 UNet | notes |",
             "|---|---|---|---|---|---|---|"]
    for name, e in report["stages"].items():
        notes = []
        if "parity_max_abs_diff" in e:
            opt = e.get("optimization") or {}
            notes.append(f"parity {e['parity_max_abs_diff']:.2g} <= {e['tolerance']:g}; "
                         + (f"optimized for {opt['target']}" if "target" in opt else f"plain graph {opt.get('skipped', '')}"[:80]))
        if "erase_seconds" in e:
            notes.append(f"{e['steps']} steps {e['precision']} at {e['resolution']} px, erase {e['erase_seconds']:.0f} s")
        if e["exit"]:
            notes.append(f"exit {e['exit']}")
        lines.append(f"| {name} | {e['seconds']:.0f} | {e['peak_rss_gib']:.2f} | {e.get('peak_over_fp32_unet', '-')}x | "
                     f"{e.get('peak_anon_gib', '-')} | {str(e['anon_over_fp32_unet']) + 'x' if 'anon_over_fp32_unet' in e else '-'} | "
                     f"{'; '.join(notes)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["sd1", "sdxl"], default="sd1")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} [all; sdxl: build,onnx_fp32,onnx_fp16]")
    p.add_argument("--work", help="work directory [a new one under /tmp]; reuse one to skip stages done")
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:  # child: one stage, its result next to the work files
        sys.path.insert(0, str(HERE.parent))
        out = stage(args.stage, args.size, Path(args.work))
        (Path(args.work) / f"{args.stage}.json").write_text(json.dumps(out) + "\n")
        return
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix=f"scale-{args.size}-"))
    work.mkdir(parents=True, exist_ok=True)
    default = STAGES if args.size == "sd1" else ("build", "onnx_fp32", "onnx_fp16")
    stages = args.stages.split(",") if args.stages else list(default)
    report = run(args.size, stages, work)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"scale_{args.size}.json"
    if path.is_file() and args.stages:  # a subset re-run: keep the other stages' last figures
        earlier = json.loads(path.read_text())
        report["stages"] = {**{k: v for k, v in earlier.get("stages", {}).items() if k not in report["stages"]},
                            **report["stages"]}
        report["stages"] = {k: report["stages"][k] for k in STAGES if k in report["stages"]}
    path.write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"scale_{args.size}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
