"""The index stage: incremental embedding through the cache, the manifest, the faiss types."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
import yaml

from tasks import index
from tasks.lib.core.config import load_params
from tasks.lib.core.io import InputError
from tasks.lib.core.precision import CPU_BF16_ENV
from tasks.lib.retrieval.embedding_cache import EmbeddingCache
from tasks.lib.retrieval.encoder import Embedder, encoder_fingerprint, load_encoder
from tasks.lib.retrieval.index_store import FAISS_FILE, MANIFEST_FILE, build_index, kb_content_hash
from tests.support.projects import project_mlflow_client
from tests.support.retrieval import make_retrieval_project, tiny_docs, tiny_index_params


@pytest.fixture(scope="module")
def embedder(tiny_encoders: tuple[Path, Path]) -> Embedder:
    return Embedder(load_encoder(str(tiny_encoders[0]), Path()), "fp32")


def vectors_of(index_dir: Path) -> np.ndarray:
    index = faiss.read_index(str(index_dir / FAISS_FILE))
    return index.reconstruct_n(0, index.ntotal)


def test_kb_update_re_embeds_only_new_and_changed_docs(tmp_path: Path, embedder) -> None:
    params = tiny_index_params()
    docs = tiny_docs()
    with EmbeddingCache(tmp_path / "cache") as cache:
        _, first = build_index(docs, embedder, "tiny", cache, params, tmp_path / "v1", False)
        assert (first.embedded, first.cached) == (24, 0)

        updated = docs[1:]  # one doc removed
        updated[2] = updated[2].model_copy(update={"text": "A lighthouse now uses a LED lamp."})
        updated[4] = updated[4].model_copy(
            update={"text": "  " + updated[4].text.replace(" ", "\n")}
        )
        updated.append(docs[0].model_copy(update={"id": "new", "text": "A brand new passage."}))
        manifest, second = build_index(
            updated, embedder, "tiny", cache, params, tmp_path / "v2", progress=False
        )

    # the changed text and the new doc; a whitespace-only edit and the 22 others are cache hits
    assert (second.embedded, second.cached) == (2, 22)
    assert manifest["build"]["embedded"] == 2 and manifest["kb"]["doc_count"] == 24

    with EmbeddingCache(tmp_path / "fresh") as empty:
        build_index(updated, embedder, "tiny", empty, params, tmp_path / "scratch", progress=False)
    np.testing.assert_allclose(
        vectors_of(tmp_path / "v2"), vectors_of(tmp_path / "scratch"), atol=1e-6
    )


def test_the_cache_is_keyed_by_encoder(tmp_path: Path, tiny_encoders) -> None:
    params, docs = tiny_index_params(), tiny_docs()
    with EmbeddingCache(tmp_path / "cache") as cache:
        for encoder in tiny_encoders:
            embedder = Embedder(load_encoder(str(encoder), Path()), "fp32")
            _, stats = build_index(
                docs, embedder, "tiny", cache, params, tmp_path / "i", progress=False
            )
            assert (stats.embedded, stats.cached) == (24, 0)
            assert cache.count(embedder.cache_key) == 24


def test_the_cache_keeps_number_formats_apart(tmp_path: Path, embedder: Embedder) -> None:
    """A bf16 build after an fp32 one embeds again; a second bf16 build is all cache hits."""
    params, docs = tiny_index_params(), tiny_docs()
    bf16 = Embedder(embedder.model, "bf16")
    with EmbeddingCache(tmp_path / "cache") as cache:
        builds = [
            build_index(docs, e, "tiny", cache, params, tmp_path / "i", progress=False)
            for e in (embedder, bf16, bf16)
        ]
        assert cache.count(embedder.cache_key) == cache.count(bf16.cache_key) == 24
    assert [(stats.embedded, stats.cached) for _, stats in builds] == [(24, 0), (24, 0), (0, 24)]
    assert [m["encoder"]["precision"] for m, _ in builds] == ["fp32", "bf16", "bf16"]
    assert len({m["encoder"]["fingerprint"] for m, _ in builds}) == 1  # one model throughout


def test_index_stage_embeds_in_what_precision_encode_resolves_to(
    tmp_path: Path, tiny_encoders, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    params_file = make_retrieval_project(tmp_path, tiny_encoders[0])
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["precision"]["encode"] = "bf16"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    client = project_mlflow_client(params_file)
    for cpu_bf16, resolved in (("0", "fp32"), ("1", "bf16")):
        monkeypatch.setenv(CPU_BF16_ENV, cpu_bf16)
        index.main(params_file)
        manifest = json.loads((tmp_path / "index" / MANIFEST_FILE).read_text())
        assert manifest["encoder"]["precision"] == resolved
        out = capsys.readouterr().out
        assert "24 embedded, 0 from the cache" in out and f"embedding in {resolved}" in out
    experiment = client.get_experiment_by_name(load_params(params_file).tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'index'")
    assert sorted(run.data.tags["precision.encode"] for run in runs) == ["bf16", "fp32"]


def test_manifest_pins_encoder_and_kb(tmp_path: Path, embedder, tiny_encoders) -> None:
    with EmbeddingCache(tmp_path / "cache") as cache:
        build_index(
            tiny_docs(),
            embedder,
            str(tiny_encoders[0]),
            cache,
            tiny_index_params(),
            tmp_path,
            progress=False,
        )
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["encoder"] == {
        "id": str(tiny_encoders[0]),
        "fingerprint": encoder_fingerprint(embedder.model),
        "precision": "fp32",
        "dimension": 32,
        "max_seq_length": 64,
    }
    assert manifest["kb"] == {"doc_count": 24, "fingerprint": kb_content_hash(tiny_docs())}
    assert manifest["faiss"]["type"] == "flat" and manifest["bm25"]["stopwords"] == "en"


def test_kb_content_hash_follows_content_not_order_or_source() -> None:
    docs = tiny_docs()
    base = kb_content_hash(docs)
    assert kb_content_hash(list(reversed(docs))) == base
    assert kb_content_hash([docs[0].model_copy(update={"source": "elsewhere"}), *docs[1:]]) == base
    assert kb_content_hash([docs[0].model_copy(update={"text": "changed"}), *docs[1:]]) != base


def test_encoder_fingerprint_follows_weights_not_location(tmp_path: Path, tiny_encoders) -> None:
    first = encoder_fingerprint(load_encoder(str(tiny_encoders[0]), Path()))
    copy = shutil.copytree(tiny_encoders[0], tmp_path / "copy")
    model = load_encoder(str(copy), Path())
    model.encode(["tokenizer calls leave padding and truncation state behind"])
    assert encoder_fingerprint(model) == first
    assert encoder_fingerprint(load_encoder(str(tiny_encoders[1]), Path())) != first
    model.max_seq_length = 16  # truncation changes embeddings, so it changes the fingerprint
    assert encoder_fingerprint(model) != first


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_faiss_index_types(tmp_path: Path, embedder, kind: str) -> None:
    params = tiny_index_params(type=kind)
    with EmbeddingCache(tmp_path / "cache") as cache:
        build_index(tiny_docs(), embedder, "tiny", cache, params, tmp_path, progress=False)
    index = faiss.read_index(str(tmp_path / FAISS_FILE))
    assert index.ntotal == 24 and index.is_trained
    if kind == "ivfpq":  # lossy codes: check what was trained, not exact neighbours
        assert faiss.extract_index_ivf(index).nlist == 2
        return
    vectors = index.reconstruct_n(0, 24)
    _, rows = index.search(vectors, 1)
    assert rows[:, 0].tolist() == list(range(24))  # every doc is its own nearest neighbour


def test_ivfpq_with_too_few_docs_is_a_clear_error(tmp_path: Path, embedder) -> None:
    params = tiny_index_params(type="ivfpq", pq_nbits=8)
    with (
        EmbeddingCache(tmp_path / "cache") as cache,
        pytest.raises(InputError, match="at least 256 docs"),
    ):
        build_index(tiny_docs(), embedder, "tiny", cache, params, tmp_path, progress=False)
