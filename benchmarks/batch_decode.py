"""Batched decoding: N sequences decoded together, firstepoch (llm.batch) and llama.cpp (one llama_decode of a
batch of N sequences a step, as its server's parallel slots run), same GGUF file, threads and prompts.

    python benchmarks/batch_decode.py [--model FILE_OR_NAME] [--threads 2] [--batches 1,4,8,16] [--new-tokens 64]

Each side runs in its own process. Every sequence gets its own 32-token prompt (prefilled first, not timed), then
`--new-tokens` greedy tokens are decoded for all of them together; aggregate decode tokens/s is N x tokens over
the decode time. Prints both sides, the ratio (firstepoch / llama.cpp) and each side's speed-up over N = 1.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

TEXT = ("The history of the printing press begins in the fifteenth century, when movable type changed how books "
        "were made, how ideas travelled and who could read them. ")


def prompts(tokenize, n: int, length: int = 32) -> list[list[int]]:
    """n different prompts of `length` tokens: the same text, each starting a few words further on."""
    ids = tokenize(TEXT * 4)
    return [ids[i * 3:i * 3 + length] for i in range(n)]


def run_llamacpp(path: str, threads: int, n: int, new_tokens: int) -> float:
    import llama_cpp
    import numpy as np

    from llm_vs_llamacpp import load_llamacpp

    llm = load_llamacpp(path, n_ctx=64, n_threads=threads)  # the model and its tokenizer; the context is ours:
    params = llama_cpp.llama_context_default_params()  # n sequences, each its own cells of the KV cache
    params.n_ctx, params.n_batch, params.n_seq_max = n * (32 + new_tokens + 8), 512, n
    params.n_threads = params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(llm.model, params)
    vocab = llm.n_vocab()
    seqs = prompts(lambda t: llm.tokenize(t.encode(), add_bos=False), n)
    batch = llama_cpp.llama_batch_init(512, 0, n)

    def decode(rows):  # (token, position, sequence, wants logits) a row
        batch.n_tokens = len(rows)
        for i, (token, pos, seq, logits) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0] = token, pos, 1, seq
            batch.logits[i] = logits
        assert llama_cpp.llama_decode(ctx, batch) == 0

    def argmax(i: int) -> int:
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), (vocab,))))

    decode([(t, p, s, p == len(seq) - 1) for s, seq in enumerate(seqs) for p, t in enumerate(seq)])
    tokens = [argmax(int(i)) for i in np.cumsum([len(s) for s in seqs]) - 1]
    start = time.perf_counter()
    for step in range(new_tokens):
        decode([(tokens[s], len(seqs[s]) + step, s, True) for s in range(n)])
        tokens = [argmax(s) for s in range(n)]
    elapsed = time.perf_counter() - start
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    return n * new_tokens / elapsed


def run_firstepoch(path: str, threads: int, n: int, new_tokens: int) -> float:
    import torch

    import firstepoch.llm

    torch.set_num_threads(threads)
    lm = firstepoch.llm.load(path, context=32 + new_tokens + 8)
    model = lm.model
    seqs = prompts(lambda t: lm.tokenizer.encode(t, add_bos=False), n)
    model.setup_cache(batch=n, max_len=32 + new_tokens + 8)
    with torch.no_grad():
        rows = [(t, p, s, False) for s, seq in enumerate(seqs) for p, t in enumerate(seq)]
        last = torch.tensor([len(s) for s in seqs]).cumsum(0) - 1
        logits = model.forward_rows(*map(list, zip(*rows)), last.tolist())
        tokens = logits.argmax(-1).tolist()
        start = time.perf_counter()
        for step in range(new_tokens):
            logits = model.forward_rows(tokens, [len(s) + step for s in seqs], list(range(n)), [True] * n,
                                        list(range(n)))
            tokens = logits.argmax(-1).tolist()
        elapsed = time.perf_counter() - start
    model.clear_cache()
    return n * new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a GGUF file or a bundled model's name")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,4,8,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        fn = run_llamacpp if args.side == "llama.cpp" else run_firstepoch
        print(json.dumps(fn(args.model, args.threads, args.n, args.new_tokens)))
        return
    from firstepoch.llm.models import resolve

    path = str(resolve(args.model))
    print(f"model {path}, {args.threads} threads, 32-token prompts, {args.new_tokens} greedy tokens each")
    print(f"{'sequences':>9} {'llama.cpp tok/s':>16} {'firstepoch tok/s':>17} {'ratio':>7} {'speed-up over 1':>22}")
    base = {}
    for n in map(int, args.batches.split(",")):
        speeds = {}
        for side in ("llama.cpp", "firstepoch"):
            out = subprocess.run([sys.executable, __file__, "--model", path, "--side", side, "--n", str(n),
                                  "--threads", str(args.threads), "--new-tokens", str(args.new_tokens)],
                                 capture_output=True, text=True, check=True).stdout
            speeds[side] = json.loads(out.strip().splitlines()[-1])
            base.setdefault(side, speeds[side])
        a, b = speeds["llama.cpp"], speeds["firstepoch"]
        ups = f"{a / base['llama.cpp']:.2f}x / {b / base['firstepoch']:.2f}x"
        print(f"{n:>9} {a:>16.1f} {b:>17.1f} {b / a:>6.2f}x {ups:>22}")


if __name__ == "__main__":
    main()
