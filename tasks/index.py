"""Stage `index`: embed the KB with one encoder and build its dense and BM25 indexes.

The output folder holds everything a `Retriever` needs and nothing else:
  faiss.index    dense index over L2-normalized passage vectors (inner product = cosine)
  bm25/          bm25s index over the same passages
  docs.jsonl     id, title, text of each doc, in index order (faiss row i = line i)
  manifest.json  encoder id + fingerprint, dimension, doc count, KB fingerprint, index params

Embeddings come through the persistent `EmbeddingCache`, so after a KB update only new or
changed passages are encoded. The stage runs once per encoder: the defaults in `params.yaml`
build the base index, and `--encoder`/`--out` build another one (e.g. for a fine-tuned encoder).

    python -m tasks.index [--encoder NAME_OR_PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import bm25s
import faiss
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from tasks.embedding_cache import EmbeddingCache, EmbedStats, embed_with_cache
from tasks.encoder import encoder_fingerprint, load_encoder
from tasks.io import InputError, atomic_path, run_stage, write_json, write_jsonl
from tasks.params import Bm25Params, FaissParams, IndexParams, load_params, resolve
from tasks.records import Doc, read_docs
from tasks.tracking import run_name, stage_run

MANIFEST_FILE = "manifest.json"
FAISS_FILE = "faiss.index"
BM25_DIR = "bm25"
DOCS_FILE = "docs.jsonl"


def passage_text(doc: Doc, include_title: bool) -> str:
    """What both indexes see of a doc. The title carries the entity most questions name."""
    return f"{doc.title}\n{doc.text}" if include_title else doc.text


def kb_fingerprint(docs: list[Doc]) -> str:
    """sha256 of the (id, title, text) of every doc, in id order: what retrieval depends on."""
    digest = hashlib.sha256()
    for doc in sorted(docs, key=lambda d: d.id):
        digest.update(
            json.dumps([doc.id, doc.title, doc.text], ensure_ascii=False).encode() + b"\n"
        )
    return digest.hexdigest()


def bm25_tokenize(texts: list[str], stopwords: str | None) -> list[list[str]]:
    """bm25s's default analyzer (lower-case, 2+ letter words) minus stopwords, no stemming."""
    return bm25s.tokenize(texts, stopwords=stopwords or [], return_ids=False, show_progress=False)


def build_bm25(passages: list[str], params: Bm25Params) -> bm25s.BM25:
    index = bm25s.BM25(method=params.method, k1=params.k1, b=params.b)
    index.index(bm25_tokenize(passages, params.stopwords), show_progress=False)
    return index


def build_faiss(vectors: np.ndarray, params: FaissParams) -> faiss.Index:
    """The dense index of params.type over `vectors`, which must already be L2-normalized."""
    n, dim = vectors.shape
    if params.type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif params.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.hnsw_ef_construction
    else:
        if dim % params.pq_m:
            raise InputError(f"index.faiss.pq_m: {params.pq_m} does not divide the dimension {dim}")
        needed = max(params.ivf_nlist, 2**params.pq_nbits)
        if n < needed:
            raise InputError(
                f"index.faiss: IVF-PQ needs at least {needed} docs to train "
                f"(ivf_nlist={params.ivf_nlist}, 2**pq_nbits={2**params.pq_nbits}); the KB has {n}"
            )
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(
            quantizer,
            dim,
            params.ivf_nlist,
            params.pq_m,
            params.pq_nbits,
            faiss.METRIC_INNER_PRODUCT,
        )
        index.train(vectors)
    index.add(vectors)
    apply_search_params(index, params)
    return index


def apply_search_params(index: faiss.Index, params: FaissParams) -> None:
    """Search-time knobs are not saved in the faiss file; the manifest carries them."""
    if params.type == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = params.hnsw_ef_search
    elif params.type == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = params.ivf_nprobe


def build_index(
    docs: list[Doc],
    model: SentenceTransformer,
    encoder_id: str,
    cache: EmbeddingCache,
    params: IndexParams,
    out_dir: Path,
    progress: bool = True,
) -> tuple[dict[str, Any], EmbedStats]:
    """Embed (through the cache), build both indexes into `out_dir`, return the manifest."""
    fingerprint = encoder_fingerprint(model)
    passages = [passage_text(doc, params.include_title) for doc in docs]
    vectors, stats = embed_with_cache(
        passages, model, fingerprint, cache, params.batch_size, progress
    )
    faiss.normalize_L2(vectors)

    out_dir.mkdir(parents=True, exist_ok=True)
    faiss.write_index(build_faiss(vectors, params.faiss), str(out_dir / FAISS_FILE))
    build_bm25(passages, params.bm25).save(str(out_dir / BM25_DIR), show_progress=False)
    write_jsonl(out_dir / DOCS_FILE, ({"id": d.id, "title": d.title, "text": d.text} for d in docs))
    manifest = {
        "encoder": {
            "id": encoder_id,
            "fingerprint": fingerprint,
            "dimension": int(vectors.shape[1]),
            "max_seq_length": model.max_seq_length,
        },
        "kb": {"doc_count": len(docs), "fingerprint": kb_fingerprint(docs)},
        "passages": {"include_title": params.include_title},
        "faiss": params.faiss.model_dump(mode="json"),
        "bm25": params.bm25.model_dump(mode="json"),
        "build": {
            "embedded": stats.embedded,
            "cached": stats.cached,
            "embed_seconds": round(stats.seconds, 2),
            "docs_per_second": round(stats.docs_per_second, 1),
        },
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest, stats


def main(
    params_file: Path = Path("params.yaml"), encoder: str | None = None, out: Path | None = None
) -> None:
    params = load_params(params_file)
    torch.set_num_threads(params.index.threads or os.cpu_count() or 1)
    encoder_id = encoder or params.index.encoder
    out_dir = out if out is not None else resolve(params_file, params.paths.index_dir)
    docs = read_docs(resolve(params_file, params.paths.retrieval_docs))
    model = load_encoder(encoder_id, params_file.parent)

    started = time.perf_counter()
    with (
        stage_run(run_name("index", out), params_file) as run,
        EmbeddingCache(resolve(params_file, params.paths.embedding_cache)) as cache,
        atomic_path(out_dir) as tmp,
    ):
        manifest, stats = build_index(docs, model, encoder_id, cache, params.index, tmp)
        run.log_metrics(
            {
                "docs": len(docs),
                "embedded": stats.embedded,
                "cached": stats.cached,
                "docs_per_second": stats.docs_per_second,
            }
        )
        run.set_tags({"encoder_fingerprint": manifest["encoder"]["fingerprint"]})
    total = time.perf_counter() - started
    pinned = manifest["encoder"]

    print(
        f"index: {len(docs)} docs, {stats.embedded} embedded, {stats.cached} from the cache "
        f"({stats.docs_per_second:.1f} docs/s embedding, {stats.seconds:.1f} s)"
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
