"""The GPU check's driver (run it through `benchmarks/gpu_check.sh`): every GPU figure in one JSON.

    bash benchmarks/gpu_check.sh                       # a CUDA machine, <= 10 min; writes $OUT/gpu_check.json
                                                       # when $OUT is set, else benchmarks/results/gpu_check.json
    bash benchmarks/gpu_check.sh --dry-run             # every section at a tiny size on the CPU (< 60 s)
    bash benchmarks/gpu_check.sh --out r.json --sections erase,serving --export-size sd1

Sections, each in its own process with its own time limit (a failure or a timeout is recorded
in its entry and the next section runs; a section that cannot run here says why, as
``"status": "skipped"``):

- ``erase``: the erase engine (bf16 autocast + gradient checkpointing, ESD-x) against the fp32
  two-UNet reference (`esd_sdk.reference`), SD 1.x UNet (diffusers' default config with SD 1.x's
  64x64 latents and 768-wide text states: 859.5 M parameters, random weights), 512x512, 50 DDIM steps: seconds per step, interleaved from the
  same seed (same t_enc per step), and peak GPU memory (torch.cuda.max_memory_allocated), each
  implementation alone in a child process (`benchmarks/erase_bench.py`).
- ``serving``: UNet-step latency of an unedited and an edited (attn2 perturbed, folded) SD 1.x
  UNet, batch 2 (one guided 512x512 image), interleaved, under torch eager fp32 and eager fp16
  (`benchmarks/serving_latency.py`).
- ``serving_compile``: the same under torch.compile fp16, in its own process (compiling takes a
  minute or more; a timeout there keeps the eager figures). Skipped in the dry run.
- ``onnx_export``: two fp16 ONNX exports (each with its parity gate) of a random pipeline, only
  when a section below can use them: the plain graph (TensorRT) and the one fused by ONNX
  Runtime's transformer optimizer for CUDA (attention, GroupNorm, BiasAdd, NHWC convolutions).
- ``ort_cuda``: the optimized export under ONNX Runtime's CUDA execution provider (IO binding)
  against the plain graph and torch fp16 on the same UNet, interleaved; skipped without
  CUDAExecutionProvider.
- ``tensorrt``: a refittable fp16 engine built from that export, its latency against torch fp16,
  then refitted from an ESD delta (a few erase steps): refit seconds, and the refitted engine's
  output against the edited torch UNet; skipped without the tensorrt package.

The export sections use the mid-size UNet (51 M) by default so that the whole script fits in
10 minutes with every section running; ``--export-size sd1`` measures them at SD 1.x size
(export and engine build then take several minutes each).

Step counts are small: the figures that matter are ratios (engine / reference, edited /
unedited, backend / torch), each measured interleaved in one process.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = "esd-sdk-gpu-check/1"
SECTIONS = ("erase", "serving", "serving_compile", "onnx_export", "ort_cuda", "tensorrt")


def _ensure_package() -> None:
    """Import esd_sdk from this source tree (the check measures the tree it lives in), with
    setuptools' package-dir applied by hand: esd_sdk.export -> export/, esd_sdk.serving ->
    serving/ (pyproject.toml). The repository root joins the package's search path, ahead of any
    installed (editable) finder."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import esd_sdk

    where = Path(esd_sdk.__file__).resolve().parent
    if where != ROOT / "esd_sdk":
        raise ImportError(f"esd_sdk was imported from {where}, not from this tree {ROOT}: put {ROOT} first "
                          "on PYTHONPATH (gpu_check.sh does)")
    if str(ROOT) not in esd_sdk.__path__:
        esd_sdk.__path__.append(str(ROOT))


# -- plans: sizes and step counts ----------------------------------------------------------------

# Seconds each section may take (a section gets the smaller of its cap and what is left of the
# budget), and the sizes. Seen on an H200 (torch 2.11): erase 116 s, serving 20 s,
# serving_compile 66 s (46 s of it compiling): 207 s in all without TensorRT and ORT CUDA.
PLANS = {
    "gpu": {
        "budget_s": 570,
        "erase": {"cap_s": 220, "size": "sd1", "steps": 5, "mem_steps": 2, "ddim_steps": 50, "resolution": 512},
        "serving": {"cap_s": 120, "size": "sd1", "runs": 30, "warmup": 3},
        "serving_compile": {"cap_s": 240, "size": "sd1", "runs": 30, "warmup": 3},
        "onnx_export": {"cap_s": 180, "precision": "fp16"},
        "ort_cuda": {"cap_s": 90, "runs": 30, "warmup": 3, "provider": "cuda", "torch_precision": "fp16"},
        "tensorrt": {"cap_s": 300, "runs": 30, "warmup": 3, "precision": "fp16", "torch_precision": "fp16"},
    },
    "dry": {
        "budget_s": 420,
        "erase": {"cap_s": 120, "size": "tiny", "steps": 2, "mem_steps": 1, "ddim_steps": 4, "resolution": None},
        "serving": {"cap_s": 90, "size": "tiny", "runs": 3, "warmup": 1},
        "serving_compile": {"cap_s": 90, "size": "tiny", "runs": 3, "warmup": 1},
        "onnx_export": {"cap_s": 180, "precision": "fp32"},  # two exports, one optimized
        "ort_cuda": {"cap_s": 90, "runs": 3, "warmup": 1, "provider": "cpu", "torch_precision": "fp32"},
        "tensorrt": {"cap_s": 90, "runs": 3, "warmup": 1, "precision": "fp32", "torch_precision": "fp32"},
    },
}


class Skip(Exception):
    """A section that cannot run here; the message says why."""


def _unet_config(size: str) -> dict:
    from esd_sdk.testing import mid_unet_config, sd1_unet_config, tiny_unet_config

    return {"sd1": sd1_unet_config, "mid": mid_unet_config, "tiny": tiny_unet_config}[size]()


SIZE_NAMES = {"sd1": "SD 1.x UNet (859.5 M parameters), random weights",
              "mid": "mid-size UNet (esd_sdk.testing.mid_unet_config), random weights",
              "tiny": "tiny UNet (esd_sdk.testing.tiny_unet_config), random weights"}


def _model(work: Path, size: str) -> tuple[Path, float]:
    """A random-weight pipeline of ``size`` under ``work``, built once and shared by the sections
    that use that size (the dry run's are all tiny). Returns (path, seconds spent building)."""
    from esd_sdk.testing import build_random_sd

    root = work / "models" / size
    if (root / "model" / "model_index.json").is_file():
        return root / "model", 0.0
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    path = build_random_sd(root, _unet_config(size))
    return path, time.perf_counter() - t0


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _interleaved(calls: dict, runs: int, warmup: int, sync) -> dict:
    """p50 latency (ms) of each callable, called in turn (ABAB.., then BA..), after warm-up."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in calls}
    names = list(calls)
    for i in range(runs):
        for k in (names if i % 2 == 0 else names[::-1]):
            sync()
            t = time.perf_counter()
            calls[k]()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: {"p50_ms": statistics.median(v) * 1000, "min_ms": min(v) * 1000} for k, v in times.items()}


def _load_unet(path):
    """The UNet of a pipeline directory or an erase output directory (its unet/), or of a UNet directory."""
    from diffusers import UNet2DConditionModel

    path = Path(path)
    return UNet2DConditionModel.from_pretrained(path / "unet" if (path / "unet" / "config.json").is_file() else path)


def _torch_runtime(unet, device, precision: str):
    """A TorchRuntime that converts ``unet`` in place (no copy held)."""
    from esd_sdk.serving.runtime import TorchRuntime

    return TorchRuntime(unet, device, precision, inplace=True)


def _max_abs_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


# -- sections (each runs in its own process) ------------------------------------------------------

def section_erase(plan: dict, work: Path, dry: bool, opts) -> dict:
    import erase_bench

    model_dir, build_s = _model(work, plan["size"])
    argv = ["--mode", "cpu" if dry else "gpu", "--steps", str(plan["steps"]), "--mem-steps", str(plan["mem_steps"]),
            "--ddim-steps", str(plan["ddim_steps"]), "--precision", "bf16", "--checkpointing", "1", "--method", "x"]
    if plan["resolution"]:
        argv += ["--resolution", str(plan["resolution"])]
    args = erase_bench.defaults(erase_bench.parser().parse_args(argv))
    print(f"model {SIZE_NAMES[plan['size']]} built in {build_s:.0f} s; engine bf16 + checkpointing vs "
          f"fp32 reference, {args.steps} timed steps, {args.ddim_steps} DDIM steps", flush=True)
    report = erase_bench.run(args, model_dir)
    return {"model": SIZE_NAMES[plan["size"]], "model_build_s": build_s, **report}


def _serving(plan: dict, dry: bool, variants) -> dict:
    import serving_latency

    report = serving_latency.unet_latency(_unet_config(plan["size"]), "cpu" if dry else "cuda", variants,
                                          runs=plan["runs"], warmup=plan["warmup"])
    report["model"] = SIZE_NAMES[plan["size"]]
    failed = {k: v["error"] for k, v in report["variants"].items() if "error" in v}
    if len(failed) == len(report["variants"]):
        raise RuntimeError(f"every serving variant failed: {failed}")
    return report


def section_serving(plan: dict, work: Path, dry: bool, opts) -> dict:
    if dry:  # fp16 is GPU-only in TorchRuntime
        return _serving(plan, dry, (("torch eager fp32", "fp32", False),))
    return _serving(plan, dry, (("torch eager fp32", "fp32", False), ("torch eager fp16", "fp16", False)))


def section_serving_compile(plan: dict, work: Path, dry: bool, opts) -> dict:
    # Its own section: compiling can take minutes, and a timeout here keeps the eager figures.
    return _serving(plan, dry, (("torch.compile fp16", "fp16", True),))


def section_onnx_export(plan: dict, work: Path, dry: bool, opts) -> dict:
    from esd_sdk.export import export_onnx

    size = "tiny" if dry else opts.export_size
    model_dir, build_s = _model(work, size)
    # ONNX Runtime's optimized graph (for the machine it runs on: CUDA fusions and a CUDA parity
    # check where there is a GPU) and, for TensorRT (it parses standard ONNX only), the plain one.
    optimized = export_onnx(model_dir, work / "onnx-optimized", precision=plan["precision"])
    result = (export_onnx(model_dir, work / "onnx", precision=plan["precision"], optimize=False) if _has("tensorrt")
              else optimized)
    return {"model": SIZE_NAMES[size], "size": size, "model_dir": str(model_dir), "export_dir": str(result.directory),
            "optimized_dir": str(work / "onnx-optimized"), "optimization": optimized.optimization,
            "precision": plan["precision"], "model_build_s": build_s, "export_s": result.seconds,
            "optimized_export_s": optimized.seconds, "parity_max_abs_diff": result.parity.max_abs_diff,
            "optimized_parity_max_abs_diff": optimized.parity.max_abs_diff, "parity_tolerance": result.parity.tolerance,
            "external_data": result.external_data, "peak_rss_gib": _peak_rss_gib()}


def _export(work: Path) -> dict:
    entry = json.loads((work / "onnx_export.json").read_text())
    return entry["result"]


def _unet_inputs(config: dict, device, batch: int = 2, seq: int = 77, seed: int = 0):
    import torch

    from esd_sdk.conditioning import Conditioning

    g = torch.Generator(device).manual_seed(seed)
    size = config["sample_size"]
    sample = torch.randn(batch, config["in_channels"], size, size, device=device, generator=g)
    timestep = torch.full((batch,), 500.0, device=device)
    cond = Conditioning(torch.randn(batch, seq, config["cross_attention_dim"], device=device, generator=g))
    return sample, timestep, cond


def section_ort_cuda(plan: dict, work: Path, dry: bool, opts) -> dict:
    import torch

    from esd_sdk.serving.runtime import load_runtime

    export = _export(work)
    device = torch.device("cpu" if dry else "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    ort_rt = load_runtime(export["optimized_dir"], backend="onnxruntime", provider=plan["provider"])
    session_s = time.perf_counter() - t0
    torch_rt = _torch_runtime(_load_unet(export["model_dir"]), device, plan["torch_precision"])
    sample, timestep, cond = _unet_inputs(torch_rt.config, device)
    out_ort, out_torch = ort_rt(sample, timestep, cond), torch_rt(sample, timestep, cond)
    calls = {"onnxruntime": lambda: ort_rt(sample, timestep, cond), "torch": lambda: torch_rt(sample, timestep, cond)}
    if export["export_dir"] != export["optimized_dir"]:  # the plain graph was exported too (for TensorRT)
        plain_rt = load_runtime(export["export_dir"], backend="onnxruntime", provider=plan["provider"])
        calls["onnxruntime plain graph"] = lambda: plain_rt(sample, timestep, cond)
    times = _interleaved(calls, plan["runs"], plan["warmup"], sync)
    return {"model": export["model"], "export_precision": export["precision"], "provider": ort_rt.describe(),
            "optimization": export["optimization"],
            "torch": torch_rt.describe(), "session_create_s": session_s, "latency": times,
            "ort_over_torch": times["onnxruntime"]["p50_ms"] / times["torch"]["p50_ms"],
            "ort_plain_over_torch": (times["onnxruntime plain graph"]["p50_ms"] / times["torch"]["p50_ms"]
                                     if "onnxruntime plain graph" in times else None),
            "max_abs_diff_vs_torch": _max_abs_diff(out_ort, out_torch), "batch": sample.shape[0],
            "dry_run_stand_in": "CPUExecutionProvider (no CUDA here)" if dry else None}


def section_tensorrt(plan: dict, work: Path, dry: bool, opts) -> dict:
    import serving_latency
    import torch

    from esd_sdk.export.tensorrt import Profile, build_engine, refit_engine
    from esd_sdk.serving.runtime import load_runtime

    export = _export(work)
    device = torch.device("cuda")
    # The delta to refit from: a few ESD-x steps on the export's base model.
    t0 = time.perf_counter()
    edit = serving_latency.quick_erase(export["model_dir"], work / "trt_edit", "x", device="cuda", lr=1e-2,
                                       precision="bf16")
    erase_s = time.perf_counter() - t0
    plan_path = work / "trt" / "unet.plan"
    info = build_engine(export["export_dir"], plan_path, precision=plan["precision"], profile=Profile(sequence_length=77))
    torch_rt = _torch_runtime(_load_unet(export["model_dir"]), device, plan["torch_precision"])
    sample, timestep, cond = _unet_inputs(torch_rt.config, device)
    trt_rt = load_runtime(plan_path, backend="tensorrt")
    out_trt, out_torch = trt_rt(sample, timestep, cond), torch_rt(sample, timestep, cond)
    times = _interleaved({"tensorrt": lambda: trt_rt(sample, timestep, cond),
                          "torch": lambda: torch_rt(sample, timestep, cond)}, plan["runs"], plan["warmup"],
                         torch.cuda.synchronize)
    trt_rt = None  # release the engine before refitting its file
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    refit = refit_engine(plan_path, export["export_dir"], edit)
    refit_wall_s = time.perf_counter() - t0
    edited_torch = _torch_runtime(_load_unet(edit), device, plan["torch_precision"])
    trt_edited = load_runtime(plan_path, backend="tensorrt")
    out_trt_edited, out_torch_edited = trt_edited(sample, timestep, cond), edited_torch(sample, timestep, cond)
    times_edited = _interleaved({"tensorrt_refit": lambda: trt_edited(sample, timestep, cond),
                                 "torch_edited": lambda: edited_torch(sample, timestep, cond)},
                                plan["runs"], plan["warmup"], torch.cuda.synchronize)
    return {"model": export["model"], "precision": plan["precision"], "tensorrt": info.tensorrt,
            "build_s": info.build_seconds, "engine_mib": plan_path.stat().st_size / 2**20,
            "erase_for_delta_s": erase_s, "refit_s": refit.refits[-1]["seconds"], "refit_wall_s": refit_wall_s,
            "refit_tensors": refit.refits[-1]["tensors"],
            "latency": {**times, **times_edited},
            "trt_over_torch": times["tensorrt"]["p50_ms"] / times["torch"]["p50_ms"],
            "refit_over_unedited_engine": times_edited["tensorrt_refit"]["p50_ms"] / times["tensorrt"]["p50_ms"],
            "max_abs_diff_vs_torch": _max_abs_diff(out_trt, out_torch),
            "refit_max_abs_diff_vs_edited_torch": _max_abs_diff(out_trt_edited, out_torch_edited),
            "refit_changed_output_by": _max_abs_diff(out_trt_edited, out_trt)}


SECTION_FUNCS = {"erase": section_erase, "serving": section_serving, "serving_compile": section_serving_compile,
                 "onnx_export": section_onnx_export,
                 "ort_cuda": section_ort_cuda, "tensorrt": section_tensorrt}


def run_section(opts) -> int:
    """Child mode: run one section, write its entry to --result."""
    _ensure_package()
    sys.path.insert(0, str(HERE))  # erase_bench, serving_latency
    plan = PLANS["dry" if opts.dry_run else "gpu"][opts.section]
    t0 = time.perf_counter()
    try:
        if os.environ.get("GPU_CHECK_INJECT_FAILURE") == opts.section:  # tests: a failing section
            raise RuntimeError("injected failure (GPU_CHECK_INJECT_FAILURE)")
        entry = {"status": "ok", "result": SECTION_FUNCS[opts.section](plan, Path(opts.work), opts.dry_run, opts)}
    except Skip as e:
        entry = {"status": "skipped", "reason": str(e)}
    except BaseException as e:  # noqa: BLE001  (recorded, and the driver goes on)
        traceback.print_exc()
        entry = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000],
                 "traceback": traceback.format_exc()[-4000:]}
    entry["seconds"] = time.perf_counter() - t0
    Path(opts.result).write_text(json.dumps(entry, indent=2, default=str) + "\n")
    return 0


# -- driver ---------------------------------------------------------------------------------------

def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "packages": {n: _version(n) for n in ("esd-sdk", "diffusers", "transformers", "tokenizers", "huggingface-hub",
                                                  "accelerate", "safetensors", "onnx", "onnxruntime", "onnxruntime-gpu",
                                                  "optimum", "optimum-onnx", "tensorrt", "triton")}}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), gpu_count=torch.cuda.device_count())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            env["nvidia_smi"] = f"unavailable: {e}"
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception as e:  # noqa: BLE001
        env["onnxruntime_providers"] = f"unavailable: {type(e).__name__}: {e}"
    env["commit"] = os.environ.get("GPU_CHECK_COMMIT")  # set it when running a copy of the tree
    if not env["commit"]:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
            env["commit"] = commit.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return env


def precheck(name: str, dry: bool, env: dict, sections: dict, wanted: list[str]) -> str | None:
    """Why ``name`` cannot run here (a skip reason), or None."""
    cuda = env["cuda_available"]
    providers = env["onnxruntime_providers"] if isinstance(env["onnxruntime_providers"], list) else []
    if name == "serving_compile" and dry:
        return "dry run: torch.compile takes minutes on a CPU (the GPU run measures it)"
    if name in ("erase", "serving", "serving_compile"):
        return None if (cuda or dry) else "no CUDA GPU visible (torch.cuda.is_available() is False); --dry-run checks it on the CPU"
    if name == "ort_cuda":
        if not providers:
            return f"onnxruntime is not importable ({env['onnxruntime_providers']}); pip install 'esd-sdk[onnx,gpu]'"
        if dry:
            return None  # the CPU provider stands in
        if "CUDAExecutionProvider" not in providers or not cuda:
            return (f"ONNX Runtime has no CUDAExecutionProvider here (providers: {', '.join(providers)}; "
                    "onnxruntime-gpu is not installed)" if cuda else "no CUDA GPU visible")
        return None
    if name == "tensorrt":
        if not _has("tensorrt"):
            return "the tensorrt package is not importable (pip install 'esd-sdk[gpu]' on a CUDA machine)"
        if not cuda:
            return "tensorrt is installed but no CUDA GPU is visible"
        return None
    if name == "onnx_export":
        users = [s for s in ("ort_cuda", "tensorrt") if s in wanted and precheck(s, dry, env, sections, wanted) is None]
        if not users:
            return "nothing here would use it: ort_cuda and tensorrt are both skipped"
        missing = [m for m in ("onnx", "onnxruntime", "optimum.exporters.onnx") if not _has(m)]
        if missing:
            return f"needs {', '.join(missing)} (pip install 'esd-sdk[onnx]')"
        return None
    raise ValueError(name)


def _tail(lines) -> str:
    return "\n".join(lines)[-3000:]


def run_child(name: str, opts, work: Path, timeout: float) -> dict:
    """Run one section in its own process group, echoing its output; kill it at ``timeout``."""
    result = work / f"{name}.json"
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--section", name, "--work", str(work),
           "--result", str(result), "--export-size", opts.export_size] + (["--dry-run"] if opts.dry_run else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if opts.dry_run:  # tiny models: one thread is faster, and spinning threads crawl on a busy CPU
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, errors="replace")
    tail: collections.deque = collections.deque(maxlen=40)

    def pump():
        for line in proc.stdout:
            tail.append(line.rstrip())
            print(f"[{name}] {line.rstrip()}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the section and any children it started
        proc.wait()
    reader.join(timeout=5)
    seconds = time.perf_counter() - t0
    if timed_out:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s (the section's share of the budget)",
                "seconds": seconds, "log_tail": _tail(tail)}
    if not result.is_file():
        return {"status": "error", "error": f"the section's process exited with {proc.returncode} and wrote nothing",
                "seconds": seconds, "log_tail": _tail(tail)}
    entry = json.loads(result.read_text())
    entry["wall_s"] = seconds
    if entry["status"] == "error":
        entry["log_tail"] = _tail(tail)
    return entry


def summary(sections: dict) -> dict:
    """The figures that matter, flat; None where a section did not produce them."""

    def get(name, *keys):
        entry = sections.get(name, {})
        value = entry.get("result") if entry.get("status") == "ok" else None
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        return value

    gib = lambda v: None if v is None else v / 1024  # noqa: E731
    out = {
        "erase_engine_s_per_step": get("erase", "engine_s_per_step"),
        "erase_reference_s_per_step": get("erase", "reference_s_per_step"),
        "erase_speedup": get("erase", "speedup_median"),
        "erase_engine_peak_gib": gib(get("erase", "engine_peak_mib")),
        "erase_reference_peak_gib": gib(get("erase", "reference_peak_mib")),
        "erase_peak_memory_ratio": get("erase", "peak_memory_ratio"),
        "serving": {},
        "serving_fp16_speedup_over_fp32": None,
        "serving_compile_speedup_over_eager_fp16": None,
        "ort_provider": get("ort_cuda", "provider"),
        "ort_cuda_over_torch": get("ort_cuda", "ort_over_torch"),
        "ort_cuda_plain_graph_over_torch": get("ort_cuda", "ort_plain_over_torch"),
        "ort_cuda_p50_ms": get("ort_cuda", "latency", "onnxruntime", "p50_ms"),
        "tensorrt_build_s": get("tensorrt", "build_s"),
        "tensorrt_refit_s": get("tensorrt", "refit_s"),
        "tensorrt_over_torch": get("tensorrt", "trt_over_torch"),
        "tensorrt_p50_ms": get("tensorrt", "latency", "tensorrt", "p50_ms"),
        "tensorrt_refit_max_abs_diff": get("tensorrt", "refit_max_abs_diff_vs_edited_torch"),
    }
    serving = {**(get("serving", "variants") or {}), **(get("serving_compile", "variants") or {})}
    for variant, row in serving.items():
        out["serving"][variant] = ({"error": row["error"]} if "error" in row else
                                   {"unedited_p50_ms": row["unedited"]["p50_ms"], "edited_p50_ms": row["edited"]["p50_ms"],
                                    "edited_over_unedited": row["edited_over_unedited"]})
    p50 = {k: v.get("unedited_p50_ms") for k, v in out["serving"].items()}
    if p50.get("torch eager fp32") and p50.get("torch eager fp16"):
        out["serving_fp16_speedup_over_fp32"] = p50["torch eager fp32"] / p50["torch eager fp16"]
    if p50.get("torch eager fp16") and p50.get("torch.compile fp16"):
        out["serving_compile_speedup_over_eager_fp16"] = p50["torch eager fp16"] / p50["torch.compile fp16"]
    out["measured"] = [n for n, e in sections.items() if e.get("status") == "ok"]
    out["skipped"] = {n: e["reason"] for n, e in sections.items() if e.get("status") == "skipped"}
    out["errors"] = {n: e["error"] for n, e in sections.items() if e.get("status") == "error"}
    return out


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)


def table(report: dict) -> str:
    s = report["summary"]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = [("erase s/step: engine bf16+ckpt / fp32 reference",
             f"{f(s['erase_engine_s_per_step'], '.3f')} / {f(s['erase_reference_s_per_step'], '.3f')}",
             f"{f(s['erase_speedup'], '.2f')}x faster"),
            ("erase peak GiB: engine / reference",
             f"{f(s['erase_engine_peak_gib'], '.2f')} / {f(s['erase_reference_peak_gib'], '.2f')}",
             f"{f(s['erase_peak_memory_ratio'], '.2f')}x")]
    for variant, row in s["serving"].items():
        rows.append((f"UNet step {variant}: unedited / edited ms",
                     "error" if "error" in row else f"{row['unedited_p50_ms']:.2f} / {row['edited_p50_ms']:.2f}",
                     "-" if "error" in row else f"{row['edited_over_unedited']:.3f}"))
    rows.append((f"{s['ort_provider'] or 'onnxruntime CUDA'} / torch", f(s["ort_cuda_p50_ms"], ".2f") + " ms",
                 f(s["ort_cuda_over_torch"], ".2f")))
    rows.append(("TensorRT / torch fp16", f(s["tensorrt_p50_ms"], ".2f") + " ms", f(s["tensorrt_over_torch"], ".2f")))
    rows.append(("TensorRT build / refit s", f"{f(s['tensorrt_build_s'], '.1f')} / {f(s['tensorrt_refit_s'], '.2f')}", "-"))
    lines = ["| what | value | ratio |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    for name, entry in report["sections"].items():
        lines.append(f"{name}: {entry['status']}" + (f" ({entry.get('reason') or entry.get('error')})"
                                                    if entry["status"] != "ok" else f" in {entry.get('wall_s', 0):.0f} s"))
    return "\n".join(lines)


def drive(opts) -> int:
    t_start = time.perf_counter()
    plans = PLANS["dry" if opts.dry_run else "gpu"]
    budget = opts.budget_s or plans["budget_s"]
    wanted = [s.strip() for s in opts.sections.split(",")] if opts.sections else list(SECTIONS)
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    if {"ort_cuda", "tensorrt"} & set(wanted) and "onnx_export" not in wanted:
        wanted.append("onnx_export")  # what they run
    out = Path(opts.out).resolve()
    _ensure_package()
    env = environment()
    report = {"schema": SCHEMA, "dry_run": opts.dry_run,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_s": budget, "export_size": "tiny" if opts.dry_run else opts.export_size,
              "environment": env, "sections": {}, "summary": {}}
    print(f"gpu_check{' (dry run, CPU)' if opts.dry_run else ''}: {env.get('gpu', 'no GPU')}, torch {env['torch']}, "
          f"budget {budget} s -> {out}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-", dir=os.environ.get("GPU_CHECK_WORK")))
    try:
        for name in SECTIONS:
            if name not in wanted:
                continue
            reason = precheck(name, opts.dry_run, env, report["sections"], wanted)
            if reason is None and name in ("ort_cuda", "tensorrt"):
                export = report["sections"].get("onnx_export", {"status": "skipped", "reason": "not requested"})
                if export["status"] != "ok":
                    why = export.get("reason") or export.get("error")
                    entry = ({"status": "skipped", "reason": f"no ONNX export ({why})"} if export["status"] == "skipped"
                             else {"status": "error", "error": f"no ONNX export: the onnx_export section failed ({why})"})
                    report["sections"][name] = entry
                    continue
            if reason is not None:
                report["sections"][name] = {"status": "skipped", "reason": reason}
                print(f"[{name}] skipped: {reason}", flush=True)
                continue
            left = budget - (time.perf_counter() - t_start)
            timeout = min(plans[name]["cap_s"], left)
            if timeout < 10:
                report["sections"][name] = {"status": "error", "error": f"no time left in the {budget} s budget"}
                continue
            print(f"[{name}] start (limit {timeout:.0f} s)", flush=True)
            entry = run_child(name, opts, work, timeout)
            report["sections"][name] = entry
            print(f"[{name}] {entry['status']} in {entry.get('wall_s', entry.get('seconds', 0)):.0f} s"
                  + (f": {entry.get('error')}" if entry["status"] == "error" else ""), flush=True)
            report["summary"] = summary(report["sections"])
            report["seconds"] = time.perf_counter() - t_start
            _write(out, report)  # after each section: a run cut short keeps what it measured
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["summary"] = summary(report["sections"])
    report["seconds"] = time.perf_counter() - t_start
    _write(out, report)
    print(table(report))
    print(f"wrote {out} in {report['seconds']:.0f} s")
    return 1 if report["summary"]["errors"] else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    p.add_argument("--dry-run", action="store_true", help="every section at a tiny size on the CPU")
    p.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--export-size", choices=["mid", "sd1"], default="mid", help="UNet of the ONNX/TensorRT sections")
    p.add_argument("--budget-s", type=float, help="total seconds for all sections [570 on a GPU]")
    p.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    opts = p.parse_args()
    return run_section(opts) if opts.section else drive(opts)


if __name__ == "__main__":
    sys.exit(main())
