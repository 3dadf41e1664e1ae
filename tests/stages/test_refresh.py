"""The refresh stages on a tiny project with a real registered champion.

The champion is built the way the pipeline builds one (tiny encoder, index, fusion, tiny
generator, bundle), registered on the project's sqlite store with its components pinned and
promoted. The KB then changes through the updates folder (a doc added, one edited, one
deleted) and kb_changes -> refresh_index -> refresh_questions -> refresh_bundle run as their
scripts would: only the changed docs are embedded, and the refreshed bundle, loaded as the
registry would serve it, finds the new doc and never returns the deleted one, while the
champion still does.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import yaml

from flows.retrain import pipeline_stages
from tasks import (
    dedup,
    ingest,
    kb_changes,
    refresh_bundle,
    refresh_index,
    refresh_questions,
    validate,
)
from tasks.lib.core.config import load_params
from tasks.lib.core.io import write_json
from tasks.lib.core.records import read_docs
from tasks.lib.core.skipped import MARKER_FILE, skipped_reason
from tasks.lib.core.tracking import PARENT_RUN_ENV, ensure_experiment, tracking_uri
from tasks.lib.kb.changes import NO_CHAMPION, NO_REGISTRY, UNCHANGED, read_change_set
from tasks.lib.retrieval.embedding_cache import EmbeddingCache
from tasks.lib.retrieval.encoder import Embedder, encode_precision, load_encoder
from tasks.lib.retrieval.index_store import MANIFEST_FILE, build_index
from tasks.lib.serving.bundle import COMPONENTS, components_spec, pin_components, save_bundle
from tasks.lib.serving.registry import promote, register_models, registry_client
from tests.support.projects import REPO, dvc, make_project, make_tracked_project_on_kb, write_jsonl
from tests.support.retrieval import TOPICS, make_tiny_encoder, tiny_qa
from tests.support.tiny_generator import make_tiny_generator

RAG, RETRIEVER, GENERATOR = "ragloop-rag", "ragloop-retriever", "ragloop-generator"
DESCRIBED = {"Glacier": "Slow river of ice", "Saturn": "Sixth planet from the Sun"}
SHRUNK = {
    "generator__top_k": 2,
    "generator__passage_tokens": 24,
    "generator__max_new_tokens": 4,
    "bundle__batch_size": 4,
    "synthesize_queries__doc_words": 20,
    "synthesize_queries__max_new_tokens": 8,
    "synthesize_queries__batch_size": 4,
}
FUSION = {"rrf_k": 60, "dense_weight": 0.5, "bm25_weight": 0.5, "candidates": 10}
# The KB change: one doc added, one edited, one deleted.
COMET = {
    "id": "comet",
    "title": "Comet",
    "text": "A comet is a snowball of ice and dust with a bright tail near the Sun.",
    "source": "feed",
    "description": "Icy body with a bright tail",
}
GLACIER = {
    "id": "glacier",
    "title": "Glacier",
    "text": "A glacier is a river of ice that slowly carves valleys in the mountains.",
    "source": "feed",
    "description": "Slow river of ice",
}
DELETED = "volcano"
VOLCANO_TEXT = dict(TOPICS)["Volcano"]


def passage(row: dict[str, str]) -> str:
    """What the index embeds of a doc (`index.include_title`): the query that finds it first."""
    return f"{row['title']}\n{row['text']}"


@pytest.fixture(scope="module", autouse=True)
def _project_store() -> Iterator[None]:
    """Each project's own store whatever the shell exported; restored after the module."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.delenv(PARENT_RUN_ENV, raising=False)
        yield


def own_store() -> None:
    """Before working on a project: `mlflow.set_tracking_uri` exports its URI, and a second
    project in this process would log into the store of the first."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def tiny_project(root: Path, generator: Path) -> Path:
    """The retrieval fixtures' KB (two docs with a description) and QA as a folder source,
    ingested and deduplicated, tracked in the project's own sqlite store."""
    own_store()
    docs = [
        {
            "id": title.lower().replace(" ", "_"),
            "title": title,
            "text": text,
            "source": "tests",
            **({"description": DESCRIBED[title]} if title in DESCRIBED else {}),
        }
        for title, text in TOPICS
    ]
    write_jsonl(root / "my_kb" / "docs.jsonl", docs)
    write_jsonl(root / "my_qa/qa.jsonl", [row for rows in tiny_qa().values() for row in rows])
    params_file = make_tracked_project_on_kb(
        root,
        paths__generator_base_dir=str(generator),
        **SHRUNK,
    )
    ingest.main(params_file)
    validate.main(params_file)
    dedup.main(params_file)
    return params_file


def register_champion(params_file: Path, encoder: Path, generator: Path) -> str:
    """Build the champion bundle over the current KB as the pipeline would, register it with its
    components pinned, promote it; return its version."""
    own_store()
    params = load_params(params_file)
    root = params.project_dir / "champion"
    with EmbeddingCache(params.paths.embedding_cache) as cache:
        embedder = Embedder(load_encoder(str(encoder), Path()), encode_precision(params))
        docs = read_docs(params.paths.retrieval_docs)
        build_index(docs, embedder, str(encoder), cache, params.index, root / "index", False)
    write_json(root / "fusion.json", {"fusion": FUSION})
    spec = components_spec(encoder, generator, params.generator, params.bundle, params.precision)
    save_bundle(root / "bundle", root / "index", root / "fusion.json", spec)
    client = registry_client(params)
    run_id = client.create_run(ensure_experiment(params)).info.run_id
    folders = {RETRIEVER: encoder, GENERATOR: generator, RAG: root / "bundle"}
    versions = register_models(client, run_id, folders, RAG, pin_components)
    promote(client, RAG, versions[RAG], by="test")
    return versions[RAG]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refresh_models")
    return {
        "encoder": make_tiny_encoder(root),
        "generator": make_tiny_generator(root / "generator"),
    }


@pytest.fixture(scope="module")
def champion_project(tmp_path_factory: pytest.TempPathFactory, models) -> Path:
    params_file = tiny_project(tmp_path_factory.mktemp("refresh_project"), models["generator"])
    register_champion(params_file, models["encoder"], models["generator"])
    return params_file


def run_refresh_stages(params_file: Path) -> None:
    own_store()
    for stage in (kb_changes, refresh_index, refresh_questions, refresh_bundle):
        stage.main(params_file)


def refresh_outputs(params_file: Path) -> list[Path]:
    paths = load_params(params_file).paths
    return [paths.refresh_index_dir, paths.refresh_questions_dir, paths.refresh_bundle_dir]


def test_no_champion_no_registry_and_no_change_all_mean_nothing_to_refresh(
    tmp_path: Path, models, champion_project: Path
) -> None:
    # A registry without a champion: the first run.
    params_file = tiny_project(tmp_path, models["generator"])
    run_refresh_stages(params_file)
    paths = load_params(params_file).paths
    changes = read_change_set(paths.kb_changes)
    assert changes.champion is None and changes.nothing_to_refresh == NO_CHAMPION
    assert changes.added == changes.modified == changes.deleted == []
    for out in refresh_outputs(params_file):
        assert [p.name for p in out.iterdir()] == [MARKER_FILE]
        assert skipped_reason(out) == NO_CHAMPION
    # Nothing changed, nothing rewritten: the stages after kb_changes skip under DVC.
    written = paths.kb_changes.read_bytes()
    own_store()
    kb_changes.main(params_file)
    assert paths.kb_changes.read_bytes() == written

    # No registry at all.
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["tracking"]["enabled"] = False
    untracked = tmp_path / "untracked.yaml"
    untracked.write_text(yaml.safe_dump(params), encoding="utf-8")
    kb_changes.main(untracked)
    assert read_change_set(paths.kb_changes).nothing_to_refresh == NO_REGISTRY

    # A champion serving this very KB.
    run_refresh_stages(champion_project)
    changes = read_change_set(load_params(champion_project).paths.kb_changes)
    assert changes.nothing_to_refresh == UNCHANGED
    assert changes.counts == {"added": 0, "modified": 0, "deleted": 0, "unchanged": 24}
    assert changes.champion is not None and changes.champion.version == "1"
    assert all(skipped_reason(out) == UNCHANGED for out in refresh_outputs(champion_project))


@pytest.fixture(scope="module")
def refreshed(champion_project: Path) -> Path:
    """The champion project after a KB change, with the refresh stages run."""
    updates = champion_project.parent / "data/sources/updates"
    write_jsonl(updates / "feed.jsonl", [COMET, GLACIER])
    (updates / "deleted.txt").write_text(f"# retired\n{DELETED}\n", encoding="utf-8")
    own_store()
    ingest.main(champion_project)
    validate.main(champion_project)
    dedup.main(champion_project)
    run_refresh_stages(champion_project)
    return champion_project


def test_change_set_names_the_champion_its_pins_and_the_changed_docs(refreshed: Path) -> None:
    changes = read_change_set(load_params(refreshed).paths.kb_changes)
    assert changes.nothing_to_refresh is None
    champion = changes.champion
    assert champion is not None
    assert (champion.model, champion.version) == (RAG, "1")
    assert (champion.retriever.model, champion.retriever.version) == (RETRIEVER, "1")
    assert (champion.generator.model, champion.generator.version) == (GENERATOR, "1")
    assert (changes.added, changes.modified, changes.deleted) == (["comet"], ["glacier"], [DELETED])
    assert changes.counts == {"added": 1, "modified": 1, "deleted": 1, "unchanged": 22}


def test_refreshed_index_embeds_only_the_added_and_modified_docs(refreshed: Path) -> None:
    paths = load_params(refreshed).paths
    manifest = json.loads((paths.refresh_index_dir / MANIFEST_FILE).read_text())
    assert (manifest["build"]["embedded"], manifest["build"]["cached"]) == (2, 22)
    assert manifest["encoder"]["id"] == f"models:/{RETRIEVER}/1"
    indexed = (paths.refresh_index_dir / "docs.jsonl").read_text().splitlines()
    kb = {d.id for d in read_docs(paths.retrieval_docs)}
    assert {json.loads(row)["id"] for row in indexed} == kb
    assert "comet" in kb and DELETED not in kb


def test_change_questions_ask_about_the_changed_docs_only(refreshed: Path) -> None:
    paths = load_params(refreshed).paths
    questions = [json.loads(row) for row in paths.change_questions.read_text().splitlines()]
    rejected = [
        json.loads(row)
        for row in (paths.refresh_questions_dir / "rejected.jsonl").read_text().splitlines()
    ]
    described = {q["id"]: q for q in questions if q["id"].startswith("kb:")}
    assert described["kb:comet"]["question"] == "What is Comet?"
    assert described["kb:comet"]["answers"] == [COMET["description"]]
    assert set(described) == {"kb:comet", "kb:glacier"}
    assert not [q for q in questions if q["id"].startswith("title:")]  # both are described
    # Each changed doc got one generated question: kept, or rejected with its reason.
    generated = [q["doc_ids"][0] for q in questions if q["id"].startswith("syn:")]
    assert sorted(generated + [r["doc_id"] for r in rejected]) == ["comet", "glacier"]
    assert all(r["reason"] for r in rejected)
    assert json.loads(paths.deleted_docs.read_text()) == [DELETED]


def test_refreshed_bundle_serves_the_new_kb_with_the_champions_components(refreshed: Path) -> None:
    params = load_params(refreshed)
    bundle_dir = params.paths.refresh_bundle_dir
    spec = json.loads((bundle_dir / "artifacts" / f"{COMPONENTS}.json").read_text())
    assert spec["retriever"] == {"model": RETRIEVER, "version": "1"}
    assert spec["generator"] == {"model": GENERATOR, "version": "1"}
    mlflow.set_tracking_uri(tracking_uri(params))  # the pinned `models:/` versions live there
    questions = [
        passage(COMET),
        passage(GLACIER),
        f"Volcano\n{VOLCANO_TEXT}",
        "What vents molten rock and ash?",
    ]
    outputs = mlflow.pyfunc.load_model(str(bundle_dir)).predict(questions)
    assert all(DELETED not in output["retrieved"] for output in outputs)
    assert outputs[0]["retrieved"][0] == "comet" and outputs[0]["sources"][0] == "comet"
    assert outputs[1]["retrieved"][0] == "glacier"
    # The champion still serves the deleted doc: the refresh gate decides what replaces it.
    (stale,) = mlflow.pyfunc.load_model(f"models:/{RAG}@champion").predict(questions[2:3])
    assert stale["retrieved"][0] == DELETED


def test_dvc_repro_of_the_refresh_path_on_a_fresh_clone(tmp_path: Path, models) -> None:
    """The repo's dvc.yaml: the refresh path needs no training stage; with no champion it is a
    chain of markers, and a second repro re-reads the registry and skips everything else."""
    own_store()
    make_project(tmp_path, prepare_generator__model=str(models["generator"]))  # untracked: fast
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "tasks", tmp_path / "tasks", ignore=ignore)
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / ".dvcignore", tmp_path / ".dvcignore")
    dvc(tmp_path, "init", "--no-scm", "-q")
    (tmp_path / ".dvc/config").write_text(
        "[core]\n    no_scm = True\n    analytics = false\n    site_cache_dir = site_cache\n",
        encoding="utf-8",
    )
    path = ["ingest", "validate", "dedup", "kb_changes", "prepare_generator"]
    refresh = ["refresh_index", "refresh_questions", "refresh_bundle"]
    # refresh_evaluate scores the test split too, which kb_questions writes (generated, from
    # the base index, for a KB without a QA set).
    assert pipeline_stages(tmp_path, "refresh_register") == [
        *path,
        "index",
        "feedback_export",
        "kb_questions",
        *refresh,
        "refresh_evaluate",
        "refresh_register",
    ]

    first = dvc(tmp_path, "repro", *refresh).stdout
    assert [s for s in path + refresh if f"Running stage '{s}'" in first] == path + refresh
    for out in refresh_outputs(tmp_path / "params.yaml"):
        assert skipped_reason(out) == NO_REGISTRY
    again = dvc(tmp_path, "repro", *refresh).stdout
    assert [s for s in path + refresh if f"Running stage '{s}'" in again] == ["kb_changes"]
