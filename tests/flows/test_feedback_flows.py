"""`ragloop feedback` as a user meets it (real CLI, real sqlite, a real MLflow store for --doc),
and the watcher's feedback decision: retrain once enough trainable feedback is newer than the
watermark the last retrain recorded, KB changed or not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.watch import untrained_feedback, watch, with_feedback
from tasks.lib.core.config import load_params
from tasks.lib.kb.source_state import record_consumed_fingerprint, source_fingerprint
from tasks.lib.serving.feedback import FeedbackStore, record_consumed_feedback
from tasks.lib.serving.registry import registry_client
from tests.support.projects import make_project


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=200)


def served(params_file: Path, *questions: str) -> list[str]:
    """Request ids of answers the store recorded, as the server would."""
    params = load_params(params_file)
    store = FeedbackStore.open(params.feedback, params.project_dir)
    try:
        return [store.record_answer(q, "Saturn", ["saturn"], "rag", "1") for q in questions]
    finally:
        store.close()


def feedback_rows(project: Path) -> int:
    with sqlite3.connect(project / "data/feedback/feedback.db") as db:
        return db.execute("SELECT count(*) FROM feedback").fetchone()[0]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    params_file = make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    return params_file


def test_feedback_is_stored_and_said_in_one_line(project: Path) -> None:
    (request_id,) = served(project, "Which planet has rings?")
    stored = invoke("feedback", request_id, "--bad", "--answer", "Saturn, of course")
    assert stored.exit_code == 0, stored.output
    assert stored.output == f"feedback #1 on {request_id} stored (bad, corrected)\n"
    assert invoke("feedback", request_id, "--good").exit_code == 0
    assert feedback_rows(project.parent) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--good"], "error: feedback: request id 'ffff' is not in sqlite:///"),
        (["--good", "--answer", "Saturn"], "error: feedback: a corrected answer on an answer "),
        (["--bad", "--answer", "  "], "error: feedback: the corrected answer is empty"),
    ],
)
def test_a_refusal_is_one_error_line_and_stores_nothing(
    project: Path, args: list[str], message: str
) -> None:
    (request_id,) = served(project, "Which planet has rings?")
    target = "ffff" if "request id" in message else request_id
    refused = invoke("feedback", target, *args)
    assert refused.exit_code == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith(message)
    assert "Traceback" not in refused.output
    assert feedback_rows(project.parent) == 0


def test_a_doc_needs_a_champion_to_check_it_against(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params_file = make_project(tmp_path, tracked=True)  # a real, empty MLflow registry
    monkeypatch.chdir(tmp_path)
    registry_client(load_params(params_file))  # made before: its creation logs INFO lines
    (request_id,) = served(params_file, "Which planet has rings?")
    refused = invoke("feedback", request_id, "--bad", "--answer", "Saturn", "--doc", "saturn")
    assert refused.exit_code == 1
    (line,) = refused.stderr.splitlines()
    assert "--doc 'saturn'" in line and "has no champion" in line
    assert feedback_rows(tmp_path) == 0


@pytest.mark.parametrize(
    ("chosen", "untrained", "expected"),
    [
        (None, 19, None),
        (None, 20, "retrain"),
        ("refresh", 3, "refresh"),
        ("refresh", 25, "retrain"),
        ("retrain", 25, "retrain"),
    ],
)
def test_enough_feedback_retrains_whatever_the_kb_did(
    chosen: str | None, untrained: int, expected: str | None
) -> None:
    flow, why = with_feedback(chosen, "the KB's reason", untrained, threshold=20)
    assert flow == expected
    if chosen != expected:
        assert why.startswith(f"{untrained} feedback records not yet trained on")
        assert "feedback.retrain_threshold 20" in why
    if chosen is not None:
        assert "the KB's reason" in why


def test_only_trainable_feedback_newer_than_the_watermark_counts(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = load_params(project)
    ids = served(project, "One?", "Two?", "Three?")
    store = FeedbackStore.open(params.feedback, params.project_dir)
    for request_id in ids:
        store.add_feedback(request_id, True, None, None, set())
    store.add_feedback(ids[0], False, None, None, set())  # bad, nothing to train on
    store.close()
    assert untrained_feedback(params) == 3

    export = project.parent / "export_metrics.json"
    export.write_text('{"max_feedback_id": 2}', encoding="utf-8")
    record_consumed_feedback(params.project_dir, export, None)  # what a retrain records
    assert untrained_feedback(params) == 1

    record_consumed_fingerprint(params.project_dir, source_fingerprint(params.ingest), None)
    rested = watch.fn(str(project))  # the flow's body: below the threshold it starts nothing
    assert rested["flow"] is None
    out = capsys.readouterr().out
    threshold = params.feedback.retrain_threshold
    assert f"1 feedback records not yet trained on (retrain at {threshold})" in out
