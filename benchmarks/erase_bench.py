"""ESD erase engine vs a plain faithful implementation: step time and peak memory.

    python benchmarks/erase_bench.py                       # CPU, mid-size UNet (51M params), engine bf16 + checkpointing
    python benchmarks/erase_bench.py --precision fp32 --checkpointing 0   # the engine's structure alone
    python benchmarks/erase_bench.py --mode gpu            # CUDA, SD 1.x UNet architecture, 512x512, bf16

Step time: both implementations live in one process and take steps in turn (engine, reference,
engine, ...) from the same seed, so step i of both runs the same trajectory length t_enc; the
report gives the median of the per-step ratios and their interquartile range.
Peak memory: each implementation runs alone in a child process (one at a time, same model),
which reports its peak while taking steps. CPU: the process's high-water RSS (VmHWM) above its
RSS once the libraries are imported, measured the same way for both: both load the same base
model (diffusers memory-maps the safetensors file, so the loaded weights are file-backed RSS),
build their training state, return freed heap pages (malloc_trim) and reset the high-water mark;
the peak then counts everything held while taking steps: weights (file-backed or not), optimizer
state, step transients, allocator fragmentation and library caches (oneDNN primitives). The
RssAnon/RssFile split at the end of the steps is reported alongside. GPU:
torch.cuda.max_memory_allocated. Writes JSON and Markdown next to --out.

What the engine holds, ESD-x in bf16 on the mid-size UNet: the frozen Linear/Conv weights in bf16
(autocast computes them in bf16 anyway; exact fp32 values wait on disk until training ends),
fp32 masters, gradients and Adam moments for the trained cross-attention tensors only, and the
trained tensors' original values; the reference holds two fp32 UNets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _trainer(base, config, device: torch.device):
    """The engine's trainer on the base's own UNet (the benchmark owns it: no copy)."""
    from esd_sdk.training import _Trainer

    return _Trainer(base, base.unet, config, device, None)


def _setup(args, model_dir: Path, impl: str):
    from esd_sdk import load_base
    from esd_sdk.config import EraseConfig
    from esd_sdk.reference import ReferenceESD

    common = dict(concepts=["a red circle"], method=args.method, steps=10**6, lr=1e-5, ddim_steps=args.ddim_steps,
                  resolution=args.resolution, seed=0)
    base = load_base(model_dir)
    if impl == "reference":
        return ReferenceESD(base, EraseConfig(**common), device=args.device).step
    engine_cfg = EraseConfig(**common, precision=args.precision, regenerate_every=args.regenerate_every,
                             gradient_checkpointing=args.checkpointing, checkpoint_every=0)
    return _trainer(base, engine_cfg, torch.device(args.device)).train_step


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(args) -> None:
    """Run one implementation alone and print its peak memory as JSON."""
    import diffusers  # noqa: F401  (imports are not the implementation's memory)

    import esd_sdk.reference  # noqa: F401

    import esd_sdk.training  # noqa: F401

    before = _rss_kib("VmRSS")
    before_anon, before_file = _rss_kib("RssAnon"), _rss_kib("RssFile")
    step = _setup(args, Path(args.model_dir), args.child)
    out = {}
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        out["resident_bytes"] = torch.cuda.memory_allocated()  # weights and training state, before any step
        torch.cuda.reset_peak_memory_stats()
    else:
        # Loading a checkpoint briefly holds the weights twice for both implementations, and
        # glibc keeps the freed pages: return them, then reset the high-water mark, so the
        # peak is that of training (weights held + step transients), the same way for both.
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    for _ in range(args.mem_steps):
        step()
    _sync(args.device)
    out["seconds_per_step"] = (time.perf_counter() - t0) / args.mem_steps
    if args.device.startswith("cuda"):
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        out["peak_bytes"] = (_rss_kib("VmHWM") - before) * 1024
        out["end_rss_anon_bytes"] = (_rss_kib("RssAnon") - before_anon) * 1024
        out["end_rss_file_bytes"] = (_rss_kib("RssFile") - before_file) * 1024
    print("RESULT " + json.dumps(out))


def _unet_params(model_dir: Path) -> int:
    """Parameter count from the UNet's safetensors header (no weights loaded)."""
    total = 0
    for f in sorted((model_dir / "unet").glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, entry in header.items():
            if name != "__metadata__":
                n = 1
                for d in entry["shape"]:
                    n *= d
                total += n
    return total


def run(args, model_dir: Path) -> dict:
    """Measure engine and reference on ``model_dir`` (memory in children, time interleaved here);
    return the report. ``args`` carries the settings `main` parses (see `defaults`)."""
    gpu = args.device.startswith("cuda")
    # -- memory: each implementation alone in a child process
    memory = {}
    for impl in ("engine", "reference"):
        cmd = [sys.executable, __file__, "--child", impl, "--model-dir", str(model_dir), "--device", args.device,
               "--precision", args.precision, "--checkpointing", "1" if args.checkpointing else "0",
               "--method", args.method, "--ddim-steps", str(args.ddim_steps),
               "--regenerate-every", str(args.regenerate_every), "--mem-steps", str(args.mem_steps)]
        if args.resolution:
            cmd += ["--resolution", str(args.resolution)]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            raise RuntimeError(f"{impl} child failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
        memory[impl] = json.loads(line[0][7:])
        extra = (f" (end of steps: RssAnon {memory[impl]['end_rss_anon_bytes'] / 2**20:.0f} MiB, "
                 f"RssFile {memory[impl]['end_rss_file_bytes'] / 2**20:.0f} MiB)"
                 if "end_rss_anon_bytes" in memory[impl] else
                 f" (resident before the first step {memory[impl]['resident_bytes'] / 2**20:.0f} MiB)")
        print(f"{impl}: peak {memory[impl]['peak_bytes'] / 2**20:.0f} MiB{extra}", flush=True)

    # -- time: both in this process, interleaved, same seed -> same t_enc per step
    engine = _setup(args, model_dir, "engine")
    reference = _setup(args, model_dir, "reference")
    times = {"engine": [], "reference": []}
    for i in range(args.steps + 1):
        for name, step in (("engine", engine), ("reference", reference)):
            _sync(args.device)
            t0 = time.perf_counter()
            step()
            _sync(args.device)
            if i > 0:  # step 0 is warm-up
                times[name].append(time.perf_counter() - t0)
        print(f"step {i}: engine {times['engine'][-1] if i else 0:.3f}s reference {times['reference'][-1] if i else 0:.3f}s", flush=True)
    ratios = sorted(r / e for e, r in zip(times["engine"], times["reference"]))
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return {
        "mode": "gpu" if gpu else "cpu", "device": args.device, "method": args.method, "precision": args.precision,
        "gradient_checkpointing": args.checkpointing, "regenerate_every": args.regenerate_every,
        "ddim_steps": args.ddim_steps, "resolution": args.resolution, "timed_steps": args.steps,
        "memory_steps": args.mem_steps, "unet_params": _unet_params(model_dir),
        "engine_s_per_step": statistics.median(times["engine"]),
        "reference_s_per_step": statistics.median(times["reference"]),
        "speedup_median": statistics.median(ratios), "speedup_iqr": [q[0], q[2]],
        "engine_peak_mib": memory["engine"]["peak_bytes"] / 2**20,
        "reference_peak_mib": memory["reference"]["peak_bytes"] / 2**20,
        "peak_memory_ratio": memory["engine"]["peak_bytes"] / memory["reference"]["peak_bytes"],
        "memory_detail": memory,
        "step_times": times,
        "engine_steps_per_s": 1 / statistics.median(times["engine"]),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if gpu else None,
    }


def markdown(report: dict) -> str:
    q = report["speedup_iqr"]
    return (f"| | engine | reference | ratio |\n|---|---|---|---|\n"
            f"| s/step (median) | {report['engine_s_per_step']:.3f} | {report['reference_s_per_step']:.3f} | "
            f"{report['speedup_median']:.2f}x faster (IQR {q[0]:.2f}-{q[1]:.2f}) |\n"
            f"| peak memory (MiB) | {report['engine_peak_mib']:.0f} | {report['reference_peak_mib']:.0f} | "
            f"{report['peak_memory_ratio']:.2f}x |\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--method", default="x")
    p.add_argument("--steps", type=int, default=None, help="timed steps per implementation")
    p.add_argument("--ddim-steps", type=int, default=None)
    p.add_argument("--regenerate-every", type=int, default=1, help="engine's k (1 = the paper)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/erase_bench"))
    p.add_argument("--child", choices=["engine", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="engine autocast precision [bf16]")
    p.add_argument("--checkpointing", type=lambda s: s == "1", help="engine gradient checkpointing, 1 or 0 [1]")
    p.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mem-steps", type=int, default=3, help="steps each child takes for its peak memory")
    return p


def defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the mode-dependent defaults in place and return ``args``."""
    gpu = args.mode == "gpu"
    args.device = args.device or ("cuda" if gpu else "cpu")
    # The engine's memory-lean mixed-precision configuration (this CPU has AMX bf16 units).
    args.precision = args.precision or "bf16"
    args.checkpointing = args.checkpointing if args.checkpointing is not None else True
    args.resolution = args.resolution or (512 if gpu else None)
    args.steps = args.steps or (8 if gpu else 6)
    args.ddim_steps = args.ddim_steps or (50 if gpu else 20)
    return args


def main() -> None:
    args = defaults(parser().parse_args())
    if args.child:
        return child(args)

    from esd_sdk.testing import build_random_sd, mid_unet_config, sd1_unet_config

    gpu = args.mode == "gpu"
    tmp = Path(tempfile.mkdtemp())
    # diffusers' default config (0.39) leaves sample_size None and has 1280-wide text states: SD 1.x's are 64, 768.
    sd1 = sd1_unet_config()
    model_dir = build_random_sd(tmp, sd1 if gpu else mid_unet_config())
    print(f"model: {model_dir} ({'SD 1.x architecture, random weights' if gpu else 'mid-size UNet'}), "
          f"device {args.device}, engine precision {args.precision}, checkpointing {args.checkpointing}, "
          f"k={args.regenerate_every}, ddim_steps {args.ddim_steps}", flush=True)
    try:
        report = run(args, model_dir)
    except RuntimeError as e:
        sys.exit(str(e))
    report.pop("step_times")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    Path(f"{args.out}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
