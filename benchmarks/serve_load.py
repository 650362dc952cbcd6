"""`firstepoch serve` under load: 1, 4 and 16 concurrent streaming chat clients, same server, model and requests,
and the same against llama.cpp's own server (llama-server, continuous batching over parallel slots), in one run.

    python benchmarks/serve_load.py [--clients 1,4,16] [--seconds 60] [--max-tokens 64] [--parallel 16]
                                    [--llama-server PATH]

firstepoch serves the bundled SmolLM2-135M-Instruct with `--parallel` slots decoded together (1: one request at
a time), context 1024 a slot. llama-server (optional) serves the same GGUF file with as many slots (`-np`), the same
2 threads; it is built from the llama.cpp sources llama-cpp-python vendors (its Python server does not batch):
    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    cd llama_cpp_python-0.3.36/vendor/llama.cpp && cmake -B build -DLLAMA_CURL=OFF && \
        cmake --build build --target llama-server -j 2
Each client sends streaming /v1/chat/completions requests one after another until the time is up (requests
under way then are finished and counted). Reported: requests/s, time to first token p50/p99, completion
tokens/s over the whole run (exact counts from `stream_options.include_usage`), and errors (any non-200,
broken stream or missing [DONE]). Targets: zero errors; with 16 clients, aggregate tokens/s at least 2.5x one
client's and at least llama.cpp's, and TTFT p50 under 1 s.
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
    """firstepoch's prefill and decode seconds so far (its /metrics); empty for a server without them."""
    try:
        text = httpx.get(base + "/metrics").text
    except httpx.HTTPError:
        return {}
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
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=16, help="requests each server decodes together")
    parser.add_argument("--llama-server", default=None, help="llama.cpp's server binary, to run it too")
    args = parser.parse_args()
    from firstepoch.llm.models import resolve

    path, counts = str(resolve("smollm2-135m-instruct")), [int(c) for c in args.clients.split(",")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}

    def command(name: str, port: int) -> list[str]:
        if name == "llama.cpp":
            return [args.llama_server, "-m", path, "--port", str(port), "-t", "2", "-np", str(args.parallel),
                    "-c", str(args.parallel * 1024), "--no-repack"]
        return [sys.executable, "-m", "firstepoch", "serve", "smollm2-135m-instruct", "--port", str(port),
                "--context", "1024", "--queue", str(max(16, max(counts))), "--parallel", str(args.parallel)]

    print(f"clients {args.clients}, {args.seconds:.0f} s each, streaming chat, max {args.max_tokens} tokens, "
          f"bundled SmolLM2-135M-Instruct, {args.parallel} slots a server")
    results = {}
    for name in ["firstepoch"] + (["llama.cpp"] if args.llama_server else []):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(command(name, port), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            asyncio.run(phase(base, 1, 5, args.max_tokens))  # warm-up: kernels compiled and loaded
            print(name)
            for n in counts:
                results[name, n] = asyncio.run(phase(base, n, args.seconds, args.max_tokens))
                report(f"{n} client{'s' if n > 1 else ''}", results[name, n])
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    rate = {key: r["tokens"] / r["elapsed"] for key, r in results.items()}
    most, one = max(counts), min(counts)
    for name in {name for name, _ in results}:
        print(f"{name}: {most} clients' aggregate tokens/s {rate[name, most] / max(rate[name, one], 1e-9):.2f}x "
              f"{one} client's; errors {sum(len(results[name, n]['errors']) for n in counts)}")
    if ("llama.cpp", most) in rate:
        print(f"firstepoch / llama.cpp with {most} clients: {rate['firstepoch', most] / rate['llama.cpp', most]:.2f}x")


if __name__ == "__main__":
    main()
