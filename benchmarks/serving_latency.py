"""Edited vs unedited latency per backend (`esd_sdk.serving.bench`), on the toy model and on a
mid-size UNet, and a GPU mode for the SD 1.x UNet architecture.

    python benchmarks/serving_latency.py                     # CPU: toy and mid-size (51M) UNet, torch vs onnxruntime
    python benchmarks/serving_latency.py --only toy --edited runs/demo/erased-circle
    python benchmarks/serving_latency.py --mode gpu          # CUDA: SD 1.x UNet, 512x512, batch 2 (prepared, < 8 min)

CPU mode: each model gets a short ESD erase (the latency of a folded UNet does not depend on how
long it trained), then `benchmark()` runs both models on each backend, interleaved, after warm-up.
Reports land in benchmarks/results/serving_latency_<model>/ (bench.json, bench.md, bench.png).

GPU mode: UNet step only, SD 1.x architecture (diffusers' default UNet2DConditionModel config) with
random weights, 64x64 latents (512x512 images), batch 2 (one guided image), for torch eager
fp32/fp16, torch.compile fp16, and ONNX Runtime CUDA / TensorRT when installed; edited = the same
UNet with its attn2 weights perturbed and folded (what ESD-x produces), so the edited/unedited
ratio is measured too. Prints and writes one JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _quick_erase(model, out: Path, method: str) -> Path:
    from esd_sdk.config import EraseConfig
    from esd_sdk.erase import erase

    erase(EraseConfig(concepts=["a red circle"], method=method, steps=3, lr=1e-3, ddim_steps=4), model, out,
          progress=False)
    return out


def cpu(args) -> None:
    from esd_sdk.serving.bench import benchmark, markdown
    from esd_sdk.testing import build_random_sd, mid_unet_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jobs = {}
        if args.only in (None, "toy"):
            jobs["toy"] = Path(args.edited) if args.edited else _quick_erase("toy", tmp / "toy-edited", "u")
        if args.only in (None, "mid"):
            mid = build_random_sd(tmp / "mid", unet_config=mid_unet_config())
            jobs["mid"] = _quick_erase(mid, tmp / "mid-edited", "x")
        for name, edited in jobs.items():
            t0 = time.perf_counter()
            report = benchmark(edited, ["torch", "onnxruntime"], runs=args.runs, e2e_runs=args.e2e_runs,
                               steps=args.steps, out=RESULTS / f"serving_latency_{name}",
                               work_dir=tmp / f"{name}-exports")
            print(markdown(report))
            print(f"{name}: {time.perf_counter() - t0:.0f} s")


def gpu(args) -> None:
    from diffusers import UNet2DConditionModel

    from esd_sdk.conditioning import Conditioning
    from esd_sdk.serving.runtime import TorchRuntime

    assert torch.cuda.is_available(), "--mode gpu needs a CUDA GPU"
    torch.manual_seed(0)
    base = UNet2DConditionModel()  # diffusers' default config is the SD 1.x UNet
    edited = UNet2DConditionModel()
    edited.load_state_dict(base.state_dict())
    with torch.no_grad():
        for name, p in edited.named_parameters():
            if ".attn2." in name:
                p.add_(torch.randn_like(p) * 1e-3)
    device = torch.device("cuda")
    sample = torch.randn(2, 4, 64, 64, device=device)
    timestep = torch.full((2,), 500, device=device)
    cond = Conditioning(torch.randn(2, 77, 768, device=device))
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": "2x4x64x64, 77x768",
               "variants": {}}

    def measure(name, runtimes):
        for rt in runtimes.values():
            for _ in range(args.gpu_warmup):
                rt(sample, timestep, cond)
        times = {k: [] for k in runtimes}
        for i in range(args.gpu_runs):
            for k in (list(runtimes) if i % 2 == 0 else list(runtimes)[::-1]):
                torch.cuda.synchronize()
                t = time.perf_counter()
                runtimes[k](sample, timestep, cond)
                torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t)
        row = {k: {"p50_ms": float(torch.tensor(v).median()) * 1000} for k, v in times.items()}
        if len(times) == 2:
            ratios = torch.tensor(times["edited"]) / torch.tensor(times["unedited"])
            row["edited_over_unedited"] = float(ratios.median())
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        results["variants"][name] = row
        print(name, json.dumps(row), flush=True)

    for precision in ("fp32", "fp16"):
        measure(f"torch eager {precision}", {
            "unedited": TorchRuntime(base, device, precision), "edited": TorchRuntime(edited, device, precision)})
    try:
        measure("torch.compile fp16", {"unedited": TorchRuntime(base, device, "fp16", compile=True),
                                       "edited": TorchRuntime(edited, device, "fp16", compile=True)})
    except Exception as e:  # report what does not run there rather than stop
        results["variants"]["torch.compile fp16"] = {"error": f"{type(e).__name__}: {e}"[:300]}
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
    parser.add_argument("--steps", type=int, default=10, help="denoising steps end to end")
    parser.add_argument("--gpu-runs", type=int, default=50)
    parser.add_argument("--gpu-warmup", type=int, default=5)
    args = parser.parse_args()
    (cpu if args.mode == "cpu" else gpu)(args)


if __name__ == "__main__":
    main()
