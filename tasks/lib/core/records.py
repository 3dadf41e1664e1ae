"""The canonical record formats every stage reads and writes (see README, "Bring your own KB")."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, StrictStr

from tasks.lib.core.io import read_jsonl

SPLITS = ("train", "dev", "test")
KB_SPLITS = ("train", "dev", "heldout")  # kb_questions, split by doc


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


def read_docs(path: Path) -> list[Doc]:
    return read_jsonl(path, Doc)


def read_qa(path: Path) -> list[QARecord]:
    return read_jsonl(path, QARecord)


def read_qa_splits(qa_dir: Path) -> dict[str, list[QARecord]]:
    return {split: read_qa(qa_dir / f"{split}.jsonl") for split in SPLITS}
