"""A GGUF LLM run by firstepoch and by llama.cpp (llama-cpp-python): same file, threads and prompts, one run.

    python benchmarks/llm_vs_llamacpp.py [--model FILE_OR_NAME] [--threads 2] [--prompt-tokens 128]
                                         [--new-tokens 128] [--llamacpp-repack]

The model defaults to the bundled SmolLM2-135M-Instruct (Q4_1); any GGUF file or bundled name (gemma3-270m)
works. Each side runs in its own process, so peak RSS (VmHWM) is that side's alone. Prefill: one prompt of
`--prompt-tokens` tokens, in one pass. Decode: `--new-tokens` greedy tokens after it, from the KV cache. The
sides take turns for `--rounds` rounds of `--repeats` runs each; the best of all is reported.
Prints tokens/s for both, the ratios (firstepoch / llama.cpp; above 1 is faster), peak RSS, and decode's
effective memory bandwidth (the bytes of weights one token reads, times tokens/s) beside the machine's plain
read bandwidth (a sum over a 1 GiB array, best of 5).
llama.cpp runs without its repacked weight layouts unless `--llamacpp-repack`: on Intel Xeons with AMX,
llama-cpp-python 0.3.36's AMX repacking segfaults on the first decode.
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

TEXT = ("The history of the printing press begins in the fifteenth century, when movable type changed how "
        "books were made, how ideas travelled and who could read them. Before it, scribes copied every page "
        "by hand, and a single book could take months. ") * 20


def load_llamacpp(path: str, repack: bool = False, **kwargs):
    """llama-cpp-python's Llama for `path`, its repacked weight layouts on only if `repack` (see above)."""
    import llama_cpp
    from llama_cpp import Llama

    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = repack
        return p

    llama_cpp.llama_cpp.llama_model_default_params = params  # Llama() has no argument for it
    return Llama(path, verbose=False, **kwargs)


def run_llamacpp(path: str, threads: int, prompt_tokens: int, new_tokens: int, repeats: int,
                 repack: bool = False) -> dict:
    llm = load_llamacpp(path, repack, n_ctx=prompt_tokens + new_tokens + 8, n_threads=threads,
                        n_threads_batch=threads, n_batch=512)
    ids = llm.tokenize(TEXT.encode(), add_bos=False)[:prompt_tokens]
    best = {"prefill": 0.0, "decode": 0.0}
    for _ in range(repeats):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = int(llm.scores[llm.n_tokens - 1].argmax())
            llm.eval([token])
        decode = time.perf_counter() - start
        best["prefill"] = max(best["prefill"], len(ids) / prefill)
        best["decode"] = max(best["decode"], new_tokens / decode)
    return best


def run_firstepoch(path: str, threads: int, prompt_tokens: int, new_tokens: int, repeats: int) -> dict:
    import torch

    import firstepoch.llm
    from firstepoch.llm.generate import sample_tokens

    torch.set_num_threads(threads)
    lm = firstepoch.llm.load(path, context=prompt_tokens + new_tokens + 8)
    ids = lm.tokenizer.encode(TEXT, add_bos=False)[:prompt_tokens]
    best = {"prefill": 0.0, "decode": 0.0}
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = sample_tokens(lm.model, ids, new_tokens + 2, temperature=0, context_shift=False)
        next(tokens)  # prefill, and the first token
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        count = sum(1 for _ in itertools.islice(tokens, new_tokens))  # a decode step each, as llama.cpp's loop
        decode = time.perf_counter() - start
        tokens.close()
        best["prefill"] = max(best["prefill"], len(ids) / prefill)
        best["decode"] = max(best["decode"], count / decode)
    return best


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, the high-water mark of its own address space. (ru_maxrss
    would not do: Linux carries the parent's RSS at fork over an exec into the child's figure.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def read_bandwidth_gb_s() -> float:
    """The machine's plain read bandwidth: numpy summing a 1 GiB array (far past the caches), best of 5."""
    import numpy as np

    data = np.ones(1 << 28, dtype=np.float32)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        best = max(best, data.nbytes / (time.perf_counter() - start) / 1e9)
    return best


def weight_bytes_per_token(path: str) -> int:
    """Bytes of weights one decode step reads: every tensor of the file but the embedding table, which it reads
    one row of (unless the output layer is tied to it, then all of it)."""
    from firstepoch.llm.gguf import read_gguf

    g = read_gguf(path)
    tied = "output.weight" not in g.tensors
    return sum(int(t.n_bytes) for name, t in g.tensors.items() if name != "token_embd.weight" or tied)


def side(args) -> None:
    fn = {"llama.cpp": run_llamacpp, "firstepoch": run_firstepoch}[args.side]
    extra = {"repack": args.llamacpp_repack} if args.side == "llama.cpp" else {}
    result = fn(args.model, args.threads, args.prompt_tokens, args.new_tokens, args.repeats, **extra)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None, help="the same as --model")
    parser.add_argument("--model", dest="model_option", default=None, help="a GGUF file or a bundled model's name")
    parser.add_argument("--llamacpp-repack", action="store_true", help="let llama.cpp repack weights (AMX, ...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python", default=sys.executable,
                        help="the Python that runs firstepoch's side, e.g. a venv with the CPU build of PyTorch, "
                             "whose import takes far less memory than the CUDA build's")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return side(args)
    from firstepoch.llm.models import resolve

    args.model = str(resolve(args.model_option or args.model))
    size_mb = Path(args.model).stat().st_size / 2**20
    results = {}
    for _ in range(args.rounds):  # the two sides take turns, so a slow spell of the machine hits both
        for name in ("llama.cpp", "firstepoch"):
            python = args.python if name == "firstepoch" else sys.executable
            command = [python, __file__, args.model, "--side", name, "--threads", str(args.threads),
                       "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                       "--repeats", str(args.repeats)] + (["--llamacpp-repack"] if args.llamacpp_repack else [])
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            new = json.loads(out.strip().splitlines()[-1])
            old = results.setdefault(name, new)
            results[name] = {key: max(old[key], new[key]) if key != "peak_rss_mb" else new[key] for key in new}
    a, b = results["llama.cpp"], results["firstepoch"]
    print(f"model {args.model} ({size_mb:.0f} MiB), {args.threads} threads, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, best of {args.rounds} rounds x {args.repeats}")
    print(f"{'':12} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak RSS MB':>12}")
    for name, r in results.items():
        print(f"{name:12} {r['prefill']:14.1f} {r['decode']:13.1f} {r['peak_rss_mb']:12.0f}")
    print(f"{'ratio':12} {b['prefill'] / a['prefill']:13.2f}x {b['decode'] / a['decode']:12.2f}x "
          f"{b['peak_rss_mb'] / a['peak_rss_mb']:11.2f}x   (firstepoch / llama.cpp)")
    print(f"firstepoch peak RSS - GGUF size: {b['peak_rss_mb'] - size_mb:.0f} MB (target: at most 300)")
    per_token = weight_bytes_per_token(args.model)
    print(f"decode reads {per_token / 1e6:.0f} MB of weights a token: {a['decode'] * per_token / 1e9:.1f} GB/s "
          f"(llama.cpp), {b['decode'] * per_token / 1e9:.1f} GB/s (firstepoch); plain read bandwidth of this "
          f"machine {read_bandwidth_gb_s():.1f} GB/s")


if __name__ == "__main__":
    main()
