"""What people say of served answers, in a real database the next training set is built from.

Every answer served is recorded under a request id (`answers`); feedback on it (`feedback`)
names that id and says whether the answer was good, and may carry a corrected answer and the KB
doc that supports it. The `feedback_export` stage turns the accepted feedback into QA records,
which `kb_questions` adds to the train split.

Feedback is checked whole before anything is stored: an unknown request id is refused (404), and
so is a field no training set could use (422): a blank or too long correction, a doc id that is
not in the served KB, or a correction on an answer marked good (a corrected answer says the
served one was wrong, so `good` and a correction contradict each other and neither can be
trusted).

A FastAPI server calls the store from its worker threads: each call opens its own session, and
a sqlite connection may move between threads (`check_same_thread=False`; sqlite serialises the
writes itself).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, String, Text, create_engine, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from tasks.lib.core.config import FeedbackParams
from tasks.lib.core.io import InputError, atomic_path, write_json
from tasks.lib.core.records import QARecord

NOT_FOUND, INVALID = 404, 422  # HTTP statuses of a refusal
CONSUMED_FILE = Path(".state") / "feedback_consumed.json"  # the last retrain's watermark
EXPORT_METRICS_FILE = "metrics.json"  # in paths.feedback_export_dir; holds `max_feedback_id`
# What a feedback row gives a training set: a QA record, or the reason it gives none.
FeedbackUse = Literal[
    "correction",
    "good_answer",
    "bad_without_correction",
    "correction_without_doc",
    "good_without_source",
]
TRAINABLE = ("correction", "good_answer")


class FeedbackRejected(InputError):
    """Feedback that was not stored, with the HTTP status a server answers it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Base(DeclarativeBase):
    pass


class Answer(Base):
    """One served answer: what was asked, what was said, and which docs it cited, best first."""

    __tablename__ = "answers"

    request_id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    sources: Mapped[list[str]] = mapped_column(JSON)  # doc ids
    model: Mapped[str] = mapped_column(String(256))
    version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Feedback(Base):
    """A verdict on an answer; `answer` is a correction, `doc_id` the KB doc that supports it."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("answers.request_id"), index=True)
    good: Mapped[bool] = mapped_column(Boolean)
    answer: Mapped[str | None] = mapped_column(Text)
    doc_id: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class FeedbackRow:
    """A feedback row joined with the answer it judges, as the export reads them."""

    id: int
    request_id: str
    good: bool
    correction: str | None
    doc_id: str | None
    question: str
    answer: str
    sources: list[str]


def database_url(database: str, project_dir: Path) -> str:
    """`feedback.database` with a relative sqlite path resolved under the project folder (a
    server started elsewhere must write the same file the export reads)."""
    url = make_url(database)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return database
    path = Path(url.database)
    if not path.is_absolute():
        path = project_dir / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return url.set(database=str(path)).render_as_string(hide_password=False)


def _engine(url: str) -> Engine:
    sqlite = make_url(url).get_backend_name() == "sqlite"
    connect_args = {"check_same_thread": False} if sqlite else {}
    return create_engine(url, connect_args=connect_args)


class FeedbackStore:
    """The answers served and the feedback on them; safe to share between threads."""

    def __init__(self, engine: Engine, max_text_chars: int) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._max_text_chars = max_text_chars

    @classmethod
    def open(cls, params: FeedbackParams, project_dir: Path) -> FeedbackStore:
        """The store at `feedback.database`, its tables created if new."""
        engine = _engine(database_url(params.database, project_dir))
        Base.metadata.create_all(engine)
        return cls(engine, params.max_text_chars)

    def record_answer(
        self, question: str, answer: str, sources: list[str], model: str, version: str
    ) -> str:
        """Store a served answer; its request id, which feedback on it names."""
        request_id = uuid.uuid4().hex
        row = Answer(
            request_id=request_id,
            question=question,
            answer=answer,
            sources=list(sources),
            model=model,
            version=version,
            created_at=datetime.now(UTC),
        )
        with self._sessions.begin() as session:
            session.add(row)
        return request_id

    def add_feedback(
        self,
        request_id: str,
        good: bool,
        answer: str | None,
        doc_id: str | None,
        known_docs: Container[str],
    ) -> int:
        """Store feedback on a recorded answer; its id. Raises FeedbackRejected (nothing stored)
        for an unknown request id or a field a training set could not use."""
        self._check_fields(good, answer, doc_id, known_docs)
        with self._sessions.begin() as session:
            if session.get(Answer, request_id) is None:
                raise FeedbackRejected(
                    NOT_FOUND,
                    f"feedback: request id {request_id!r} is not in {self.where}: give the "
                    "request_id the answer was served with (the server returns it with each "
                    "answer)",
                )
            row = Feedback(
                request_id=request_id,
                good=good,
                answer=answer,
                doc_id=doc_id,
                created_at=datetime.now(UTC),
            )
            session.add(row)
            session.flush()
            return row.id

    def _check_fields(
        self, good: bool, answer: str | None, doc_id: str | None, known_docs: Container[str]
    ) -> None:
        """Every field a training set would take, before the request id is even looked up."""
        if answer is not None:
            if not answer.strip():
                raise FeedbackRejected(
                    INVALID,
                    "feedback: the corrected answer is empty: write the right answer, or leave "
                    "it out (--answer, field `answer`)",
                )
            if len(answer) > self._max_text_chars:
                raise FeedbackRejected(
                    INVALID,
                    f"feedback: the corrected answer has {len(answer)} characters, more than "
                    f"feedback.max_text_chars {self._max_text_chars}: shorten it",
                )
            if good:
                raise FeedbackRejected(
                    INVALID,
                    "feedback: a corrected answer on an answer marked good: a correction says "
                    "the answer was wrong, so mark it bad (--bad, `good: false`) or drop the "
                    "correction",
                )
        if doc_id is not None and doc_id not in known_docs:
            raise FeedbackRejected(
                INVALID,
                f"feedback: doc id {doc_id!r} is not in the served KB: give the id of the KB "
                "doc that holds the answer, as the answer's sources list them",
            )

    def feedback_rows(self, after_id: int = 0) -> list[FeedbackRow]:
        """The feedback newer than `after_id`, with its answer, oldest first (by id)."""
        query = (
            select(Feedback, Answer)
            .join(Answer)
            .where(Feedback.id > after_id)
            .order_by(Feedback.id)
        )
        with self._sessions() as session:
            return [
                FeedbackRow(
                    id=feedback.id,
                    request_id=feedback.request_id,
                    good=feedback.good,
                    correction=feedback.answer,
                    doc_id=feedback.doc_id,
                    question=answer.question,
                    answer=answer.answer,
                    sources=list(answer.sources),
                )
                for feedback, answer in session.execute(query)
            ]

    @property
    def where(self) -> str:
        """The database, for messages (without a password)."""
        return self._engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self._engine.dispose()


def feedback_record(row: FeedbackRow) -> tuple[QARecord | None, FeedbackUse]:
    """The QA record a feedback row teaches, and which kind of use it is.

    A correction with a doc id: the question, the corrected answer, that doc. A good answer: the
    question, the answer served, and the doc the person named, else the answer's top source.
    A bad answer without a correction says what not to answer, which no QA record can hold.
    """
    use: FeedbackUse
    if row.correction is not None:
        if row.doc_id is None:
            return None, "correction_without_doc"
        answer, doc_id, use = row.correction, row.doc_id, "correction"
    elif not row.good:
        return None, "bad_without_correction"
    else:
        doc_id = row.doc_id or (row.sources[0] if row.sources else None)
        if doc_id is None or not row.answer.strip():
            return None, "good_without_source"
        answer, use = row.answer, "good_answer"
    name = f"feedback-{row.id}"  # a group of its own: no other split can hold it
    record = QARecord(
        id=name, question=row.question, answers=[answer], doc_ids=[doc_id], group=name
    )
    return record, use


def trainable_feedback(store: FeedbackStore, after_id: int) -> int:
    """How many feedback rows newer than `after_id` would become QA records."""
    return sum(feedback_record(row)[1] in TRAINABLE for row in store.feedback_rows(after_id))


def consumed_feedback_id(project_dir: Path) -> int:
    """The highest feedback id the export of the last successful retrain had read (0: none)."""
    path = project_dir / CONSUMED_FILE
    if not path.is_file():
        return 0
    return int(json.loads(path.read_text(encoding="utf-8"))["max_feedback_id"])


def record_consumed_feedback(
    project_dir: Path, export_metrics: Path, flow_run_id: str | None
) -> int | None:
    """After a successful retrain: remember the feedback its export read (the export's
    `max_feedback_id`), so the watcher counts only newer feedback. None: no export ran."""
    if not export_metrics.is_file():
        return None
    max_id = int(json.loads(export_metrics.read_text(encoding="utf-8"))["max_feedback_id"])
    with atomic_path(project_dir / CONSUMED_FILE) as tmp:
        write_json(
            tmp,
            {
                "max_feedback_id": max_id,
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "flow_run_id": flow_run_id,
            },
        )
    return max_id
