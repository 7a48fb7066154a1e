"""benchmarks/gpu_check.sh, dry run: every section at a tiny size on the CPU, one JSON out."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
SECTIONS = ["erase", "serving", "serving_compile", "onnx_export", "ort_cuda", "tensorrt"]
HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="gpu_check.sh needs bash")


def _run(out: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    environ = {k: v for k, v in os.environ.items() if k != "OUT"}
    environ.update(PYTHON=sys.executable, **env)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args], capture_output=True,
                          text=True, env=environ, timeout=600)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_dry_run_writes_one_json_with_every_section(tmp_path):
    proc, report = _run(tmp_path / "gpu_check.json")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert report["schema"] == "esd-sdk-gpu-check/1" and report["dry_run"] is True
    assert {"environment", "sections", "summary", "seconds", "budget_s", "started"} <= set(report)
    assert {"torch", "cuda_available", "packages", "onnxruntime_providers"} <= set(report["environment"])
    sections = report["sections"]
    assert list(sections) == SECTIONS
    for name, entry in sections.items():
        assert entry["status"] in ("ok", "skipped"), (name, entry)
        assert entry.get("reason") if entry["status"] == "skipped" else "result" in entry

    erase = sections["erase"]["result"]
    assert erase["precision"] == "bf16" and erase["gradient_checkpointing"] is True
    for key in ("engine_s_per_step", "reference_s_per_step", "speedup_median", "engine_peak_mib",
                "reference_peak_mib", "peak_memory_ratio"):
        assert erase[key] > 0, key
    fp32 = sections["serving"]["result"]["variants"]["torch eager fp32"]
    assert fp32["unedited"]["p50_ms"] > 0 and fp32["edited"]["p50_ms"] > 0 and fp32["edited_over_unedited"] > 0
    assert "torch.compile" in sections["serving_compile"]["reason"]

    if "onnxruntime" in report["environment"]["packages"] and sections["onnx_export"]["status"] == "ok":
        assert sections["onnx_export"]["result"]["parity_max_abs_diff"] <= sections["onnx_export"]["result"]["parity_tolerance"]
        assert sections["ort_cuda"]["status"] == "ok" and sections["ort_cuda"]["result"]["ort_over_torch"] > 0
    if not HAS_TRT:
        assert sections["tensorrt"]["status"] == "skipped" and "tensorrt" in sections["tensorrt"]["reason"]

    summary = report["summary"]
    for key in ("erase_speedup", "erase_engine_peak_gib", "erase_reference_peak_gib", "erase_peak_memory_ratio",
                "serving", "ort_cuda_over_torch", "tensorrt_build_s", "tensorrt_refit_s", "tensorrt_over_torch",
                "measured", "skipped", "errors"):
        assert key in summary, key
    assert summary["erase_speedup"] > 0 and summary["errors"] == {}
    assert {"erase", "serving"} <= set(summary["measured"])
    assert set(summary["skipped"]) == {n for n, e in sections.items() if e["status"] == "skipped"}
    assert "| what | value | ratio |" in proc.stdout


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path):
    proc, report = _run(tmp_path / "r.json", "--sections", "serving,tensorrt", GPU_CHECK_INJECT_FAILURE="serving")
    assert proc.returncode == 1
    assert list(report["sections"]) == ["serving", "onnx_export", "tensorrt"]
    serving = report["sections"]["serving"]
    assert serving["status"] == "error" and "injected failure" in serving["error"] and serving["log_tail"]
    assert report["summary"]["errors"] == {"serving": serving["error"]}
    tensorrt = report["sections"]["tensorrt"]  # ran after the failure: skipped here, measured on a GPU
    assert tensorrt["status"] in ("skipped", "ok") and (tensorrt.get("reason") or tensorrt.get("result"))
