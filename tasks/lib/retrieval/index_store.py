"""The index folder: what it holds, how it is built, and the pieces a `Retriever` reuses to read it.

  faiss.index    dense index over L2-normalized passage vectors (inner product = cosine)
  bm25/          bm25s index over the same passages
  docs.jsonl     id, title, text of each doc, in index order (faiss row i = line i)
  manifest.json  encoder id + fingerprint + the format docs were embedded in, dimension, doc
                 count, KB content hash, index params

Embeddings come through the persistent `EmbeddingCache`, so after a KB update only new or
changed passages are encoded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import bm25s
import faiss
import numpy as np

from tasks.lib.core.config import Bm25Params, FaissParams, IndexParams
from tasks.lib.core.io import InputError, write_json, write_jsonl
from tasks.lib.core.records import Doc
from tasks.lib.retrieval.embedding_cache import EmbeddingCache, EmbedStats, embed_with_cache
from tasks.lib.retrieval.encoder import Embedder

MANIFEST_FILE = "manifest.json"
FAISS_FILE = "faiss.index"
BM25_DIR = "bm25"
DOCS_FILE = "docs.jsonl"


def passage_text(doc: Doc, include_title: bool) -> str:
    """What both indexes see of a doc. The title carries the entity most questions name."""
    return f"{doc.title}\n{doc.text}" if include_title else doc.text


def kb_content_hash(docs: list[Doc]) -> str:
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
    embedder: Embedder,
    encoder_id: str,
    cache: EmbeddingCache,
    params: IndexParams,
    out_dir: Path,
    progress: bool = True,
) -> tuple[dict[str, Any], EmbedStats]:
    """Embed (through the cache), build both indexes into `out_dir`, return the manifest."""
    passages = [passage_text(doc, params.include_title) for doc in docs]
    vectors, stats = embed_with_cache(passages, embedder, cache, params.batch_size, progress)
    faiss.normalize_L2(vectors)

    out_dir.mkdir(parents=True, exist_ok=True)
    faiss.write_index(build_faiss(vectors, params.faiss), str(out_dir / FAISS_FILE))
    build_bm25(passages, params.bm25).save(str(out_dir / BM25_DIR), show_progress=False)
    write_jsonl(out_dir / DOCS_FILE, ({"id": d.id, "title": d.title, "text": d.text} for d in docs))
    manifest = {
        "encoder": {
            "id": encoder_id,
            "fingerprint": embedder.fingerprint,
            "precision": embedder.precision,
            "dimension": int(vectors.shape[1]),
            "max_seq_length": embedder.model.max_seq_length,
        },
        "kb": {"doc_count": len(docs), "fingerprint": kb_content_hash(docs)},
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
