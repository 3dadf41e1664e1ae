"""Retrieval benchmark on the project's data, printing its figures:

(a) embedding throughput of the index stage's path (normalize, hash, cache lookup, one encode
    call per batch, cache writes) against one plain encode of the same texts in the same
    process and number format (`precision.encode`), and their ratio;
(b) p50 / p95 latency of one query at k=10 for each mode, query embedding included, on the
    built index (`paths.index_dir`) with the dev and test questions.

    .venv/bin/python bench/bench_retrieval.py [--docs 2000] [--repeats 2] [--params params.yaml]

The machine's other load moves absolute numbers a lot; the ratio in (a) is measured
back-to-back, alternating the two, so it is the figure to trust.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tasks.lib.core.config import RETRIEVAL_MODES, load_params
from tasks.lib.core.records import SPLITS, read_docs, read_qa
from tasks.lib.retrieval.embedding_cache import EmbeddingCache, embed_with_cache
from tasks.lib.retrieval.encoder import Embedder, encode_precision, load_encoder
from tasks.lib.retrieval.index_store import passage_text
from tasks.lib.retrieval.retriever import Retriever, load_fusion


def bench_embedding(params_file: Path, n_docs: int, repeats: int) -> None:
    params = load_params(params_file)
    torch.set_num_threads(params.index.threads or torch.get_num_threads())
    docs = read_docs(params.paths.retrieval_docs)
    if 0 < n_docs < len(docs):
        docs = random.Random(0).sample(docs, n_docs)
    texts = [passage_text(doc, params.index.include_title) for doc in docs]
    model = load_encoder(params.index.encoder, params.project_dir)
    embedder = Embedder(model, encode_precision(params))
    batch_size = params.index.batch_size
    embedder.documents(texts[:batch_size], batch_size)  # warm-up

    stage, plain = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as empty, EmbeddingCache(Path(empty)) as cache:
            started = time.perf_counter()
            embed_with_cache(texts, embedder, cache, batch_size, progress=False)
            stage.append(len(texts) / (time.perf_counter() - started))
        started = time.perf_counter()
        embedder.documents(texts, batch_size)
        plain.append(len(texts) / (time.perf_counter() - started))
        print(f"  run: index stage {stage[-1]:.1f} docs/s, plain encode {plain[-1]:.1f} docs/s")
    s, p = statistics.median(stage), statistics.median(plain)
    print(
        f"(a) embedding {len(texts)} docs in {embedder.precision}, batch {batch_size}, "
        f"{torch.get_num_threads()} threads: "
        f"index stage {s:.1f} docs/s, plain encode {p:.1f} docs/s, "
        f"ratio {s / p:.3f} (median of {repeats})"
    )


def bench_latency(params_file: Path, k: int, warmup: int) -> None:
    params = load_params(params_file)
    fusion, source = load_fusion(params)
    retriever = Retriever.load(
        params.paths.index_dir, fusion, base=params.project_dir, precision=encode_precision(params)
    )
    qa_dir = params.paths.retrieval_qa_dir
    questions = [r.question for s in SPLITS if s != "train" for r in read_qa(qa_dir / f"{s}.jsonl")]
    print(
        f"(b) one query at a time, k={k}, {len(questions)} dev+test questions, "
        f"{retriever.manifest['faiss']['type']} faiss over {len(retriever.docs)} docs; "
        f"hybrid: {fusion.candidates} candidates a side ({source})"
    )
    for mode in RETRIEVAL_MODES:
        for question in questions[:warmup]:
            retriever.search(question, k=k, mode=mode)
        times = []
        for question in questions:
            started = time.perf_counter()
            retriever.search(question, k=k, mode=mode)
            times.append((time.perf_counter() - started) * 1000)
        p50, p95 = np.percentile(times, [50, 95])
        print(f"  {mode:6s}  p50 {p50:6.1f} ms   p95 {p95:6.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--docs", type=int, default=2000, help="docs to embed in (a); 0: all")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs in (a)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10, help="untimed queries per mode")
    parser.add_argument("--skip-embedding", action="store_true", help="only (b)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if not args.skip_embedding:
        bench_embedding(args.params, args.docs, args.repeats)
    bench_latency(args.params, args.k, args.warmup)
    print(f"load average {os.getloadavg()[0]:.1f}")
