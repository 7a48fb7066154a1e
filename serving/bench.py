"""Latency of an edited model against the unedited one, per backend: ``esd-sdk bench``.

    >>> report = benchmark("erased-circle", backends=["torch", "onnxruntime"], out="bench")
    >>> report.ratio("torch")                 # edited / unedited UNet step (median of pairs), ~1.00
    >>> print(report.markdown())

Protocol. For each backend, the unedited UNet (the base model's) and the edited one are loaded
side by side. After ``warmup`` calls of each, they run alternately (A B, then B A, ...) so that
drift on a shared machine hits both equally:
- UNet step: one call on a guided batch (2 x ``batch`` latents at the model's size, fixed random
  inputs, timestep 500), ``runs`` pairs;
- end to end: one text-to-image call (``batch`` images, the model's steps and guidance, fixed
  seeds), ``e2e_runs`` pairs.
Timed calls are separated by a `PAUSE` that is not timed: ONNX Runtime's (and OpenMP's) idle
worker threads spin for a while after a call, and without the pause the session that just ran
would take cores from the one being measured. Reported: p50/p90/p99 per model, the edited/unedited ratio as the median of per-pair ratios
with its interquartile range (folded weights cost nothing: expect 1.00 +- 0.02), and each
backend's p50 against torch's. Outputs of the two models must differ (else the edit was not
loaded) and each backend's images must match torch's within `IMAGE_TOLERANCE`.
Writes bench.json, bench.md and bench.png into ``out``.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..conditioning import Conditioning, encode_prompts
from ..errors import ConfigError, StaleExportError
from ..artifact import load_edited_unet, load_manifest, package_versions
from ..loading import load_base, weights_hash
from .pipeline import Text2ImagePipeline
from .runtime import BACKENDS, load_runtime

logger = logging.getLogger(__name__)

IMAGE_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 5e-2}  # max |pixel diff| in [0, 1] against torch fp32
PROMPT = "a red circle"
PAUSE = 0.05  # seconds between timed calls, not timed (see the module docstring)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn) -> float:
    time.sleep(PAUSE)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentiles(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": len(a)}


def _ratio(edited: list[float], unedited: list[float]) -> dict:
    r = np.asarray(edited) / np.asarray(unedited)
    return {"median": float(np.median(r)), "q25": float(np.percentile(r, 25)), "q75": float(np.percentile(r, 75))}


def _ab(a, b, n: int, warmup: int, desc: str, progress: bool) -> tuple[list[float], list[float]]:
    """Interleaved timings of a() and b(), alternating which goes first."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
        if i % 2 == 0:
            ta.append(_timed(a)), tb.append(_timed(b))
        else:
            tb.append(_timed(b)), ta.append(_timed(a))
    return ta, tb


def _export_for(backend: str, source, work: Path, name: str, precision: str) -> Path:
    """An ONNX export (onnxruntime) or an engine directory (tensorrt) of ``source`` under ``work``,
    made by `esd_sdk.export` on first use and reused after."""
    from ..export import export, load_export_metadata

    fmt = "onnx" if backend == "onnxruntime" else "tensorrt"
    out = work / f"{name}-{fmt}-{precision}"
    metadata = out / ("esd_export.json" if fmt == "onnx" else "onnx/esd_export.json")
    if metadata.is_file():
        logger.info("reusing %s (%s)", out, load_export_metadata(metadata.parent)["weights_hash"][:19])
    else:
        export(source, fmt, out, precision=precision, overwrite=True)
    return out


@dataclass
class BenchReport:
    """What `benchmark` returns; bench.json is its `to_dict`."""

    edited: str
    base_model: str
    concepts: list[str]
    method: str
    precision: str
    device: str
    batch: int
    unet_batch: int
    runs: int
    e2e_runs: int
    warmup: int
    machine: dict
    versions: dict
    # backend -> {"runtime", "setup_seconds", "unet_output_diff_edited_vs_unedited",
    #             "unet_step"/"end_to_end": {"unedited", "edited": percentiles, "ratio": {...}, "vs_torch"}}
    backends: dict[str, dict] = field(default_factory=dict)

    def ratio(self, backend: str, stage: str = "unet_step") -> float:
        """Edited / unedited latency of ``backend`` at ``stage`` (median of per-pair ratios)."""
        return self.backends[backend][stage]["ratio"]["median"]

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        lines = [f"# Latency: {self.edited} vs its base ({self.base_model})", "",
                 f"{self.device}, {self.precision}, {self.batch} image(s) per call (UNet batch {self.unet_batch}), "
                 f"{self.runs} interleaved UNet-step pairs, {self.e2e_runs} text-to-image pairs after {self.warmup} "
                 "warm-up calls.", "",
                 "| backend | stage | unedited p50 / p90 / p99 ms | edited p50 / p90 / p99 ms | edited/unedited (IQR) | vs torch |",
                 "|---|---|---|---|---|---|"]
        for backend, e in self.backends.items():
            for stage in ("unet_step", "end_to_end"):
                if stage not in e:
                    continue
                s = e[stage]
                fmt = lambda p: f"{p['p50_ms']:.2f} / {p['p90_ms']:.2f} / {p['p99_ms']:.2f}"  # noqa: E731
                r = s["ratio"]
                vs = f"{s['vs_torch']:.2f}x" if "vs_torch" in s else ""
                lines.append(f"| {backend} | {stage.replace('_', ' ')} | {fmt(s['unedited'])} | {fmt(s['edited'])} | "
                             f"{r['median']:.3f} ({r['q25']:.3f}-{r['q75']:.3f}) | {vs} |")
        lines += ["", "Runtimes: " + "; ".join(f"{b}: {e['runtime']}" for b, e in self.backends.items())]
        return "\n".join(lines) + "\n"

    def save(self, out: str | Path) -> None:
        """Write bench.json, bench.md and bench.png into ``out``."""
        from ..plots import bar_chart

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out / "bench.md").write_text(self.markdown())
        groups = {}
        for backend, e in self.backends.items():
            for stage in ("unet_step", "end_to_end"):
                if stage in e:
                    groups.setdefault(stage.replace("_", " "), {})[backend] = {
                        k: (e[stage][k]["p50_ms"], e[stage][k]["p90_ms"]) for k in ("unedited", "edited")}
        bar_chart(groups, title=f"p50 latency (whisker: p90), {self.device}, batch {self.batch}",
                  unit="ms").savefig(out / "bench.png")


def benchmark(edited: str | Path, backends: list[str] | None = None, *, base_model: str | None = None,
              runs: int = 50, e2e_runs: int = 10, warmup: int = 3, batch: int = 1, steps: int | None = None,
              precision: str = "fp32", device: str | None = None, threads: int | None = None,
              out: str | Path | None = None, work_dir: str | Path | None = None, progress: bool = True) -> BenchReport:
    """Benchmark ``edited`` (an erase output) against its base model on each backend.

    Args:
        edited: the erase output directory.
        backends: any of torch, onnxruntime, tensorrt (default: torch and onnxruntime, plus
            tensorrt when a GPU and TensorRT are present).
        base_model: the unedited model [the manifest's base].
        runs, e2e_runs, warmup: timed pairs of UNet steps / text-to-image calls, and warm-up calls.
        batch: images per call (the UNet batch is twice that, for guidance).
        steps: denoising steps end to end [the model's].
        precision: fp32, or fp16/bf16 (GPU; ONNX fp16 exports for onnxruntime, engines for tensorrt).
        device: torch device [cuda if available].
        threads: ONNX Runtime intra-op threads [its default].
        out: where to write bench.json, bench.md and bench.png (nothing written if None).
        work_dir: where ONNX exports and engines are kept between runs [out/exports].
    """
    edited = Path(edited)
    manifest = load_manifest(edited)
    backends = list(backends or _default_backends())
    for b in backends:
        if b not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got '{b}'")
    if runs < 1 or e2e_runs < 0 or warmup < 0 or batch < 1:
        raise ConfigError("runs and batch must be >= 1, e2e_runs and warmup >= 0")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision != "fp32" and device.type == "cpu":
        raise ConfigError(f"precision {precision} is for GPUs: use --precision fp32 on the CPU")
    base = load_base(base_model or manifest["base_model"])

    if weights_hash(base.unet) != manifest["base_hash"]:
        raise ConfigError(f"{base.source} is not the base {edited} was erased from (weights hash differs): "
                          "pass the right --base")
    work = Path(work_dir) if work_dir else (Path(out) / "exports" if out else edited.parent / f".{edited.name}-bench")
    work.mkdir(parents=True, exist_ok=True)
    base_unet_dir = work / "base-unet"
    if not (base_unet_dir / "config.json").is_file() and any(b != "torch" for b in backends):
        base.unet.save_pretrained(base_unet_dir, safe_serialization=True)

    size = base.unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2 * batch, base.unet.config.in_channels, size, size, generator=g)
    timestep = torch.full((2 * batch,), 500, dtype=torch.long)
    cond = Conditioning.cat([encode_prompts(base, [""] * batch), encode_prompts(base, [PROMPT] * batch)])
    seeds = list(range(batch))

    report = BenchReport(
        edited=str(edited), base_model=manifest["base_model"], concepts=manifest["concepts"], method=manifest["method"],
        precision=precision, device=str(device), batch=batch, unet_batch=2 * batch, runs=runs, e2e_runs=e2e_runs,
        warmup=warmup,
        machine={"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                 "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None},
        versions=package_versions("esd-sdk", "torch", "diffusers", "onnxruntime", "onnxruntime-gpu", "tensorrt"))
    reference_images = None
    for backend in backends:
        t0 = time.perf_counter()
        if backend == "torch":
            runtimes = {"unedited": load_runtime(copy.deepcopy(base.unet), "torch", device=str(device), precision=precision),
                        "edited": load_runtime(load_edited_unet(edited), "torch", device=str(device), precision=precision)}
        else:
            runtimes = {"unedited": load_runtime(_export_for(backend, base_unet_dir, work, "base", precision), backend,
                                                 threads=threads),
                        "edited": load_runtime(_export_for(backend, edited, work, edited.name, precision), backend,
                                               threads=threads)}
        setup = time.perf_counter() - t0
        rt_device = runtimes["edited"].device
        inputs = (sample.to(rt_device), timestep.to(rt_device), cond.to(rt_device))

        def step(rt):
            def call():
                rt(*inputs)
                _sync(rt_device)
            return call

        outs = {k: rt(*inputs) for k, rt in runtimes.items()}
        unet_diff = float((outs["edited"] - outs["unedited"]).abs().max())
        if unet_diff == 0:
            raise StaleExportError(f"{backend}: the edited and unedited UNets give identical outputs: the edit was not "
                                   "loaded; re-export it with --overwrite")
        ta, tb = _ab(step(runtimes["unedited"]), step(runtimes["edited"]), runs, warmup, f"{backend} UNet step",
                     progress)
        entry = {"runtime": runtimes["edited"].describe(), "setup_seconds": round(setup, 2),
                 "unet_output_diff_edited_vs_unedited": unet_diff,
                 "unet_step": {"unedited": percentiles(ta), "edited": percentiles(tb), "ratio": _ratio(tb, ta)}}
        if e2e_runs:
            pipes = {k: Text2ImagePipeline(base, rt) for k, rt in runtimes.items()}
            images = pipes["edited"]([PROMPT] * batch, seeds=seeds, steps=steps)
            if reference_images is None:
                reference_images = images
            else:
                entry["image_diff_vs_first_backend"] = float(np.abs(images - reference_images).max())
            ta, tb = _ab(lambda: pipes["unedited"]([PROMPT] * batch, seeds=seeds, steps=steps),
                         lambda: pipes["edited"]([PROMPT] * batch, seeds=seeds, steps=steps), e2e_runs,
                         min(warmup, 1), f"{backend} text-to-image", progress)
            entry["end_to_end"] = {"unedited": percentiles(ta), "edited": percentiles(tb), "ratio": _ratio(tb, ta),
                                   "steps": pipes["edited"].defaults.num_inference_steps if steps is None else steps}
        report.backends[backend] = entry
        logger.info("%s: edited/unedited UNet step %.3f", backend, entry["unet_step"]["ratio"]["median"])
    if "torch" in report.backends:
        torch_p50 = report.backends["torch"]["unet_step"]["unedited"]["p50_ms"]
        for entry in report.backends.values():
            entry["unet_step"]["vs_torch"] = entry["unet_step"]["unedited"]["p50_ms"] / torch_p50
    if out:
        report.save(out)
    return report


def _default_backends() -> list[str]:
    import importlib.util

    backends = ["torch"]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        backends.append("onnxruntime")
    if torch.cuda.is_available() and importlib.util.find_spec("tensorrt"):
        backends.append("tensorrt")
    return backends
