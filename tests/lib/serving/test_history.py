"""Every champion move on a real sqlite registry: the gate (model and refresh rules), a manual
promote and a rollback, each recorded with its numbers, and `ragloop history` listing them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from tasks import register
from tasks.lib.core.config import load_params
from tasks.lib.core.io import InputError, write_json
from tasks.lib.core.tracking import PARENT_RUN_ENV, file_digest, tracking_uri
from tasks.lib.serving.registry import CHAMPION, aliases, promotion_events
from tasks.lib.serving.scores import judged_scores
from tests.support.projects import make_project, write_evaluation, write_jsonl

RAG, RETRIEVER, GENERATOR = "ragloop-rag", "ragloop-retriever", "ragloop-generator"
N = 100


def first(share: float) -> list[float]:
    """1 on the first `share` of the questions, 0 elsewhere: nested, so gains are consistent."""
    return [1.0 if i < round(share * N) else 0.0 for i in range(N)]


def system(f1: float, recall: float = 0.8) -> dict[str, list[float]]:
    return {
        "answer_f1": first(f1),
        "exact_match": first(f1 / 2),
        "recall_at_10": first(recall),
        "ndcg_at_10": first(recall),
    }


BASELINES = {"closed_book": {"answer_f1": first(0.1)}, "base_rag": {"answer_f1": first(0.2)}}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("history")
    params_file = make_project(root, tracked=True)
    write_jsonl(
        load_params(params_file).paths.retrieval_qa_dir / "test.jsonl",
        [{"id": "q1", "question": "?", "answers": ["a"], "doc_ids": ["d"], "group": "g"}],
    )
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.delenv(PARENT_RUN_ENV, raising=False)
        yield params_file


@pytest.fixture(scope="module")
def client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri(load_params(project)))


def new_models(params_file: Path, marker: str) -> None:
    """The folders the training stages would leave (their content does not matter here)."""
    for name, folder in load_params(params_file).register_.models.items():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"marker": f"{name}-{marker}"}), "utf-8")


def decision_of(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def refresh_bundle(root: Path, retriever: str, generator: str) -> Path:
    """A bundle folder over registered components, as an index refresh builds it."""
    folder = root / "bundle_refresh"
    spec = {
        "retriever": {"model": RETRIEVER, "version": retriever},
        "generator": {"model": GENERATOR, "version": generator},
    }
    write_json(folder / "artifacts" / "components.json", spec)
    return folder


def test_every_champion_move_is_recorded_and_listed(project: Path, client: MlflowClient) -> None:
    root = project.parent
    decision_file = load_params(project).register_.decision_file
    runner = CliRunner()

    # 1. No champion: the gate pairs the candidate with the best baseline and promotes v1.
    new_models(project, "r1")
    write_evaluation(project, {"tuned_rag": system(0.4), **BASELINES})
    register.main(project)
    assert decision_of(decision_file)["promote"]
    # What evaluate reuses instead of re-running the champion: the scores v1 was judged on,
    # for this very test split only.
    params = load_params(project)
    split = file_digest(params.paths.retrieval_qa_dir / "test.jsonl")
    on_record = judged_scores(client, RAG, "1", split, params)
    assert on_record is not None and on_record.version == "1"
    assert on_record.metrics["answer_f1"].tolist() == system(0.4)["answer_f1"]
    assert judged_scores(client, RAG, "1", "another split", params) is None

    # 2. Re-scored champion v1, a clear gain: the gate promotes v2.
    new_models(project, "r2")
    write_evaluation(project, {"tuned_rag": system(0.6), "champion": system(0.4), **BASELINES}, "1")
    register.main(project)
    assert decision_of(decision_file)["promote"] and aliases(client, RAG)[CHAMPION] == "2"

    # 3. evaluate re-scored v1, but v2 serves now: refuse, do not judge a stale re-score.
    new_models(project, "r3")
    write_evaluation(project, {"tuned_rag": system(0.9), "champion": system(0.4), **BASELINES}, "1")
    register.main(project)
    stale = decision_of(decision_file)
    assert not stale["promote"] and stale["checks"] == []
    assert "re-scored champion v1, but the champion is now v2" in stale["reasons"][0]
    assert client.get_model_version(RAG, "3").tags["gate.decision"] == "keep"

    # 4. By hand: promote v3, then roll back to v2.
    result = runner.invoke(app, ["promote", "--version", "3", "--params", str(project)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["rollback", "--params", str(project)])
    assert result.exit_code == 0 and "v2 is champion again" in result.output

    # 5. An index refresh over v2's components: registered alone, judged by the refresh rule.
    pins = client.get_model_version(RAG, "2").tags
    bundle = refresh_bundle(root, pins["pin.ragloop-retriever"], pins["pin.ragloop-generator"])
    evaluation = root / "evaluate_refresh"
    write_evaluation(
        project,
        {"tuned_rag": system(0.6), "champion": system(0.6), **BASELINES},
        "2",
        change={"tuned_rag": system(0.5, recall=0.9), "champion": system(0.1, recall=0.3)},
        folder=evaluation,
    )
    refresh_decision = root / "refresh_decision.json"
    components = {name: aliases(client, name) for name in (RETRIEVER, GENERATOR)}
    register.main(project, True, bundle, evaluation, refresh_decision)
    refreshed = decision_of(refresh_decision)
    assert refreshed["promote"] and refreshed["rule"] == "refresh"
    assert refreshed["versions"] == {RAG: "4"}  # the bundle alone; its models are v2's
    assert refreshed["questions"] == {"test": N, "change_set": N}
    assert {name: aliases(client, name) for name in (RETRIEVER, GENERATOR)} == components
    assert client.get_model_version(RAG, "4").tags["pin.ragloop-retriever"] == "2"
    assert aliases(client, RAG)[CHAMPION] == "4"

    events = promotion_events(client, RAG)
    assert [(e["action"], e["version"], e["previous"]) for e in events] == [
        ("promote", "1", None),
        ("promote", "2", "1"),
        ("promote", "3", "2"),
        ("rollback", "2", "3"),
        ("promote", "4", "2"),
    ]
    assert [e["by"].split(":")[0] for e in events] == ["gate", "gate", "manual", "manual", "gate"]
    f1 = events[0]["decision"]["intervals"]["answer_f1"]
    assert f1["vs"] == "base_rag" and f1["n"] == N and f1["diff"] == pytest.approx(0.2)
    assert f1["low"] > 0.01
    assert events[2]["decision"] is None  # a manual move carries no gate numbers
    assert "change_set.recall_at_10" in events[4]["decision"]["intervals"]

    result = runner.invoke(app, ["history", "--params", str(project)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{RAG}: 5 champion moves, oldest first"
    assert "v1 champion (was none)  promote by gate  model rule: answer_f1 +0.2000" in lines[1]
    assert "n=100 vs base_rag" in lines[1]
    assert "v3 champion (was v2)  promote by manual" in lines[3]
    assert "v2 champion (was v3)  rollback by manual" in lines[4]
    assert "refresh rule:" in lines[5] and "change_set.recall_at_10 +0.6000" in lines[5]
    assert lines[-1] == "champion now: v4"
    result = runner.invoke(app, ["status", "--params", str(project)])
    assert result.exit_code == 0 and f"{RAG:20s} champion          v4" in result.output
    result = runner.invoke(app, ["history", "--model", RETRIEVER, "--params", str(project)])
    assert result.exit_code == 0 and "no champion moves recorded yet" in result.output

    # A refresh must keep the champion's models and bring a change set; else nothing happens.
    versions = len(client.search_model_versions(f"name = '{RAG}'"))
    write_evaluation(
        project, {"tuned_rag": system(0.6), "champion": system(0.6)}, "4", {}, evaluation
    )
    other = refresh_bundle(root, "1", "1")  # not what the champion serves
    with pytest.raises(InputError, match="a refresh keeps the champion's models"):
        register.main(project, True, other, evaluation, refresh_decision)
    write_evaluation(project, {"tuned_rag": system(0.6)}, folder=evaluation)
    with pytest.raises(InputError, match="no change set"):
        register.main(project, True, other, evaluation, refresh_decision)
    assert len(client.search_model_versions(f"name = '{RAG}'")) == versions
