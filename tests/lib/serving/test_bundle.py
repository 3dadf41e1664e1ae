"""The RAG bundle as a real MLflow pyfunc: tiny encoder + index + tiny generator, saved, loaded,
registered on a sqlite store with its components pinned, and served from the registry."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tasks.lib.core.io import InputError
from tasks.lib.core.precision import CPU_BF16_ENV
from tasks.lib.generation.generation_cache import GenerationCache, generator_fingerprint
from tasks.lib.generation.generator import Decoding
from tasks.lib.generation.loader import load_generator
from tasks.lib.retrieval.retriever import EncoderMismatchError, Retriever
from tasks.lib.serving.bundle import (
    bundle_retriever,
    components_spec,
    is_bundle,
    load_bundle,
    load_registered_bundle,
    pin_components,
    save_bundle,
    use_generation_cache,
)
from tasks.lib.serving.champion import champion_retriever
from tasks.lib.serving.integrity import MANIFEST_TAG
from tasks.lib.serving.registry import promote
from tests.support.bundle import (
    FUSION,
    GENERATOR,
    PRECISION,
    QUESTIONS,
    SERVING,
    register_bundle,
    sqlite_registry,
)


def test_bundle_answers_citing_what_its_retriever_ranks(bundle_dir: Path, parts) -> None:
    assert is_bundle(bundle_dir)
    outputs = mlflow.pyfunc.load_model(str(bundle_dir)).predict(QUESTIONS)
    direct = Retriever.load(parts["index"], FUSION, precision="fp32").search(
        QUESTIONS, k=5, mode="hybrid"
    )
    assert [o["question"] for o in outputs] == QUESTIONS
    for output, ranked in zip(outputs, direct, strict=True):
        assert output["retrieved"] == [hit.id for hit in ranked]
        assert output["sources"] == output["retrieved"][: GENERATOR.top_k]
        assert output["source_titles"] == [hit.title for hit in ranked[: GENERATOR.top_k]]
        assert isinstance(output["answer"], str)
    table = mlflow.pyfunc.load_model(str(bundle_dir)).predict(pd.DataFrame({"question": QUESTIONS}))
    assert table == outputs  # greedy decoding: same input, same answers


def test_a_bundle_naming_another_encoder_refuses_to_load(parts) -> None:
    out = parts["root"] / "mismatched"
    spec = components_spec(parts["other"], parts["generator"], GENERATOR, SERVING, PRECISION)
    save_bundle(out, parts["index"], parts["fusion"], spec)
    with pytest.raises(EncoderMismatchError, match="fingerprint"):
        mlflow.pyfunc.load_model(str(out))


def test_a_bundle_resolves_its_encode_setting_on_the_machine_that_loads_it(
    parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    auto = PRECISION.model_copy(update={"encode": "auto"})
    spec = components_spec(parts["encoder"], parts["generator"], GENERATOR, SERVING, auto)
    assert spec["precision"]["encode"] == "auto"  # kept as set, not as resolved here
    for cpu_bf16, resolved in (("0", "fp32"), ("1", "bf16")):
        monkeypatch.setenv(CPU_BF16_ENV, cpu_bf16)
        retriever = bundle_retriever(parts["index"], parts["fusion"], spec)
        assert retriever.embedder.precision == resolved
    del spec["precision"]  # a bundle saved before the settings were recorded
    assert bundle_retriever(parts["index"], parts["fusion"], spec).embedder.precision == "fp32"


def test_registered_bundle_pins_its_components_and_serves_from_the_registry(
    bundle_dir: Path, parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, experiment = sqlite_registry(tmp_path)
    client = MlflowClient(uri)
    for _ in range(2):  # the second round: versions 2, pinned to components v2
        versions = register_bundle(client, experiment, parts, bundle_dir)
    assert versions == {"tiny-retriever": "2", "tiny-generator": "2", "tiny-rag": "2"}
    tags = client.get_model_version("tiny-rag", "2").tags
    assert {key: tags[key] for key in tags if key != MANIFEST_TAG} == {
        "pin.tiny-retriever": "2",
        "pin.tiny-generator": "2",
    }
    assert {"MLmodel", "rag_model.py", "artifacts/components.json"} <= set(
        json.loads(tags[MANIFEST_TAG])
    )
    registered = Path(mlflow.artifacts.download_artifacts("models:/tiny-rag/2"))
    spec = json.loads((registered / "artifacts/components.json").read_text())
    assert spec["retriever"] == {"model": "tiny-retriever", "version": "2"}
    assert spec["generator"] == {"model": "tiny-generator", "version": "2"}
    local = json.loads((bundle_dir / "artifacts/components.json").read_text())
    assert "path" in local["retriever"]  # the stage's own folder is left as it was

    # Served as `ragloop ask` serves it: downloaded, checked against its manifest, loaded.
    served = load_registered_bundle(client, "tiny-rag", "2", tmp_path / "dl").predict(QUESTIONS)
    assert served == mlflow.pyfunc.load_model(str(bundle_dir)).predict(QUESTIONS)

    # What the champion searches, without its generator: the same ranking it answers from.
    promote(client, "tiny-rag", "2", by="test")
    version, retriever = champion_retriever(client, "tiny-rag", tmp_path / "served")
    assert version == "2"
    ranked = retriever.search(QUESTIONS, k=len(served[0]["retrieved"]), mode="hybrid")
    assert [[hit.id for hit in hits] for hits in ranked] == [o["retrieved"] for o in served]
    with pytest.raises(InputError, match=r"no registered version of 'tiny-retriever'"):
        pin_components(registered, {"tiny-nothing": "1"})


def test_a_bundle_generates_in_its_precision_resolved_where_it_is_loaded(
    parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    auto = PRECISION.model_copy(update={"generate": "auto"})
    spec = components_spec(parts["encoder"], parts["generator"], GENERATOR, SERVING, auto)
    assert spec["precision"]["generate"] == "auto"  # the setting, not this machine's format
    save_bundle(parts["root"] / "auto", parts["index"], parts["fusion"], spec)
    for has_bf16, precision in (("0", "fp32"), ("1", "bf16")):
        monkeypatch.setenv(CPU_BF16_ENV, has_bf16)
        answerer = load_bundle(parts["root"] / "auto").unwrap_python_model().answerer
        assert answerer.decoding == Decoding(GENERATOR.max_new_tokens, precision)
    del spec["precision"]  # a bundle saved before bundles carried it: fp32, as it always ran
    save_bundle(parts["root"] / "older", parts["index"], parts["fusion"], spec)
    answerer = load_bundle(parts["root"] / "older").unwrap_python_model().answerer
    assert answerer.decoding.precision == "fp32"


def test_a_bundle_given_the_cache_reuses_the_answers_stored_for_its_generator(
    bundle_dir: Path, parts, tmp_path: Path
) -> None:
    bundle = load_bundle(bundle_dir)
    served = bundle.predict(QUESTIONS)  # served: no cache
    answerer = bundle.unwrap_python_model().answerer
    # evaluate_generation loads the same folder its own way: the same key, so the same entries
    model, tokenizer = load_generator(parts["generator"])
    assert answerer.model.fingerprint == generator_fingerprint(model, tokenizer)
    with GenerationCache(tmp_path / "cache") as cache:
        use_generation_cache(bundle, cache)
        first = bundle.predict(QUESTIONS)
        assert (cache.hits, cache.misses) == (0, len(QUESTIONS))
        second = bundle.predict(QUESTIONS)
        assert (cache.hits, cache.misses) == (len(QUESTIONS), len(QUESTIONS))
    assert first == second == served
