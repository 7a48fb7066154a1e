"""Edited vs unedited latency per backend (`esd_sdk.serving.bench`), on the toy model and on a
mid-size UNet, and a GPU mode for the SD 1.x UNet architecture.

    python benchmarks/serving_latency.py                     # CPU: toy and mid-size (51M) UNet, torch vs onnxruntime
    python benchmarks/serving_latency.py --only toy --edited runs/demo/erased-circle
    python benchmarks/serving_latency.py --only mid --runs 30 --e2e-runs 3 --repeat 3   # ORT/torch over 3 runs
    python benchmarks/serving_latency.py --mode gpu          # CUDA: SD 1.x UNet, 512x512, batch 2 (~1.5 min on an H200)

CPU mode: each model gets a short ESD erase (the latency of a folded UNet does not depend on how
long it trained), then `benchmark()` runs both models on each backend, interleaved, after warm-up.
Reports land in benchmarks/results/serving_latency_<model>/ (bench.json, bench.md, bench.png).

GPU mode: UNet step only, SD 1.x architecture (diffusers' default UNet2DConditionModel config) with
random weights, 64x64 latents (512x512 images), batch 2 (one guided image), for torch eager
fp32/fp16 and torch.compile fp16; edited = the same UNet with its attn2 weights perturbed and
folded (what ESD-x produces), so the edited/unedited ratio is measured too. Prints and writes one
JSON. `benchmarks/gpu_check.sh` runs this as one of its sections, next to ONNX Runtime CUDA and
TensorRT.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def quick_erase(model, out: Path, method: str, device: str | None = None, **settings) -> Path:
    """A few ESD steps written to ``out`` (serving latency does not depend on how long it trained)."""
    from esd_sdk import erase

    erase(model, "a red circle", method=method, out=out, progress=False, device=device,
          **{"steps": 3, "lr": 1e-3, "ddim_steps": 4, **settings})
    return out


def cpu(args) -> None:
    from esd_sdk.serving.bench import benchmark
    from esd_sdk.testing import build_random_sd, mid_unet_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = {}
        if args.only in (None, "toy"):
            jobs["toy"] = Path(args.edited) if args.edited else quick_erase("toy", tmp / "toy-edited", "u")
        if args.only in (None, "mid"):
            mid = build_random_sd(tmp / "mid", unet_config=mid_unet_config())
            jobs["mid"] = quick_erase(mid, tmp / "mid-edited", "x")
        for name, edited in jobs.items():
            out = RESULTS / f"serving_latency_{name}"
            ratios = []
            for i in range(args.repeat):  # each repeat: fresh sessions and a fresh export
                t0 = time.perf_counter()
                report = benchmark(edited, ["torch", "onnxruntime"], runs=args.runs, e2e_runs=args.e2e_runs,
                                   steps=args.steps, out=out if args.repeat == 1 else out / f"run{i + 1}",
                                   work_dir=tmp / f"{name}-exports-{i}")
                print(report.markdown())
                print(f"{name}: {time.perf_counter() - t0:.0f} s")
                step = report.backends["onnxruntime"]["unet_step"]
                ratios.append({"run": i + 1, "torch_p50_ms": step["unedited"]["p50_ms"] / step["vs_torch"],
                               "onnxruntime_p50_ms": step["unedited"]["p50_ms"], "ort_over_torch": step["vs_torch"]})
            if args.repeat > 1:
                _write_repeats(out, name, ratios)


def _write_repeats(out: Path, name: str, ratios: list[dict]) -> None:
    """ONNX Runtime / torch UNet-step p50 (unedited) of each repeat, and their spread."""
    values = [r["ort_over_torch"] for r in ratios]
    summary = {"model": name, "runs": ratios, "median": statistics.median(values), "min": min(values), "max": max(values)}
    (out / "ort_vs_torch.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| run | torch UNet step p50 | ONNX Runtime p50 | ORT / torch |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['run']} | {r['torch_p50_ms']:.1f} ms | {r['onnxruntime_p50_ms']:.1f} ms | {r['ort_over_torch']:.2f}x |"
              for r in ratios]
    lines.append(f"| median (min-max) | | | **{summary['median']:.2f}x** ({summary['min']:.2f}-{summary['max']:.2f}) |")
    (out / "ort_vs_torch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


GPU_VARIANTS = (("torch eager fp32", "fp32", False), ("torch eager fp16", "fp16", False),
                ("torch.compile fp16", "fp16", True))


def unet_pair(unet_config: dict, device: torch.device, seed: int = 0):
    """(unedited, edited): one random UNet and a copy with its attn2 weights perturbed, as a
    folded ESD-x edit leaves them: same architecture, other values."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):  # initialise where it runs: fast on a GPU
        base = UNet2DConditionModel(**unet_config)
    edited = copy.deepcopy(base)
    with torch.no_grad():
        for name, p in edited.named_parameters():
            if ".attn2." in name:
                p.add_(torch.randn_like(p) * 1e-3)
    return base.eval(), edited.eval()


def unet_latency(unet_config: dict, device: str = "cuda", variants=GPU_VARIANTS, runs: int = 50, warmup: int = 5,
                 batch: int = 2, sequence_length: int = 77, seed: int = 0) -> dict:
    """UNet-step latency of the unedited and the edited UNet for each (name, precision, compile)
    variant, interleaved (ABAB..., then BABA...), after warm-up. One variant's failure is recorded
    in its row and the others still run. Peak memory is per variant (both UNets held)."""
    from esd_sdk.conditioning import Conditioning
    from esd_sdk.serving.runtime import TorchRuntime

    device = torch.device(device)
    cuda = device.type == "cuda"
    inplace = {"inplace": True}  # convert the two UNets in place from variant to variant: no copies held

    def sync():
        if cuda:
            torch.cuda.synchronize()

    base, edited = unet_pair(unet_config, device, seed)
    cfg = base.config
    g = torch.Generator(device).manual_seed(seed)
    size = cfg.sample_size
    sample = torch.randn(batch, cfg.in_channels, size, size, device=device, generator=g)
    timestep = torch.full((batch,), 500, device=device)
    cond = Conditioning(torch.randn(batch, sequence_length, cfg.cross_attention_dim, device=device, generator=g))
    results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
               "unet_params": sum(p.numel() for p in base.parameters()),
               "shape": f"sample {batch}x{cfg.in_channels}x{size}x{size}, hidden {batch}x{sequence_length}x{cfg.cross_attention_dim}",
               "runs": runs, "warmup": warmup, "variants": {}}
    for name, precision, compiled in variants:
        row: dict = {"precision": precision, "compile": compiled}
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            runtimes = {"unedited": TorchRuntime(base, device, precision, compile=compiled, **inplace),
                        "edited": TorchRuntime(edited, device, precision, compile=compiled, **inplace)}
            first = {}
            for k, rt in runtimes.items():
                sync()
                t = time.perf_counter()
                out = rt(sample, timestep, cond)  # the first call compiles, when compiling
                sync()
                first[k] = time.perf_counter() - t
                row.setdefault("finite", True)
                row["finite"] &= bool(torch.isfinite(out).all())
                for _ in range(warmup - 1):
                    rt(sample, timestep, cond)
            times = {k: [] for k in runtimes}
            for i in range(runs):
                for k in (list(runtimes) if i % 2 == 0 else list(runtimes)[::-1]):
                    sync()
                    t = time.perf_counter()
                    runtimes[k](sample, timestep, cond)
                    sync()
                    times[k].append(time.perf_counter() - t)
            for k, v in times.items():
                row[k] = {"p50_ms": statistics.median(v) * 1000, "min_ms": min(v) * 1000,
                          "first_call_s": first[k]}
            row["edited_over_unedited"] = statistics.median(e / u for e, u in zip(times["edited"], times["unedited"]))
            if cuda:
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        except Exception as e:  # report what does not run there rather than stop
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        finally:
            runtimes = None
        results["variants"][name] = row
        print(name, json.dumps(row), flush=True)
    rows = results["variants"]

    def p50(name):
        return rows.get(name, {}).get("unedited", {}).get("p50_ms")

    eager = [n for n, _, c in variants if not c]
    ratios = {}
    if p50("torch eager fp32") and p50("torch eager fp16"):
        ratios["fp16_speedup_over_fp32"] = p50("torch eager fp32") / p50("torch eager fp16")
    if p50("torch eager fp16") and p50("torch.compile fp16"):
        ratios["compile_speedup_over_eager_fp16"] = p50("torch eager fp16") / p50("torch.compile fp16")
    if eager and p50(eager[0]) and len(eager) > 1 and p50(eager[1]):
        ratios[f"{rows[eager[1]]['precision']}_over_{rows[eager[0]]['precision']}_latency"] = p50(eager[1]) / p50(eager[0])
    results["ratios"] = ratios
    return results


def gpu(args) -> None:
    from esd_sdk.testing import sd1_unet_config

    assert torch.cuda.is_available(), "--mode gpu needs a CUDA GPU"
    # diffusers' default config (0.39) leaves sample_size None and has 1280-wide text states: SD 1.x's are 64, 768.
    config = sd1_unet_config()
    results = unet_latency(config, "cuda", runs=args.gpu_runs, warmup=args.gpu_warmup)
    out = RESULTS / "serving_latency_gpu.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--only", choices=["toy", "mid"])
    parser.add_argument("--edited", help="toy: an existing erase output instead of a quick erase")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--e2e-runs", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=1, help="CPU: whole benchmarks per model (ORT/torch spread) [1]")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps end to end")
    parser.add_argument("--gpu-runs", type=int, default=50)
    parser.add_argument("--gpu-warmup", type=int, default=5)
    args = parser.parse_args()
    (cpu if args.mode == "cpu" else gpu)(args)


if __name__ == "__main__":
    main()
