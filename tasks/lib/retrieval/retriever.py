"""The retriever every later stage and the CLI use: dense, BM25 or hybrid search over an index
folder written by the `index` stage.

    retriever = Retriever.from_params(load_params(Path("params.yaml")))
    hits = retriever.search("Who painted the Mona Lisa?", k=5, mode="hybrid")

Hybrid search is weighted reciprocal rank fusion: each side retrieves `candidates` docs, and a
doc scores sum_side weight_side / (rrf_k + rank_side). It is written out here rather than taken
from ranx: ranx's `rrf` has no per-run weights (its weighted methods fuse scores, not ranks),
and it works on whole `Run`s through numba, which costs more than the fusion itself for one query.
`tests/test_retriever.py` checks this against ranx's `rrf` at equal weights.

An index can never be searched with an encoder other than the one that built it: `load`
compares the encoder's fingerprint with the manifest's and refuses a mismatch. Queries are
embedded in the format the caller resolved (`precision.encode`, or a bundle's own setting),
which may differ from the one the docs were embedded in (the manifest's `precision`): the
formats' vectors are close enough to share an index. Loaded with `dense=False` it searches
BM25 only and loads neither the encoder nor the vectors (`ragloop search --mode bm25`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import bm25s
import faiss
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from tasks.lib.core.config import (
    RETRIEVAL_MODES,
    FaissParams,
    Params,
    RetrievalMode,
    RetrievalParams,
)
from tasks.lib.core.io import InputError, json_lines, read_text
from tasks.lib.core.precision import Precision
from tasks.lib.retrieval.encoder import Embedder, encode_precision, load_encoder
from tasks.lib.retrieval.index_store import (
    BM25_DIR,
    DOCS_FILE,
    FAISS_FILE,
    MANIFEST_FILE,
    apply_search_params,
    bm25_tokenize,
)

FUSION_FILE = "fusion.json"  # what tune_retrieval writes in --out: paths.fusion, fusion_tuned
Ranking = list[tuple[int, float]]  # (row in the index, score), best first
FEW_QUERIES = 32  # up to one encoder batch: searched on one thread (see `one_thread`)


class EncoderMismatchError(InputError):
    """The encoder offered for an index is not the one that built it."""


@dataclass(frozen=True)
class Hit:
    id: str
    title: str
    score: float
    text: str


@dataclass(frozen=True)
class Fusion:
    """Weighted RRF settings: `candidates` docs from each side, fused with these weights."""

    rrf_k: float
    dense_weight: float
    bm25_weight: float
    candidates: int

    @classmethod
    def from_params(cls, params: RetrievalParams) -> Fusion:
        return cls(params.rrf_k, params.dense_weight, params.bm25_weight, params.candidates)

    @classmethod
    def from_file(cls, path: Path) -> Fusion:
        chosen = json.loads(read_text(path))["fusion"]
        return cls(
            **{key: chosen[key] for key in ("rrf_k", "dense_weight", "bm25_weight", "candidates")}
        )


def weighted_rrf(
    rankings: Sequence[Sequence[Any]], weights: Sequence[float], rrf_k: float
) -> list[tuple[Any, float]]:
    """Fuse ranked lists of ids: score(d) = sum_i weights[i] / (rrf_k + rank_i(d)), ranks from 1.

    Ties keep the order in which ids first appear, reading the rankings in order.
    """
    scores: dict[Any, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (rrf_k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


@contextlib.contextmanager
def one_thread(active: bool = True) -> Iterator[None]:
    """Run query-time work (query encoding, faiss search) on one thread, then restore.

    A few queries are small work: one thread answers faster than two, whose OpenMP barriers
    (torch's and faiss's, in one process) stall whenever another process wants the CPU.
    Big batches (evaluation, hard-negative mining) keep the process's threads.
    """
    if not active:
        yield
        return
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


def load_fusion(params: Params) -> tuple[Fusion, str]:
    """tune_retrieval's choice when it exists, else the `retrieval` defaults; and which it was."""
    tuned = params.paths.fusion
    if tuned.exists():
        return Fusion.from_file(tuned), str(tuned)
    return Fusion.from_params(params.retrieval), "params.yaml retrieval (untuned)"


class Retriever:
    def __init__(
        self,
        embedder: Embedder | None,
        dense_index: faiss.Index | None,
        bm25_index: bm25s.BM25,
        docs: list[dict[str, str]],
        manifest: dict[str, Any],
        fusion: Fusion,
    ) -> None:
        self.embedder = embedder
        self.dense_index = dense_index
        self.bm25_index = bm25_index
        self.docs = docs
        self.manifest = manifest
        self.fusion = fusion

    @classmethod
    def load(
        cls,
        index_dir: Path,
        fusion: Fusion,
        encoder: SentenceTransformer | str | None = None,
        base: Path = Path(),
        *,
        precision: Precision,
        dense: bool = True,
    ) -> Retriever:
        """Open `index_dir` with `encoder` (a model, or a name/path resolved against `base`;
        default: the manifest's encoder id), embedding queries in `precision`. Raises
        EncoderMismatchError if its fingerprint is not the manifest's. `dense=False`: BM25
        only, no encoder loaded (nor checked)."""
        manifest_path = index_dir / MANIFEST_FILE
        if not manifest_path.exists():
            raise InputError(
                f"{index_dir}: not an index folder (no {MANIFEST_FILE}); run the index stage"
            )
        manifest = json.loads(read_text(manifest_path))
        bm25_index = bm25s.BM25.load(str(index_dir / BM25_DIR))
        docs = [doc for _, doc in json_lines(index_dir / DOCS_FILE)]
        if not dense:
            return cls(None, None, bm25_index, docs, manifest, fusion)
        pinned = manifest["encoder"]
        if encoder is None:
            encoder = pinned["id"]
        model = load_encoder(encoder, base) if isinstance(encoder, str) else encoder
        embedder = Embedder(model, precision)
        fingerprint = embedder.fingerprint
        if fingerprint != pinned["fingerprint"]:
            offered = encoder if isinstance(encoder, str) else "the given model"
            raise EncoderMismatchError(
                f"{index_dir}: built with encoder {pinned['id']!r} "
                f"(fingerprint {pinned['fingerprint']}), but {offered!r} has fingerprint "
                f"{fingerprint}: rebuild the index with this encoder "
                f"(python -m tasks.index --encoder ... --out ...) or load the one that built it"
            )
        dense_index = faiss.read_index(str(index_dir / FAISS_FILE))
        apply_search_params(dense_index, FaissParams.model_validate(manifest["faiss"]))
        return cls(embedder, dense_index, bm25_index, docs, manifest, fusion)

    @classmethod
    def from_params(cls, params: Params, index_dir: Path | None = None) -> Retriever:
        """The project's retriever: `paths.index_dir` (or `index_dir`), tuned fusion if any."""
        fusion, _ = load_fusion(params)
        folder = index_dir if index_dir is not None else params.paths.index_dir
        return cls.load(folder, fusion, base=params.project_dir, precision=encode_precision(params))

    @classmethod
    def tuned(cls, params: Params) -> Retriever:
        """The RAG system's retriever: the tuned encoder's index with the fusion re-tuned for it."""
        fusion = Fusion.from_file(params.paths.fusion_tuned)
        return cls.load(
            params.paths.index_tuned_dir,
            fusion,
            base=params.project_dir,
            precision=encode_precision(params),
        )

    def dense(self, queries: list[str], depth: int) -> list[Ranking]:
        """Top `depth` rows by cosine similarity to each query (query embedding included)."""
        if self.embedder is None or self.dense_index is None:
            raise ValueError("this retriever was loaded for BM25 only (dense=False)")
        with one_thread(active=len(queries) <= FEW_QUERIES):
            vectors = np.ascontiguousarray(self.embedder.queries(queries))
            faiss.normalize_L2(vectors)
            scores, rows = self.dense_index.search(vectors, min(depth, len(self.docs)))
        return [
            [(int(r), float(s)) for r, s in zip(row, score, strict=True) if r >= 0]
            for row, score in zip(rows, scores, strict=True)
        ]

    def bm25(self, queries: list[str], depth: int) -> list[Ranking]:
        """Top `depth` rows by BM25; docs sharing no term with the query are not returned."""
        tokens = bm25_tokenize(queries, self.manifest["bm25"]["stopwords"])
        rows, scores = self.bm25_index.retrieve(
            tokens, k=min(depth, len(self.docs)), show_progress=False
        )
        return [
            [(int(r), float(s)) for r, s in zip(row, score, strict=True) if s > 0]
            for row, score in zip(rows, scores, strict=True)
        ]

    def hybrid(self, queries: list[str], depth: int, fusion: Fusion | None = None) -> list[Ranking]:
        fusion = fusion or self.fusion
        dense = self.dense(queries, fusion.candidates)
        sparse = self.bm25(queries, fusion.candidates)
        return [fuse_rankings(d, s, fusion)[:depth] for d, s in zip(dense, sparse, strict=True)]

    def rankings(
        self, queries: list[str], depth: int, mode: RetrievalMode, fusion: Fusion | None = None
    ) -> list[Ranking]:
        if mode == "dense":
            return self.dense(queries, depth)
        if mode == "bm25":
            return self.bm25(queries, depth)
        if mode == "hybrid":
            return self.hybrid(queries, depth, fusion)
        raise ValueError(f"mode must be one of {RETRIEVAL_MODES}, got {mode!r}")

    @overload
    def search(
        self, queries: str, k: int = ..., mode: RetrievalMode = ..., fusion: Fusion | None = ...
    ) -> list[Hit]: ...
    @overload
    def search(
        self,
        queries: list[str],
        k: int = ...,
        mode: RetrievalMode = ...,
        fusion: Fusion | None = ...,
    ) -> list[list[Hit]]: ...
    def search(
        self,
        queries: str | list[str],
        k: int = 10,
        mode: RetrievalMode = "hybrid",
        fusion: Fusion | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Top-k hits (id, title, score, text) for one query, or a list of them per query."""
        batch = [queries] if isinstance(queries, str) else list(queries)
        results = [
            [
                Hit(self.docs[row]["id"], self.docs[row]["title"], score, self.docs[row]["text"])
                for row, score in ranking
            ]
            for ranking in self.rankings(batch, k, mode, fusion)
        ]
        return results[0] if isinstance(queries, str) else results


def fuse_rankings(dense: Ranking, sparse: Ranking, fusion: Fusion) -> Ranking:
    return weighted_rrf(
        [[row for row, _ in dense], [row for row, _ in sparse]],
        [fusion.dense_weight, fusion.bm25_weight],
        fusion.rrf_k,
    )


def system_rankings(
    retriever: Retriever, questions: list[str], depth: int, equal: Fusion, tuned: Fusion
) -> dict[str, list[list[str]]]:
    """Ranked doc ids per system; each side is retrieved once, deep enough for both fusions."""
    deep = max(depth, equal.candidates, tuned.candidates)
    dense, sparse = retriever.dense(questions, deep), retriever.bm25(questions, deep)
    ids = [doc["id"] for doc in retriever.docs]

    def top(rankings: list[list[tuple[int, float]]], n: int) -> list[list[str]]:
        return [[ids[row] for row, _ in ranking[:n]] for ranking in rankings]

    def fused(fusion: Fusion) -> list[list[str]]:
        cut = [
            fuse_rankings(d[: fusion.candidates], s[: fusion.candidates], fusion)
            for d, s in zip(dense, sparse, strict=True)
        ]
        return top(cut, depth)

    return {
        "bm25": top(sparse, depth),
        "dense": top(dense, depth),
        "hybrid_equal": fused(equal),
        "hybrid_tuned": fused(tuned),
    }


def round_trip_ranks(
    retriever: Retriever,
    questions: list[str],
    source_ids: list[str],
    k: int,
    mode: RetrievalMode = "dense",
) -> list[int | None]:
    """1-based rank of each question's source doc in the top-k over the whole KB (by `mode`)."""
    ranks: list[int | None] = []
    rankings = retriever.rankings(questions, k, mode) if questions else []
    for ranking, source in zip(rankings, source_ids, strict=True):
        ids = [retriever.docs[row]["id"] for row, _ in ranking]
        ranks.append(ids.index(source) + 1 if source in ids else None)
    return ranks
