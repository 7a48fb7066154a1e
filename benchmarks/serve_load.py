"""Load test of `esd-sdk serve` on loopback: N concurrent clients against the toy model.

    python benchmarks/serve_load.py                                  # 200 clients, three server settings
    python benchmarks/serve_load.py --clients 50 --config 8:64      # max_batch:max_queue
    python benchmarks/serve_load.py --baseline /tmp/esd-old          # this tree vs another, interleaved

``--baseline SRC`` runs every setting on a second source tree too, alternating which goes first,
so that two versions of the server are compared side by side on the same (noisy, shared)
machine. SRC is a checkout laid out as the installed package is (esd_sdk/serving and
esd_sdk/export linked to serving/ and export/); its server runs with SRC as the working
directory, so ``python -m esd_sdk`` imports SRC's code:

    git worktree add /tmp/esd-old <commit>
    ln -s ../serving /tmp/esd-old/esd_sdk/serving && ln -s ../export /tmp/esd-old/esd_sdk/export

For each server setting (max batch : max queue) a fresh `esd-sdk serve` runs in its own process
(so that client threads do not share its GIL); all clients start together (a barrier), each sends
``--requests`` POST /generate in a row with its own seed and one of the toy prompts, and never
retries. Reported: wall time, throughput (images/s), p50/p99 latency of the 200s, 429s
(deliberate back-pressure when the queue is full), errors (anything else: the target is 0),
the batch sizes the server ran, read from its /metrics, and how long it took to stop after
SIGTERM (drain). Writes JSON and Markdown to --out.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow cross", "a striped circle", "a dotted square"]


def start_server(args, max_batch: int, max_queue: int, source: Path | None) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "esd_sdk", "serve", "--model", args.model, "--backend", args.backend, "--port", "0",
           "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--max-wait-ms", str(args.max_wait_ms)]
    if args.unet:
        cmd += ["--unet", args.unet]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=source)
    for line in proc.stderr:
        match = re.search(r"at http://127\.0\.0\.1:(\d+)", line)
        if match:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
            return proc, int(match.group(1))
    raise SystemExit(f"server did not start: {proc.wait()}")


def post(port: int, body: dict) -> tuple[int, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/generate", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    except OSError:
        return -1, time.perf_counter() - start
    finally:
        conn.close()


def batch_sizes(port: int) -> dict[int, int]:
    """The server's batches by size, from its /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return {int(s.labels["size"]): int(s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "esd_batch_size_total"}


def run(args, max_batch: int, max_queue: int, source: Path | None = None) -> dict:
    proc, port = start_server(args, max_batch, max_queue, source)
    try:
        post(port, {"prompt": "a red circle"})  # warm-up
        results: list[tuple[int, float]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(args.clients + 1)

        def client(i: int):
            barrier.wait()
            for r in range(args.requests):
                out = post(port, {"prompt": PROMPTS[(i + r) % len(PROMPTS)], "seed": i * args.requests + r})
                with lock:
                    results.append(out)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        [t.start() for t in threads]
        barrier.wait()
        start = time.perf_counter()
        [t.join() for t in threads]
        wall = time.perf_counter() - start
        sizes = batch_sizes(port)
    finally:
        stop = time.perf_counter()
        proc.terminate()  # SIGTERM: the server drains and exits
        try:
            code = proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed after 300 s"
        stop = time.perf_counter() - stop
    ok = [s for code_, s in results if code_ == 200]
    return {"server": str(source) if source else "this tree", "max_batch": max_batch, "max_queue": max_queue,
            "clients": args.clients, "requests": len(results),
            "ok": len(ok), "rejected_429": sum(c == 429 for c, _ in results),
            "errors": sum(c not in (200, 429) for c, _ in results), "wall_s": round(wall, 2),
            "images_per_s": round(len(ok) / wall, 2),
            "p50_ms": round(float(np.percentile(ok, 50)) * 1000, 1) if ok else None,
            "p99_ms": round(float(np.percentile(ok, 99)) * 1000, 1) if ok else None,
            "mean_batch": round(sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values())), 2),
            "batch_sizes": dict(sorted(sizes.items())), "server_exit_code": code, "stop_s": round(stop, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--backend", default="onnxruntime", choices=["torch", "onnxruntime"])
    parser.add_argument("--unet", help="ONNX export for --backend onnxruntime [exported from --model on the fly]")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=1, help="requests per client")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--config", action="append", help="max_batch:max_queue [8:256, 1:256, 8:32]")
    parser.add_argument("--baseline", type=Path, help="another source tree to run side by side (see above)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_load" / "serve_load")
    args = parser.parse_args()
    configs = [tuple(map(int, c.split(":"))) for c in (args.config or ["8:256", "1:256", "8:32"])]
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "onnxruntime" and not args.unet:
            from esd_sdk import load_base
            from esd_sdk.export import export_onnx

            export_onnx(load_base(args.model).path, Path(tmp) / "onnx")
            args.unet = str(Path(tmp) / "onnx")
        rows = []
        for i, (max_batch, max_queue) in enumerate(configs):
            sources = [None, args.baseline.resolve()] if args.baseline else [None]
            for source in sources[::-1] if i % 2 else sources:  # alternate which goes first
                row = run(args, max_batch, max_queue, source)
                print(json.dumps(row), flush=True)
                rows.append(row)
    report = {"model": args.model, "backend": args.backend, "cpu_threads": os.cpu_count(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Load test: {args.clients} concurrent clients x {args.requests} request(s), model {args.model}, "
             f"{args.backend}", "",
             "| server | max batch | max queue | ok | 429 | errors | wall s | images/s | p50 ms | p99 ms | mean batch "
             "| stop s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['server']} | {r['max_batch']} | {r['max_queue']} | {r['ok']} | {r['rejected_429']} | "
                     f"{r['errors']} | {r['wall_s']} | {r['images_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['mean_batch']} | {r['stop_s']} |")
    if args.baseline:
        by = {(r["server"], r["max_batch"], r["max_queue"]): r["images_per_s"] for r in rows}
        base = str(args.baseline.resolve())
        lines += ["", f"Throughput of this tree / {args.baseline} (same setting, same run): " + ", ".join(
            f"{b}:{q} {by['this tree', b, q] / by[base, b, q]:.2f}x" for b, q in configs if by[base, b, q])]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
