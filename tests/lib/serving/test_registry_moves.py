"""Champion moves that meet a registry changed behind ragloop's back, on a real sqlite store:
deleted versions, an alias moved by hand, a component promoted alone, a store failing midway,
and the champion moving while the gate judges. Each ends with the aliases, the history tag,
the pinned components' champions and the events agreeing, or with nothing changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from flows.cli import app
from tasks import register
from tasks.lib.core.config import load_params
from tasks.lib.core.tracking import ensure_experiment
from tasks.lib.serving.registry import (
    CHAMPION,
    HISTORY_TAG,
    PREVIOUS,
    RegistryError,
    aliases,
    champion_history,
    promote,
    promote_judged,
    promotion_events,
    register_models,
    registry_client,
    served_history,
    version_pins,
)
from tests.support.projects import make_project, write_evaluation, write_jsonl

RAG, RETRIEVER, GENERATOR = "ragloop-rag", "ragloop-retriever", "ragloop-generator"
MODELS = (RAG, RETRIEVER, GENERATOR)
VERSIONS = 3  # of each model; RAG vN pins RETRIEVER vN and GENERATOR vN


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tracked project for the module: a fresh sqlite store costs seconds."""
    params_file = make_project(tmp_path_factory.mktemp("moves"), tracked=True)
    for name, folder in load_params(params_file).register_.models.items():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"name": name}), "utf-8")
    return params_file


@pytest.fixture
def client(project: Path) -> Iterator[MlflowClient]:
    """The project's registry with VERSIONS fresh versions of each model, no champion yet."""
    params = load_params(project)
    store = registry_client(params)
    for name in MODELS:
        if name in {m.name for m in store.search_registered_models()}:
            store.delete_registered_model(name)
    run_id = store.create_run(ensure_experiment(params)).info.run_id
    for _ in range(VERSIONS):
        register_models(store, run_id, params.register_.models, RAG)
    yield store


def cli(project: Path, *args: str) -> Any:
    return CliRunner().invoke(app, [*args, "--params", str(project)])


def state(client: MlflowClient) -> dict[str, Any]:
    """Everything a move writes, to compare before and after."""
    tags = client.get_registered_model(RAG).tags
    return {
        "aliases": {name: aliases(client, name) for name in MODELS},
        "history": tags.get(HISTORY_TAG),
        "events": len(promotion_events(client, RAG)),
        "version tags": [v.tags for v in client.search_model_versions(f"name = '{RAG}'")],
    }


def assert_consistent(client: MlflowClient) -> None:
    """The champion, previous champion, history tag, pinned components and last event agree."""
    held = aliases(client, RAG)
    history, notes = served_history(client, RAG)
    assert notes == [] and champion_history(client, RAG) == history
    assert held[CHAMPION] == history[-1] == promotion_events(client, RAG)[-1]["version"]
    assert held.get(PREVIOUS) == (history[-2] if len(history) > 1 else None)
    for model, version in version_pins(client, RAG, held[CHAMPION]).items():
        assert aliases(client, model)[CHAMPION] == version


def promote_all(client: MlflowClient, *versions: str) -> None:
    for version in versions:
        promote(client, RAG, version, by="test")


def test_rollback_skips_a_deleted_previous_champion(project: Path, client: MlflowClient) -> None:
    promote_all(client, "1", "2", "3")
    client.delete_model_version(RAG, "2")
    result = cli(project, "rollback")
    assert result.exit_code == 0, result.output
    assert f"note: {RAG} v2 no longer exists: left out of the champion history" in result.output
    assert f"{RAG}: v1 is champion again (v3 retired)" in result.output
    assert_consistent(client)
    assert champion_history(client, RAG) == ["1"] and PREVIOUS not in aliases(client, RAG)
    assert aliases(client, RETRIEVER)[CHAMPION] == "1"
    before = state(client)
    result = cli(project, "rollback")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: ragloop-rag: no earlier champion that still exists" in result.output
    assert "(champions on record: v1)" in result.output
    assert state(client) == before


def test_rollback_with_every_earlier_champion_deleted_changes_nothing(
    project: Path, client: MlflowClient
) -> None:
    promote_all(client, "2", "3")
    client.delete_model_version(RAG, "2")
    before = state(client)
    result = cli(project, "rollback")
    assert result.exit_code == 1
    assert "(ragloop-rag v2 no longer exists: left out of the champion history)" in result.output
    assert "promote a version by hand" in result.output
    assert state(client) == before


def test_promote_after_the_champion_was_deleted(project: Path, client: MlflowClient) -> None:
    promote_all(client, "1", "2")
    client.delete_model_version(RAG, "2")  # MLflow drops the champion alias with it
    assert CHAMPION not in aliases(client, RAG)
    result = cli(project, "promote", "--version", "3")
    assert result.exit_code == 0, result.output
    assert f"note: {RAG} v2 no longer exists" in result.output
    assert_consistent(client)
    assert champion_history(client, RAG) == ["1", "3"] and aliases(client, RAG)[PREVIOUS] == "1"
    assert {aliases(client, m)[CHAMPION] for m in (RETRIEVER, GENERATOR)} == {"3"}
    # Rollback then goes to v1, the newest earlier champion that exists.
    assert cli(project, "rollback").exit_code == 0
    assert_consistent(client)
    assert aliases(client, RAG)[CHAMPION] == "1"


def test_promote_refuses_a_version_whose_pins_were_deleted(
    project: Path, client: MlflowClient
) -> None:
    promote_all(client, "1")
    client.delete_model_version(GENERATOR, "2")
    before = state(client)
    result = cli(project, "promote", "--version", "2")
    assert result.exit_code == 1
    assert "error: ragloop-rag v2 pins ragloop-generator v2, deleted from the registry" in (
        result.output
    )
    assert state(client) == before


class FailingStore(MlflowClient):
    """The real store, refusing one write (and, with `down`, every write after it), as a store
    that goes away midway would."""

    def __init__(self, uri: str, model: str, down: bool = False) -> None:
        super().__init__(uri)
        self.model, self.down, self.failed = model, down, False

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        if name == self.model or (self.down and self.failed):
            self.failed = True
            raise MlflowException("store unavailable")
        super().set_registered_model_alias(name, alias, version)


def test_a_write_failing_midway_is_undone(client: MlflowClient) -> None:
    promote_all(client, "1")
    before = state(client)
    # The bundle's champion and the retriever's are written before the generator's fails.
    flaky = FailingStore(client.tracking_uri, GENERATOR)
    with pytest.raises(RegistryError) as refused:
        promote(flaky, RAG, "2", by="test")
    message = str(refused.value)
    assert "writing ragloop-generator@champion failed (store unavailable)" in message
    assert "nothing was changed" in message
    assert state(client) == before
    down = FailingStore(client.tracking_uri, GENERATOR, down=True)
    with pytest.raises(RegistryError, match="restoring the prior state failed too") as refused:
        promote(down, RAG, "2", by="test")
    assert f"{RAG}@champion = 1" in str(refused.value)  # what to set by hand


def test_rollback_after_the_alias_was_moved_by_hand(project: Path, client: MlflowClient) -> None:
    promote_all(client, "1", "2")
    client.set_registered_model_alias(RAG, CHAMPION, "3")  # in the UI
    status = cli(project, "status").output
    assert f"note: {RAG}@champion is v3, not v2 as on record: v3 counts as" in status
    assert "note: ragloop-retriever@champion is v2, but ragloop-rag v3 pins v3" in status
    history = cli(project, "history").output
    assert "champions, oldest first: v1, v2, v3" in history
    result = cli(project, "rollback")
    assert result.exit_code == 0, result.output
    assert f"{RAG}: v2 is champion again (v3 retired)" in result.output
    assert_consistent(client)
    assert champion_history(client, RAG) == ["1", "2"]
    assert "rolled_back_at" in client.get_model_version(RAG, "3").tags
    event = promotion_events(client, RAG)[-1]
    assert (event["version"], event["previous"]) == ("2", "3") and len(event["notes"]) == 1
    assert "note:" not in cli(project, "status").output


def test_a_component_is_promoted_only_with_its_bundle(project: Path, client: MlflowClient) -> None:
    promote_all(client, "2")
    result = cli(project, "promote", "--model", RETRIEVER, "--version", "1")
    assert result.exit_code == 1
    assert (
        "error: ragloop-retriever v1: the serving bundle ragloop-rag v2 pins ragloop-retriever "
        "v2, and a component serves only with the bundle that pins it: promote ragloop-rag v1"
    ) in result.output
    assert aliases(client, RETRIEVER)[CHAMPION] == "2"
    result = cli(project, "promote", "--model", RETRIEVER, "--version", "2")
    assert result.exit_code == 0 and "v2 is champion already" in result.output
    # A component moved in the UI: status says so, and promoting the champion again repairs it.
    client.set_registered_model_alias(RETRIEVER, CHAMPION, "1")
    assert "`ragloop promote --version 2` re-points it" in cli(project, "status").output
    events = len(promotion_events(client, RAG))
    assert cli(project, "promote", "--version", "2").exit_code == 0
    assert aliases(client, RETRIEVER)[CHAMPION] == "2"
    assert len(promotion_events(client, RAG)) == events  # a repair is not a champion move
    assert_consistent(client)


def test_the_gate_does_not_promote_over_a_champion_that_moved(client: MlflowClient) -> None:
    promote_all(client, "1")
    before = state(client)
    with pytest.raises(RegistryError, match="judged v3 against champion none, but the champion"):
        promote_judged(client, RAG, "3", None, {"rule": "model"})
    assert state(client) == before
    promote_judged(client, RAG, "3", "1", {"rule": "model"})
    assert_consistent(client)


def scores(share: float) -> list[float]:
    return [1.0 if i < share * 100 else 0.0 for i in range(100)]


METRICS = ("answer_f1", "exact_match", "recall_at_10", "ndcg_at_10")
clearly_better = {m: scores(0.8) for m in METRICS}
as_before = {m: scores(0.4) for m in METRICS}


def test_register_refuses_when_the_champion_moves_while_it_judges(
    project: Path, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    promote_all(client, "1")
    write_jsonl(
        load_params(project).paths.retrieval_qa_dir / "test.jsonl",
        [{"id": "q1", "question": "?", "answers": ["a"], "doc_ids": ["d"], "group": "g"}],
    )
    write_evaluation(project, {"tuned_rag": clearly_better, "champion": as_before}, "1")
    judge = register.judge_model

    def judged_while_someone_promotes(*args: Any) -> Any:
        promote(client, RAG, "2", by="manual: someone else")
        return judge(*args)

    monkeypatch.setattr(register, "judge_model", judged_while_someone_promotes)
    with pytest.raises(
        RegistryError, match="judged v4 against champion v1, but the champion is now v2"
    ):
        register.main(project)
    assert aliases(client, RAG)[CHAMPION] == "2"
    assert_consistent(client)


def test_rollback_after_the_champion_was_deleted(project: Path, client: MlflowClient) -> None:
    promote_all(client, "1", "2", "3")
    client.delete_model_version(RAG, "3")
    result = cli(project, "rollback")
    assert result.exit_code == 0, result.output
    assert "ragloop-rag has no champion alias: restoring the newest champion on record" in (
        result.output
    )
    assert f"{RAG}: v2 is champion again (no champion alias before)" in result.output
    assert_consistent(client)
    assert aliases(client, RAG)[PREVIOUS] == "1"
