"""Encoding precision: what `precision.encode` resolves to, and that bf16 and int8 embeddings of
a real (tiny) encoder stay close enough to fp32 to rank a hand-made KB alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from tasks.lib.core.precision import CPU_BF16_ENV, resolve_precision
from tasks.lib.retrieval.embedding_cache import EmbeddingCache
from tasks.lib.retrieval.encoder import Embedder, encoder_fingerprint, load_encoder
from tasks.lib.retrieval.index_store import build_index
from tasks.lib.retrieval.retriever import Fusion, Retriever
from tests.support.retrieval import QUESTIONS, TOPICS, tiny_docs, tiny_index_params

LOW = ["bf16", "int8"]
# bf16 keeps 8 significant bits and int8 rounds to 1/127 of each tensor's range: errors of about
# a percent per coordinate at most, which costs a unit vector under 0.01 of cosine. An error
# past that would no longer be rounding but a broken format (wrong dtype, wrong weights).
MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def model(tiny_encoders: tuple[Path, Path]) -> SentenceTransformer:
    return load_encoder(str(tiny_encoders[0]), Path())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_without_bf16_units_auto_is_fp32_and_bf16_falls_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert resolve_precision("auto", "encode") == "fp32"
    assert resolve_precision("bf16", "encode") == "fp32"
    assert "encode asks for bf16" in capsys.readouterr().err
    assert resolve_precision("int8", "encode") == "int8"  # int8 needs no bf16 units
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert resolve_precision("auto", "encode") == "bf16"


@pytest.mark.parametrize("precision", LOW)
def test_low_precision_embeddings_are_close_to_fp32_yet_not_identical(
    model: SentenceTransformer, precision: str
) -> None:
    texts, queries = [text for _, text in TOPICS], [question for question, _ in QUESTIONS]
    fp32, low = Embedder(model, "fp32"), Embedder(model, precision)
    for reference, got in (
        (fp32.documents(texts, 8), low.documents(texts, 8)),
        (fp32.queries(queries), low.queries(queries)),
    ):
        assert got.dtype == np.float32
        assert cosines(reference, got).min() > MIN_COSINE
        assert not np.array_equal(reference, got)  # the format took effect


def test_int8_encodes_with_a_copy_and_the_model_keeps_its_fp32_fingerprint(
    model: SentenceTransformer,
) -> None:
    before = encoder_fingerprint(model)
    int8 = Embedder(model, "int8")
    int8.documents(["A glacier is a slow river of ice."], 1)
    assert int8.fingerprint == encoder_fingerprint(model) == before
    assert not any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())
    assert len({Embedder(model, p).cache_key for p in ("fp32", "bf16", "int8")}) == 3


@pytest.mark.parametrize("precision", LOW)
def test_low_precision_ranks_the_tiny_kb_as_fp32_does(
    model: SentenceTransformer, tmp_path: Path, precision: str
) -> None:
    """Docs and queries both in the format, as the stages build and search an index; the
    queries are the tiny QA questions and each doc's own text."""
    queries = [question for question, _ in QUESTIONS] + [text for _, text in TOPICS]
    top1 = {}
    for fmt in ("fp32", precision):
        with EmbeddingCache(tmp_path / "cache") as cache:
            embedder = Embedder(model, fmt)
            build_index(tiny_docs(), embedder, "tiny", cache, tiny_index_params(), tmp_path / fmt)
        retriever = Retriever.load(
            tmp_path / fmt, Fusion(60, 0.5, 0.5, 10), encoder=model, precision=fmt
        )
        top1[fmt] = [hits[0].id for hits in retriever.search(queries, k=1, mode="dense")]
    assert top1[precision] == top1["fp32"]
