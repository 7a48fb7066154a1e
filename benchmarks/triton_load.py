"""Load test of the Triton text-to-image model on loopback: what Triton's dynamic batching buys.

    python benchmarks/triton_load.py                                   # toy, concurrency 1/4/8, 16 requests each
    python benchmarks/triton_load.py --model runs/demo/erased-circle --concurrency 8 16 --requests 32

Two Triton servers run side by side on the same model, one with dynamic batching up to
``--max-batch`` images per pipeline call and one with max batch size 1 (every request alone).
For each concurrency level the two are measured in alternating rounds (A, B, A, B, ...), so that
the machine's load hits both alike; each round sends ``--requests`` requests through tritonclient
(HTTP), at most ``concurrency`` in flight. Reported per server and level: throughput (images/s),
p50/p95 latency, and the mean number of images per pipeline call, from Triton's own statistics
(inference_count / execution_count), and each server's exit code after SIGTERM. Writes
triton_load.json, triton_load.md and the servers' logs to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.http as http

from esd_sdk.serving.triton_app import MODEL_NAME, TritonServer, write_text2image_repository

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow cross", "a striped circle", "a dotted square"]


def request(client: http.InferenceServerClient, prompt: str, seed: int, steps: int) -> float:
    inputs = []
    for name, dtype, value in (("prompt", "BYTES", np.array([[prompt.encode()]], dtype=object)),
                               ("seed", "INT64", np.array([[seed]], dtype=np.int64)),
                               ("steps", "INT32", np.array([[steps]], dtype=np.int32))):
        tensor = http.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    start = time.perf_counter()
    client.infer(MODEL_NAME, inputs).as_numpy("image")
    return time.perf_counter() - start


def counts(client: http.InferenceServerClient) -> tuple[int, int]:
    stats = client.get_inference_statistics(MODEL_NAME)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def run_round(url: str, concurrency: int, n: int, steps: int, seed0: int) -> dict:
    """``concurrency`` closed-loop clients share ``n`` requests; each owns its client (a gevent
    client must stay in the thread that made it)."""
    def worker(k: int) -> list[float]:
        client = http.InferenceServerClient(url, network_timeout=600)
        try:
            return [request(client, PROMPTS[i % len(PROMPTS)], seed0 + i, steps) for i in range(k, n, concurrency)]
        finally:
            client.close()

    monitor = http.InferenceServerClient(url)
    before = counts(monitor)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for part in pool.map(worker, range(concurrency)) for t in part]
    wall = time.perf_counter() - start
    after = counts(monitor)
    monitor.close()
    return {"latencies": latencies, "wall": wall, "images": after[0] - before[0], "calls": after[1] - before[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="What to serve (an erase output, toy, ...) [toy].")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8], help="Requests in flight.")
    parser.add_argument("--requests", type=int, default=16, help="Requests per round.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating rounds per server and level.")
    parser.add_argument("--steps", type=int, default=10, help="Denoising steps per image.")
    parser.add_argument("--max-batch", type=int, default=8, help="The batching server's max batch size.")
    parser.add_argument("--max-wait-ms", type=float, default=20.0, help="Triton's max queue delay.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server (two servers share the CPU).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/triton_load"))
    args = parser.parse_args()

    settings = {f"batching (max batch {args.max_batch})": args.max_batch, "no batching (max batch 1)": 1}
    results: dict[str, dict[int, dict]] = {name: {} for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {}
        try:
            for name, max_batch in settings.items():
                repo = write_text2image_repository(args.model, Path(tmp) / str(max_batch), max_batch_size=max_batch,
                                                   max_wait_ms=args.max_wait_ms, threads=args.threads).directory
                start = time.perf_counter()
                args.out.mkdir(parents=True, exist_ok=True)
                servers[name] = TritonServer(repo, log_file=args.out / f"tritonserver-max-batch-{max_batch}.log").start()
                print(f"{name}: ready in {time.perf_counter() - start:.1f} s", flush=True)
            for concurrency in args.concurrency:
                for r in range(args.rounds):
                    for name, server in servers.items():
                        out = run_round(server.http_url, concurrency, args.requests, args.steps, seed0=1000 * r)
                        acc = results[name].setdefault(concurrency, {"latencies": [], "wall": 0.0, "images": 0,
                                                                     "calls": 0})
                        for key in ("wall", "images", "calls"):
                            acc[key] += out[key]
                        acc["latencies"] += out["latencies"]
                        print(f"{name}, concurrency {concurrency}, round {r}: {out['wall']:.1f} s, "
                              f"{out['images'] / max(out['calls'], 1):.2f} images/call", flush=True)
        finally:
            codes = {name: server.stop() for name, server in servers.items()}

    rows = []
    for name, levels in results.items():
        for concurrency, acc in levels.items():
            lat = np.array(acc["latencies"]) * 1000
            rows.append({"server": name, "concurrency": concurrency, "requests": len(lat),
                         "throughput_img_s": acc["images"] / acc["wall"], "p50_ms": float(np.percentile(lat, 50)),
                         "p95_ms": float(np.percentile(lat, 95)), "images_per_call": acc["images"] / acc["calls"]})
    speedup = {}
    batching, single = list(settings)
    for concurrency in args.concurrency:
        a, b = (next(r for r in rows if r["server"] == s and r["concurrency"] == concurrency) for s in (batching, single))
        speedup[concurrency] = a["throughput_img_s"] / b["throughput_img_s"]
    report = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rows": rows,
              "throughput_ratio_batching_vs_single": speedup, "exit_codes": codes,
              "machine": f"{platform.machine()}, {platform.python_version()}, CPU"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "triton_load.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Triton text2image load test ({args.model}, {args.steps} steps, {args.requests} requests x "
             f"{args.rounds} rounds per level, torch threads {args.threads}, max queue delay {args.max_wait_ms:g} ms)",
             "", "Two servers side by side, measured in alternating rounds. `" + " ".join(sys.argv) + "`", "",
             "| server | concurrency | throughput (img/s) | p50 (ms) | p95 (ms) | images per pipeline call |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['server']} | {r['concurrency']} | {r['throughput_img_s']:.2f} | {r['p50_ms']:.0f} | "
              f"{r['p95_ms']:.0f} | {r['images_per_call']:.2f} |" for r in rows]
    lines += ["", "Throughput with batching / without, same concurrency: " +
              ", ".join(f"{c}: {s:.2f}x" for c, s in speedup.items()), "",
              f"Server exit codes after SIGTERM: {codes}"]
    (args.out / "triton_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
