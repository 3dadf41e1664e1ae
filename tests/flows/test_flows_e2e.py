"""The real retrain flow over every stage of the repo's dvc.yaml, end to end, on a tiny project.

A 24-doc KB (each doc with a short description, so `kb_questions` has material), 12 questions,
a random-init 2-layer BERT encoder and a random-init 2-layer Llama generator, every knob shrunk,
and a real sqlite MLflow store with its registry in the project folder. The models know nothing,
so the gate may well refuse the first champion: the test accepts either decision and checks that
the registry, the decision file and the served bundle agree with it. A second run with nothing
changed must do nothing but re-read the registry, and the watcher nothing at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from flows.retrain import retrain
from flows.watch import watch
from tasks.lib.core.config import load_params
from tasks.lib.core.tracking import tracking_uri
from tasks.lib.serving.registry import CHALLENGER, CHAMPION, aliases
from tests.support.pipeline import make_pipeline_project
from tests.support.projects import REPO, write_jsonl
from tests.support.retrieval import TOPICS, tiny_qa
from tests.support.tiny_generator import make_tiny_generator

MODELS = ("ragloop-retriever", "ragloop-generator", "ragloop-rag")
RAG = "ragloop-rag"

# A short encyclopedia description per KB doc ("What is <title>?" -> description).
DESCRIPTIONS = {
    "Glacier": "Persistent body of dense moving ice",
    "Volcano": "Rupture in the crust of a planet",
    "Lighthouse": "Tower that guides ships at sea",
    "Telescope": "Instrument that observes distant objects",
    "Orchard": "Planting of trees grown for fruit",
    "Violin": "Bowed string instrument with four strings",
    "Pyramid": "Ancient royal tomb in Egypt",
    "Honeybee": "Insect that makes and stores honey",
    "Chess": "Board game for two players",
    "Penicillin": "Group of antibiotics made by moulds",
    "Saturn": "Sixth planet from the Sun",
    "Bicycle": "Pedal driven vehicle with two wheels",
    "Volleyball": "Team sport played over a net",
    "Compass": "Instrument that shows magnetic north",
    "Coral reef": "Underwater ecosystem built by coral polyps",
    "Printing press": "Machine that prints text onto paper",
    "Tea": "Drink brewed from tea plant leaves",
    "Desert": "Region that receives very little rain",
    "Submarine": "Ship that travels under the water",
    "Windmill": "Structure that turns wind into rotation",
    "Origami": "Japanese art of folding paper",
    "Thunderstorm": "Storm with lightning and thunder",
    "Cheese": "Dairy food made from curdled milk",
    "Marathon": "Long distance running race",
}


def write_tiny_kb(root: Path) -> None:
    """The retrieval fixtures' KB (with descriptions) and all their questions, as a KB folder."""
    docs = [
        {
            "id": title.lower().replace(" ", "_"),
            "title": title,
            "text": text,
            "source": "tests",
            "description": DESCRIPTIONS[title],
        }
        for title, text in TOPICS
    ]
    write_jsonl(root / "my_kb" / "docs.jsonl", docs)
    write_jsonl(root / "my_qa/qa.jsonl", [row for rows in tiny_qa().values() for row in rows])


def make_e2e_project(root: Path) -> Path:
    """A DVC project with every stage of the repo's dvc.yaml, its code and tiny models."""
    write_tiny_kb(root)
    return make_pipeline_project(root, make_tiny_generator(root / "models" / "generator"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_e2e_project(tmp_path_factory.mktemp("e2e_project"))


@pytest.fixture(scope="module")
def client(project: Path, flow_harness: None) -> MlflowClient:
    uri = tracking_uri(load_params(project))
    mlflow.set_tracking_uri(uri)  # `models:/` URIs resolve against it
    return MlflowClient(uri)


@pytest.fixture(scope="module")
def first_run(project: Path, flow_harness: None) -> dict[str, Any]:
    """The first retrain on a fresh project."""
    return retrain(str(project))


def experiment_runs(client: MlflowClient, project: Path, where: str = "") -> list:
    experiment = client.get_experiment_by_name(load_params(project).tracking.experiment)
    return client.search_runs([experiment.experiment_id], where)


def runs_of_stage(client: MlflowClient, project: Path, stage: str) -> list:
    return experiment_runs(client, project, f"tags.stage = '{stage}'")


def registry_versions(client: MlflowClient) -> dict[str, list[str]]:
    return {
        name: sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        for name in MODELS
    }


def test_first_run_runs_every_stage_registers_challengers_and_gates(
    project: Path, client: MlflowClient, first_run: dict[str, Any]
) -> None:
    root = project.parent
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    assert first_run["stages"] == stages  # DVC's order is the file's here
    assert first_run["ran"] == stages
    locked = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    assert set(locked) == set(stages)
    parent = client.get_run(first_run["mlflow_run_id"])
    assert parent.data.tags["stages_ran"] == ",".join(stages)
    # Every stage that logs a run logged it under the flow's parent run.
    parent_id = parent.info.run_id
    stage_runs = [r for r in experiment_runs(client, project) if r.info.run_id != parent_id]
    assert {r.data.tags.get("mlflow.parentRunId") for r in stage_runs} == {parent_id}
    (register_run,) = runs_of_stage(client, project, "register")

    # The random generator may keep no synthetic question (it keeps none here): the retriever
    # then trains on the real pairs alone.
    kept = json.loads((root / "data/synthesize_queries/metrics.json").read_text())["kept"]
    pairs = json.loads((root / "data/finetune_retriever/train_metrics.json").read_text())["pairs"]
    assert pairs["synthetic"] == kept and pairs["real"] > 0

    # Every model has version 1, made by the register run, and it is the challenger.
    assert registry_versions(client) == {name: ["1"] for name in MODELS}
    for name in MODELS:
        assert aliases(client, name)[CHALLENGER] == "1"
        assert client.get_model_version(name, "1").run_id == register_run.info.run_id
    rag_tags = client.get_model_version(RAG, "1").tags
    assert {k: v for k, v in rag_tags.items() if k.startswith("pin.")} == {
        "pin.ragloop-retriever": "1",
        "pin.ragloop-generator": "1",
    }

    # The gate's decision is in the file, on the flow's result and on both runs, and the
    # registry agrees with it.
    decision = json.loads((root / "data/register/decision.json").read_text(encoding="utf-8"))
    assert first_run["gate"] == decision
    judged = json.loads((root / "data/evaluate/metrics.json").read_text(encoding="utf-8"))
    gate = load_params(project).register_.gate
    assert {c["metric"]: c["candidate"] for c in decision["checks"]} == {
        metric: judged[gate.candidate][metric] for metric in [*gate.primary, *gate.tracked]
    }
    assert decision["model"] == RAG
    assert decision["versions"] == {name: "1" for name in MODELS}
    assert decision["against"] == "baselines"  # no champion before the first run
    assert decision["rule"] == "model"
    # Paired with a baseline question by question, on every test question.
    n_test = len(
        (root / "data/kb_questions/qa/test.jsonl").read_text(encoding="utf-8").splitlines()
    )
    assert decision["questions"] == {"test": n_test}
    (primary,) = [c for c in decision["checks"] if c["role"] == "primary"]
    assert primary["reference_name"] in gate.baselines and primary["n"] == n_test
    assert primary["low"] <= primary["diff"] <= primary["high"]
    scores = (root / "data/evaluate/scores.jsonl").read_text(encoding="utf-8").splitlines()
    scored = {(row["set"], row["system"]) for row in map(json.loads, scores)}
    assert scored == {("test", s) for s in (gate.candidate, *gate.baselines)}  # no champion
    verdict = "promote" if decision["promote"] else "keep"
    assert parent.data.tags["gate.decision"] == verdict
    assert register_run.data.tags["gate.decision"] == verdict
    assert rag_tags["gate.decision"] == verdict
    assert json.loads(rag_tags["gate.summary"])["questions"] == {"test": n_test}
    champions = {name: aliases(client, name).get(CHAMPION) for name in MODELS}
    failed = [check for check in decision["checks"] if not check["passed"]]
    if decision["promote"]:
        assert champions == {name: "1" for name in MODELS}  # the bundle's pins follow it
        assert not failed
    else:
        # Random-init models answer nothing right, so they do not beat closed-book.
        assert champions == dict.fromkeys(MODELS)
        assert failed
        assert decision["reasons"][0].startswith("keep")
        assert {check["note"] for check in failed} <= set(decision["reasons"])


def test_registered_bundle_serves_with_its_pinned_components(
    project: Path, client: MlflowClient, first_run: dict[str, Any]
) -> None:
    params = load_params(project)
    paths = params.paths
    kb = paths.retrieval_docs.read_text(encoding="utf-8").splitlines()
    kb_ids = {json.loads(line)["id"] for line in kb}
    # Move the stages' model folders away: the registered bundle must not need them.
    local = [paths.retriever_model, paths.generator_model]
    for folder in local:
        folder.rename(folder.with_name("model.away"))
    try:
        bundle = mlflow.pyfunc.load_model(f"models:/{RAG}/1")
        (answer,) = bundle.predict(["Which planet has bright rings?"])
    finally:
        for folder in local:
            folder.with_name("model.away").rename(folder)
    assert isinstance(answer["answer"], str)
    top_k = params.generator.top_k
    assert len(answer["sources"]) == top_k
    assert set(answer["retrieved"]) <= kb_ids
    assert answer["sources"] == answer["retrieved"][:top_k]
    registered = Path(mlflow.artifacts.download_artifacts(f"models:/{RAG}/1"))
    spec = json.loads((registered / "artifacts/components.json").read_text(encoding="utf-8"))
    assert spec["retriever"] == {"model": "ragloop-retriever", "version": "1"}
    assert spec["generator"] == {"model": "ragloop-generator", "version": "1"}


def test_second_run_with_nothing_changed_does_nothing(
    project: Path, client: MlflowClient, first_run: dict[str, Any]
) -> None:
    root = project.parent
    lock = (root / "dvc.lock").read_bytes()
    versions = registry_versions(client)
    again = retrain(str(project))
    assert again["stages"] == first_run["stages"]
    # DVC skipped every stage but kb_changes and feedback_export, which read the registry and
    # the feedback database (always_changed): they wrote the same bytes, so nothing after ran.
    assert again["ran"] == ["kb_changes", "feedback_export"]
    assert again["gate"] is None
    assert client.get_run(again["mlflow_run_id"]).data.tags["gate.decision"] == "none"
    assert len(runs_of_stage(client, project, "register")) == 1  # the gate was not called
    assert registry_versions(client) == versions
    assert (root / "dvc.lock").read_bytes() == lock


def test_watcher_rests_when_the_kb_is_unchanged(
    project: Path, client: MlflowClient, first_run: dict[str, Any]
) -> None:
    root = project.parent
    lock = (root / "dvc.lock").read_bytes()
    pipelines = len(runs_of_stage(client, project, "pipeline"))
    result = watch(str(project))
    assert result["changed"] is False and result["result"] is None
    assert len(runs_of_stage(client, project, "pipeline")) == pipelines
    assert (root / "dvc.lock").read_bytes() == lock
