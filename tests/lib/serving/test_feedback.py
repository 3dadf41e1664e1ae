"""The feedback store on a real sqlite file: what it accepts, what it refuses (storing nothing),
where a relative database lives, many threads at once, and what each row teaches."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tasks.lib.core.config import FeedbackParams
from tasks.lib.core.io import InputError
from tasks.lib.serving.feedback import (
    FeedbackRejected,
    FeedbackStore,
    consumed_feedback_id,
    feedback_record,
    record_consumed_feedback,
    trainable_feedback,
)

KNOWN = {"saturn", "jupiter"}
PARAMS = FeedbackParams(database="sqlite:///db/feedback.db", max_text_chars=20, retrain_threshold=2)


@pytest.fixture
def store(tmp_path: Path):
    opened = FeedbackStore.open(PARAMS, tmp_path)
    yield opened
    opened.close()


def rows_in(project: Path, table: str) -> int:
    """Counted with sqlite3 itself, not through the store under test."""
    with sqlite3.connect(project / "db/feedback.db") as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_a_relative_sqlite_path_is_under_the_project_and_its_folder_is_made(
    tmp_path: Path, store: FeedbackStore
) -> None:
    request_id = store.record_answer("Which planet has rings?", "Saturn", ["saturn"], "rag", "3")
    assert len(request_id) == 32 and int(request_id, 16) >= 0  # uuid hex
    assert (tmp_path / "db/feedback.db").is_file()
    assert rows_in(tmp_path, "answers") == 1


def test_accepted_feedback_is_stored_with_its_answer(tmp_path: Path, store: FeedbackStore) -> None:
    request_id = store.record_answer("Which planet has rings?", "Jupiter", ["jupiter"], "rag", "3")
    first = store.add_feedback(request_id, False, "Saturn", "saturn", KNOWN)
    second = store.add_feedback(request_id, False, None, None, KNOWN)
    assert second > first
    rows = store.feedback_rows()
    assert [(r.id, r.good, r.correction, r.doc_id) for r in rows] == [
        (first, False, "Saturn", "saturn"),
        (second, False, None, None),
    ]
    assert rows[0].question == "Which planet has rings?" and rows[0].sources == ["jupiter"]
    assert [r.id for r in store.feedback_rows(after_id=first)] == [second]


@pytest.mark.parametrize(
    ("request_known", "good", "answer", "doc_id", "status", "message"),
    [
        (False, True, None, None, 404, r"request id 'f+' is not in sqlite:.*feedback\.db"),
        (True, False, "   ", "saturn", 422, r"corrected answer is empty"),
        (True, False, "x" * 21, "saturn", 422, r"21 characters.*feedback.max_text_chars 20"),
        (True, False, "Saturn", "pluto", 422, r"doc id 'pluto' is not in the served KB"),
        (True, True, "Saturn", None, 422, r"corrected answer on an answer marked good.*--bad"),
    ],
)
def test_each_refusal_names_the_field_and_stores_nothing(
    tmp_path: Path,
    store: FeedbackStore,
    request_known: bool,
    good: bool,
    answer: str | None,
    doc_id: str | None,
    status: int,
    message: str,
) -> None:
    request_id = store.record_answer("Which planet has rings?", "Jupiter", ["jupiter"], "rag", "3")
    with pytest.raises(FeedbackRejected, match=message) as refused:
        store.add_feedback(request_id if request_known else "f" * 32, good, answer, doc_id, KNOWN)
    assert refused.value.status == status
    assert isinstance(refused.value, InputError)  # a command prints it as one `error:` line
    assert rows_in(tmp_path, "feedback") == 0
    assert store.feedback_rows() == []


def test_worker_threads_share_one_store(tmp_path: Path, store: FeedbackStore) -> None:
    def serve(i: int) -> int:
        request_id = store.record_answer(f"question {i}?", "Saturn", ["saturn"], "rag", "3")
        return store.add_feedback(request_id, True, None, None, KNOWN)

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(serve, range(40)))
    assert sorted(ids) == list(range(1, 41))
    assert rows_in(tmp_path, "answers") == rows_in(tmp_path, "feedback") == 40


def test_each_row_teaches_a_record_or_says_why_not(store: FeedbackStore) -> None:
    asked = store.record_answer(
        "Which planet has rings?", "Jupiter", ["jupiter", "saturn"], "r", "3"
    )
    uncited = store.record_answer("Why?", "Because", [], "rag", "3")
    store.add_feedback(asked, False, "Saturn", "saturn", KNOWN)  # correction
    store.add_feedback(asked, True, None, None, KNOWN)  # good: the top source
    store.add_feedback(asked, True, None, "saturn", KNOWN)  # good: the doc named
    store.add_feedback(asked, False, None, None, KNOWN)  # bad, nothing to learn
    store.add_feedback(asked, False, "Saturn", None, KNOWN)  # no doc to score it on
    store.add_feedback(uncited, True, None, None, KNOWN)  # cited nothing
    taught = [feedback_record(row) for row in store.feedback_rows()]
    assert [use for _, use in taught] == [
        "correction",
        "good_answer",
        "good_answer",
        "bad_without_correction",
        "correction_without_doc",
        "good_without_source",
    ]
    records = [record for record, _ in taught if record is not None]
    assert [(r.answers, r.doc_ids) for r in records] == [
        (["Saturn"], ["saturn"]),
        (["Jupiter"], ["jupiter"]),
        (["Jupiter"], ["saturn"]),
    ]
    assert len({r.group for r in records}) == 3
    assert trainable_feedback(store, after_id=0) == 3
    assert trainable_feedback(store, after_id=2) == 1


def test_the_watermark_is_the_export_a_retrain_consumed(tmp_path: Path) -> None:
    assert consumed_feedback_id(tmp_path) == 0
    assert record_consumed_feedback(tmp_path, tmp_path / "none/metrics.json", "run") is None
    metrics = tmp_path / "export/metrics.json"
    metrics.parent.mkdir()
    metrics.write_text('{"max_feedback_id": 7}', encoding="utf-8")
    assert record_consumed_feedback(tmp_path, metrics, "run") == 7
    assert consumed_feedback_id(tmp_path) == 7
