"""The canonical record formats every stage reads and writes (see README, "Bring your own KB")."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from tasks.lib.core.io import read_jsonl, read_text, write_json

SPLITS = ("train", "dev", "test")
KB_SPLITS = ("train", "dev", "heldout")  # kb_questions, split by doc
QA_SOURCES_FILE = "source.json"  # in a QA folder: which kind of questions each split holds
QuestionKind = Literal["real", "generated", "description"]
_KIND_WORDS = {"real": "real", "generated": "generated", "description": "KB description"}
_SPLIT_ROLE = {"train": "train", "dev": "dev", "test": "held-out"}


class Doc(BaseModel):
    """A KB passage. Extra fields (description, topic, ...) are kept as they are."""

    model_config = ConfigDict(extra="allow")

    id: StrictStr
    title: StrictStr
    text: StrictStr
    source: StrictStr


class QARecord(BaseModel):
    """A question whose gold passages are `doc_ids`; `group` keeps related questions together."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr
    question: StrictStr
    answers: list[StrictStr]
    doc_ids: list[StrictStr]
    group: StrictStr
    answerable: bool | None = None

    @field_validator("doc_ids")
    @classmethod
    def _has_gold_doc(cls, doc_ids: list[str]) -> list[str]:
        """A question without a gold passage cannot be scored by any retrieval metric."""
        if not doc_ids:
            raise PydanticCustomError(
                "no_gold_doc",
                "is empty: a QA record needs the id of at least one KB doc that answers it "
                "(add it, or drop the record)",
            )
        return doc_ids


def normalize_question(question: str) -> str:
    """The form in which two spellings of one question compare equal."""
    return " ".join(question.casefold().split())


class QuarantinedDoc(BaseModel):
    """A doc validate set aside: the expectation (its `validate.on_failure` name) it failed, the
    checked column, the offending value (shortened) and the bound it broke."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr
    expectation: StrictStr
    column: StrictStr
    value: Any
    rule: dict[str, Any]


def read_docs(path: Path) -> list[Doc]:
    return read_jsonl(path, Doc)


def read_qa(path: Path, allow_empty: bool = False) -> list[QARecord]:
    return read_jsonl(path, QARecord, allow_empty)


def read_qa_splits(qa_dir: Path) -> dict[str, list[QARecord]]:
    """ingest's splits; all are empty when the KB came without a QA set."""
    return {split: read_qa(qa_dir / f"{split}.jsonl", allow_empty=True) for split in SPLITS}


def read_quarantine(path: Path) -> list[QuarantinedDoc]:
    return read_jsonl(path, QuarantinedDoc, allow_empty=True)


def unlink_docs(records: list[QARecord], gone: Collection[str]) -> tuple[list[QARecord], int, int]:
    """Remove the `gone` doc ids from the records' gold docs; a record left with no gold doc
    cannot be scored and is dropped. Returns the records, the unlinked and the dropped counts."""
    kept, unlinked = [], 0
    for record in records:
        doc_ids = [d for d in record.doc_ids if d not in gone]
        if len(doc_ids) == len(record.doc_ids):
            kept.append(record)
            continue
        unlinked += 1
        if doc_ids:
            kept.append(record.model_copy(update={"doc_ids": doc_ids}))
    return kept, unlinked, len(records) - len(kept)


def write_qa_sources(qa_dir: Path, kinds: dict[str, QuestionKind]) -> None:
    """`source.json` beside the splits: each split's kind and size (its records, counted)."""
    write_json(
        qa_dir / QA_SOURCES_FILE,
        {s: {"kind": kinds[s], "size": len(split)} for s, split in read_qa_splits(qa_dir).items()},
    )


def qa_sources(qa_dir: Path) -> dict[str, dict[str, str | int]]:
    """Split -> {"kind", "size"}; a QA folder without `source.json` (one written by hand, as
    ingest and dedup write theirs) holds real questions."""
    path = qa_dir / QA_SOURCES_FILE
    if path.is_file():
        return json.loads(read_text(path))
    return {s: {"kind": "real", "size": len(split)} for s, split in read_qa_splits(qa_dir).items()}


def qa_split_label(qa_dir: Path, split: str) -> str:
    """What a QA split holds, for a report: "test: generated held-out questions (150)"."""
    source = qa_sources(qa_dir)[split]
    kind = str(source["kind"])
    role = "" if kind == "real" else f" {_SPLIT_ROLE[split]}"
    return f"{split}: {_KIND_WORDS[kind]}{role} questions ({source['size']})"


def qa_sets_line(qa_dir: Path, splits: list[str] | tuple[str, ...]) -> str:
    """One report line naming the QA splits an evaluation used, with their kinds and sizes."""
    return "Question sets: " + "; ".join(qa_split_label(qa_dir, s) for s in splits)
