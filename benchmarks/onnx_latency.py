"""UNet step latency: ONNX Runtime (CPU) vs eager PyTorch (CPU), side by side in one run.

    python benchmarks/onnx_latency.py                 # toy UNet and a mid-size UNet

For each UNet: export with esd_sdk.export.export_onnx (fp32), then time one UNet call (batch 2,
as with classifier-free guidance) alternating PyTorch and ONNX Runtime after warm-up; report
the median of per-pair ratios (ORT / PyTorch) and the p10-p90 range, plus export time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def bench(name: str, model_dir: Path, repeats: int, threads: int) -> dict:
    import onnxruntime as ort

    from esd_sdk.export import export_onnx
    from esd_sdk.export.onnx import _dummy_inputs, _torch_forward, resolve_unet

    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    result = export_onnx(model_dir, tmp / "onnx")
    export_s = time.perf_counter() - t0
    unet, _ = resolve_unet(model_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(result.model_path), options, providers=["CPUExecutionProvider"])
    inputs = _dummy_inputs(unet, batch=2, seq=16 if unet.config.cross_attention_dim < 768 else 77)
    torch.set_num_threads(threads)
    for _ in range(3):
        _torch_forward(unet, inputs)
        session.run(None, inputs)
    t_torch, t_ort = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _torch_forward(unet, inputs)
        t_torch.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        session.run(None, inputs)
        t_ort.append(time.perf_counter() - t0)
    ratios = sorted(o / t for o, t in zip(t_ort, t_torch))
    dec = statistics.quantiles(ratios, n=10)
    return {
        "unet": name, "params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
        "export_s": round(export_s, 2), "parity_max_abs_diff": result.parity.max_abs_diff,
        "torch_ms_p50": round(1e3 * statistics.median(t_torch), 2), "ort_ms_p50": round(1e3 * statistics.median(t_ort), 2),
        "ort_over_torch_median": round(statistics.median(ratios), 3), "ratio_p10_p90": [round(dec[0], 3), round(dec[-1], 3)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx_latency.json"))
    args = p.parse_args()
    from esd_sdk import toy_model_path
    from esd_sdk.testing import build_random_sd, mid_unet_config

    models = {"toy (3.7M)": toy_model_path(), "mid-size": build_random_sd(Path(tempfile.mkdtemp()), mid_unet_config())}
    rows = []
    for name, path in models.items():
        rows.append(bench(name, path, args.repeats, args.threads))
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| UNet | params | export s | torch ms | ORT ms | ORT/torch (p10-p90) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['unet']} | {r['params_m']}M | {r['export_s']} | {r['torch_ms_p50']} | {r['ort_ms_p50']} | "
              f"{r['ort_over_torch_median']} ({r['ratio_p10_p90'][0]}-{r['ratio_p10_p90'][1]}) |")


if __name__ == "__main__":
    main()
