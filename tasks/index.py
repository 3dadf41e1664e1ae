"""Stage `index`: embed the KB with one encoder and build its dense and BM25 indexes.

The output folder holds everything a `Retriever` needs and nothing else (see
`tasks.lib.retrieval.index_store`). The stage runs once per encoder: the defaults in
`params.yaml` build the base index, and `--encoder`/`--out` build another one (e.g. for a
fine-tuned encoder).

    python -m tasks.index [--encoder NAME_OR_PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from tasks.lib.core.config import load_params
from tasks.lib.core.io import atomic_path, run_stage
from tasks.lib.core.records import read_docs
from tasks.lib.core.tracking import run_name, stage_run
from tasks.lib.retrieval.embedding_cache import EmbeddingCache
from tasks.lib.retrieval.encoder import Embedder, encode_precision, load_encoder
from tasks.lib.retrieval.index_store import build_index


def main(
    params_file: Path = Path("params.yaml"), encoder: str | None = None, out: Path | None = None
) -> None:
    params = load_params(params_file)
    torch.set_num_threads(params.index.threads or os.cpu_count() or 1)
    encoder_id = encoder or params.index.encoder
    out_dir = out if out is not None else params.paths.index_dir
    with stage_run(run_name("index", out), params) as run:
        docs = read_docs(params.paths.retrieval_docs)
        embedder = Embedder(load_encoder(encoder_id, params.project_dir), encode_precision(params))

        started = time.perf_counter()
        with (
            EmbeddingCache(params.paths.embedding_cache) as cache,
            atomic_path(out_dir) as tmp,
        ):
            manifest, stats = build_index(docs, embedder, encoder_id, cache, params.index, tmp)
            run.log_metrics(
                {
                    "docs": len(docs),
                    "embedded": stats.embedded,
                    "cached": stats.cached,
                    "docs_per_second": stats.docs_per_second,
                }
            )
            run.set_tags(
                {
                    "encoder_fingerprint": manifest["encoder"]["fingerprint"],
                    "precision.encode": embedder.precision,
                }
            )
            # `--encoder` overrides `index.encoder`: the params name what this index embeds with.
            run.log_params({"encoder": encoder_id, "precision.encode": embedder.precision})
    total = time.perf_counter() - started
    pinned = manifest["encoder"]

    print(
        f"index: {len(docs)} docs, {stats.embedded} embedded, {stats.cached} from the cache "
        f"({stats.docs_per_second:.1f} docs/s embedding in {embedder.precision}, "
        f"{stats.seconds:.1f} s)"
    )
    print(
        f"index: {manifest['faiss']['type']} faiss + bm25 in {out_dir} ({total:.1f} s in all); "
        f"encoder {encoder_id} {pinned['fingerprint'][:12]}, dim {pinned['dimension']}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--encoder", help="encoder name or path (default: index.encoder in params)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: paths.index_dir in params)"
    )
    args = parser.parse_args()
    run_stage(lambda: main(args.params, args.encoder, args.out))
