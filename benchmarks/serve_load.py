"""`firstepoch serve` under load: 16 concurrent streaming chat clients against one client alone, same server,
same model, same requests, in one run.

    python benchmarks/serve_load.py [--clients 16] [--seconds 60] [--max-tokens 64]

The server runs in its own process on a loopback port with the bundled SmolLM2-135M-Instruct (context 1024).
Each client sends streaming /v1/chat/completions requests one after another until the time is up (requests
under way then are finished and counted). Reported: requests/s, time to first token p50/p99, completion
tokens/s over the whole run (exact counts from `stream_options.include_usage`), and errors (any non-200,
broken stream or missing [DONE]). Target: zero errors, and aggregate tokens/s at least the single client's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

QUESTIONS = ["Tell me about the sea.", "What is a neural network?", "Describe a cat in a few words.",
             "Why is the sky blue?", "Give me a tip for cooking rice.", "What is the capital of Italy?",
             "Write a line about autumn.", "How do bicycles stay upright?"]


async def client_loop(base: str, deadline: float, max_tokens: int, seed: int, out: dict) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        i = seed
        while time.perf_counter() < deadline:
            body = {"model": "smollm2-135m-instruct", "stream": True, "max_tokens": max_tokens, "temperature": 0.7,
                    "seed": i, "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
            i += 1
            sent = time.perf_counter()
            first, usage, done = None, None, False
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        out["errors"].append(f"HTTP {r.status_code}")
                        await r.aread()
                        continue
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            done = True
                            break
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                            first = time.perf_counter() - sent
            except httpx.HTTPError as exc:
                out["errors"].append(type(exc).__name__)
                continue
            if not done or usage is None:
                out["errors"].append("stream ended without usage and [DONE]")
                continue
            out["requests"] += 1
            out["tokens"] += usage["completion_tokens"]
            if first is not None:
                out["ttft"].append(first)


def server_seconds(base: str) -> dict:
    text = httpx.get(base + "/metrics").text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith(("firstepoch_decode_seconds_total", "firstepoch_prompt_seconds_total"))}


async def phase(base: str, clients: int, seconds: float, max_tokens: int) -> dict:
    out = {"requests": 0, "tokens": 0, "ttft": [], "errors": []}
    before = server_seconds(base)
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(base, start + seconds, max_tokens, 1000 * c, out) for c in range(clients)))
    out["elapsed"] = time.perf_counter() - start
    after = server_seconds(base)
    out["busy"] = sum(after[k] - before.get(k, 0.0) for k in after)  # prefill + decode time in the server
    return out


def report(name: str, r: dict) -> None:
    ttft = np.array(r["ttft"]) * 1e3 if r["ttft"] else np.array([float("nan")])
    print(f"  {name:11s} {r['requests']:5d} req in {r['elapsed']:5.1f}s  {r['requests'] / r['elapsed']:5.2f} req/s  "
          f"TTFT p50 {np.percentile(ttft, 50):7.0f} ms  p99 {np.percentile(ttft, 99):7.0f} ms  "
          f"{r['tokens'] / r['elapsed']:6.1f} tokens/s  model busy {r['busy'] / r['elapsed']:4.0%}  "
          f"errors {len(r['errors'])}"
          + (f" ({', '.join(sorted(set(r['errors'])))})" if r["errors"] else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    server = subprocess.Popen([sys.executable, "-m", "firstepoch", "serve", "smollm2-135m-instruct", "--port",
                               str(port), "--context", "1024", "--queue", str(max(16, args.clients))],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        asyncio.run(phase(base, 1, 5, args.max_tokens))  # warm-up: kernels compiled and loaded
        print(f"{args.clients} clients vs 1, {args.seconds:.0f} s each, streaming chat, max {args.max_tokens} tokens, "
              f"bundled SmolLM2-135M-Instruct")
        single = asyncio.run(phase(base, 1, args.seconds, args.max_tokens))
        report("1 client", single)
        many = asyncio.run(phase(base, args.clients, args.seconds, args.max_tokens))
        report(f"{args.clients} clients", many)
        ratio = (many["tokens"] / many["elapsed"]) / max(single["tokens"] / single["elapsed"], 1e-9)
        print(f"  aggregate tokens/s {ratio:.2f}x one client (target >= 1.0); errors {len(many['errors'])} "
              f"(target 0)")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
