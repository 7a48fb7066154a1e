"""Load test of `esd-sdk serve` on loopback: N concurrent clients against the toy model.

    python benchmarks/serve_load.py                                  # 200 clients, three server settings
    python benchmarks/serve_load.py --clients 50 --config 8:64      # max_batch:max_queue

For each server setting (max batch : max queue) a fresh `esd-sdk serve` runs in its own process
(so that client threads do not share its GIL); all clients start together (a barrier), each sends
``--requests`` POST /generate in a row with its own seed and one of the toy prompts, and never
retries. Reported: wall time, throughput (images/s), p50/p99 latency of the 200s, 429s
(deliberate back-pressure when the queue is full), errors (anything else: the target is 0),
and the batch sizes the server ran, read from its /metrics. Writes JSON and Markdown to --out.
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

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow cross", "a striped circle", "a dotted square"]


def start_server(args, max_batch: int, max_queue: int) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "esd_sdk", "serve", "--model", args.model, "--backend", args.backend, "--port", "0",
           "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--max-wait-ms", str(args.max_wait_ms)]
    if args.unet:
        cmd += ["--unet", args.unet]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
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


def metrics(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")}


def run(args, max_batch: int, max_queue: int) -> dict:
    proc, port = start_server(args, max_batch, max_queue)
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
        m = metrics(port)
    finally:
        proc.terminate()  # SIGTERM: the server drains and exits
        code = proc.wait(60)
    ok = [s for code_, s in results if code_ == 200]
    sizes = {int(k.split('"')[1]): int(v) for k, v in m.items() if k.startswith("esd_batch_size_total")}
    return {"max_batch": max_batch, "max_queue": max_queue, "clients": args.clients, "requests": len(results),
            "ok": len(ok), "rejected_429": sum(c == 429 for c, _ in results),
            "errors": sum(c not in (200, 429) for c, _ in results), "wall_s": round(wall, 2),
            "images_per_s": round(len(ok) / wall, 2),
            "p50_ms": round(float(np.percentile(ok, 50)) * 1000, 1) if ok else None,
            "p99_ms": round(float(np.percentile(ok, 99)) * 1000, 1) if ok else None,
            "mean_batch": round(sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values())), 2),
            "batch_sizes": dict(sorted(sizes.items())), "server_exit_code": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--backend", default="onnxruntime", choices=["torch", "onnxruntime"])
    parser.add_argument("--unet", help="ONNX export for --backend onnxruntime [exported from --model on the fly]")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=1, help="requests per client")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--config", action="append", help="max_batch:max_queue [8:256, 1:256, 8:32]")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_load")
    args = parser.parse_args()
    configs = [tuple(map(int, c.split(":"))) for c in (args.config or ["8:256", "1:256", "8:32"])]
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "onnxruntime" and not args.unet:
            from esd_sdk import load_base
            from esd_sdk.export import export_onnx

            export_onnx(load_base(args.model).path, Path(tmp) / "onnx")
            args.unet = str(Path(tmp) / "onnx")
        rows = []
        for max_batch, max_queue in configs:
            row = run(args, max_batch, max_queue)
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {"model": args.model, "backend": args.backend, "cpu_threads": os.cpu_count(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Load test: {args.clients} concurrent clients x {args.requests} request(s), model {args.model}, "
             f"{args.backend}", "",
             "| max batch | max queue | ok | 429 | errors | wall s | images/s | p50 ms | p99 ms | mean batch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['max_batch']} | {r['max_queue']} | {r['ok']} | {r['rejected_429']} | {r['errors']} | "
                     f"{r['wall_s']} | {r['images_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_batch']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
