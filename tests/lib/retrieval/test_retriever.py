"""The retriever: encoder pinning, weighted RRF, and what each search mode returns."""

from __future__ import annotations

from pathlib import Path

import faiss
import pytest
import torch
from ranx import Run, fuse

from tasks.lib.retrieval.embedding_cache import EmbeddingCache
from tasks.lib.retrieval.encoder import Embedder, encoder_fingerprint, load_encoder
from tasks.lib.retrieval.index_store import build_index
from tasks.lib.retrieval.retriever import EncoderMismatchError, Fusion, Hit, Retriever, weighted_rrf
from tests.support.retrieval import build_tiny_index, tiny_docs, tiny_index_params

FUSION = Fusion(rrf_k=60, dense_weight=0.7, bm25_weight=0.3, candidates=10)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, tiny_encoders) -> Path:
    return build_tiny_index(tiny_encoders[0], tmp_path_factory.mktemp("index") / "index")


@pytest.fixture(scope="module")
def retriever(index_dir: Path) -> Retriever:
    return Retriever.load(index_dir, FUSION, precision="fp32")


def test_loading_with_another_encoder_is_refused_naming_both_fingerprints(
    index_dir, tiny_encoders
) -> None:
    built_with = encoder_fingerprint(load_encoder(str(tiny_encoders[0]), Path()))
    other = encoder_fingerprint(load_encoder(str(tiny_encoders[1]), Path()))
    with pytest.raises(EncoderMismatchError) as refused:
        Retriever.load(index_dir, FUSION, encoder=str(tiny_encoders[1]), precision="fp32")
    assert built_with in str(refused.value) and other in str(refused.value)


def test_loading_with_the_same_weights_elsewhere_is_accepted(index_dir, tiny_encoders) -> None:
    model = load_encoder(str(tiny_encoders[0]), Path())
    loaded = Retriever.load(index_dir, FUSION, encoder=model, precision="fp32")
    assert loaded.search("rings", k=1, mode="dense")


def test_weighted_rrf_on_a_hand_made_case() -> None:
    dense, bm25 = ["a", "b", "c"], ["c", "d", "a"]
    # rrf_k 1: a = .7/2 + .3/4 = .425, b = .7/3 = .233, c = .7/4 + .3/2 = .325, d = .3/3 = .1
    fused = weighted_rrf([dense, bm25], [0.7, 0.3], rrf_k=1)
    assert [doc for doc, _ in fused] == ["a", "c", "b", "d"]
    assert [score for _, score in fused] == pytest.approx([0.425, 0.325, 0.7 / 3, 0.1])
    # shifting weight to BM25 reorders: c = .2/4 + .8/2 = .45, a = .3, d = .267, b = .067
    assert [doc for doc, _ in weighted_rrf([dense, bm25], [0.2, 0.8], rrf_k=1)] == [
        "c",
        "a",
        "d",
        "b",
    ]


def test_equal_weight_rrf_agrees_with_ranx() -> None:
    dense, bm25 = ["a", "b", "c", "e"], ["c", "d", "a", "f"]
    ours = dict(weighted_rrf([dense, bm25], [1.0, 1.0], rrf_k=60))
    runs = [Run({"q": {doc: float(len(r) - i) for i, doc in enumerate(r)}}) for r in (dense, bm25)]
    theirs = fuse(runs, method="rrf", params={"k": 60}, norm=None).to_dict()["q"]
    assert ours == pytest.approx(theirs)


def test_dense_search_finds_a_doc_from_its_own_text(retriever: Retriever) -> None:
    docs = tiny_docs()
    queries = [f"{d.title}\n{d.text}" for d in docs]  # the indexed passage text
    top = [hits[0].id for hits in retriever.search(queries, k=1, mode="dense")]
    assert top == [d.id for d in docs]


def test_bm25_search_matches_words(retriever: Retriever) -> None:
    hits = retriever.search("rennet curdling", k=3, mode="bm25")
    assert [h.id for h in hits] == ["cheese"]  # docs sharing no word are not returned
    assert retriever.search("the of and is", k=3, mode="bm25") == []  # stopwords only


def test_hits_carry_id_title_text_and_descending_scores(retriever: Retriever) -> None:
    single = retriever.search("Which planet has bright rings?", k=5, mode="hybrid")
    batch = retriever.search(["Which planet has bright rings?", "rennet"], k=5, mode="hybrid")
    assert single == batch[0] and len(batch) == 2
    assert len(single) == 5 and all(isinstance(h, Hit) for h in single)
    assert single[0].id == "saturn" and single[0].title == "Saturn" and "rings" in single[0].text
    assert [h.score for h in single] == sorted((h.score for h in single), reverse=True)


def test_fusion_weights_steer_hybrid(retriever: Retriever) -> None:
    query = "a ship with a lamp on dangerous coasts"
    dense = [h.id for h in retriever.search(query, k=5, mode="dense")]
    bm25 = [h.id for h in retriever.search(query, k=5, mode="bm25")]
    only_dense = Fusion(rrf_k=60, dense_weight=1, bm25_weight=0, candidates=10)
    only_bm25 = Fusion(rrf_k=60, dense_weight=0, bm25_weight=1, candidates=10)
    assert [h.id for h in retriever.search(query, k=5, mode="hybrid", fusion=only_dense)] == dense
    assert [
        h.id for h in retriever.search(query, k=len(bm25), mode="hybrid", fusion=only_bm25)
    ] == bm25


def test_unknown_mode_is_an_error(retriever: Retriever) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        retriever.search("x", mode="sparse")  # type: ignore[arg-type]


def test_a_single_query_leaves_the_thread_settings_as_they_were(retriever: Retriever) -> None:
    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    retriever.search("rings", k=1, mode="hybrid")  # runs on one thread inside
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == before


def test_index_docs_with_unicode_line_breaks_load_whole(tmp_path: Path, tiny_encoders) -> None:
    """The index's docs.jsonl holds them raw; a reader splitting on them would cut a doc."""
    docs = tiny_docs()
    docs[0] = docs[0].model_copy(update={"text": f"{docs[0].text}\u2028line\u2029para\u0085end"})
    model = load_encoder(str(tiny_encoders[0]), Path())
    embedder = Embedder(model, "fp32")
    with EmbeddingCache(tmp_path / "cache") as cache:
        build_index(docs, embedder, "tiny", cache, tiny_index_params(), tmp_path / "index", False)
    loaded = Retriever.load(tmp_path / "index", FUSION, encoder=model, precision="fp32").docs
    assert [d["text"] for d in loaded] == [d.text for d in docs]
