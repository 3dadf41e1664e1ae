"""Questions + their retrieved passages, as the generator stages consume them.

The generator stages never call the retriever: they read a contexts file (one
`{"id": question id, "doc_ids": [best first], "scores": [...]}` per line) that the retrieval
side writes for every question id (real QA splits and KB questions). That keeps the generator
independent of how retrieval is done, and lets DVC rerun it only when the contexts change.

The generator's training set is a folder of {train,dev}.jsonl items, each with its passages'
text (stage `generator_training_set`): `finetune_generator` reads nothing else of the KB, so it
retrains exactly when those bytes change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictStr

from tasks.lib.core.io import InputError, read_jsonl, write_jsonl
from tasks.lib.core.records import Doc, QARecord
from tasks.lib.generation.generator import GenerationItem, Passage

TRAINING_SPLITS = ("train", "dev")  # the files of a generator training set folder


class RetrievedContext(BaseModel):
    """Top-k doc ids for one question, best first; `scores` are informative only."""

    model_config = ConfigDict(extra="allow")

    id: StrictStr
    doc_ids: list[StrictStr]
    scores: list[float] | None = None


def read_contexts(path: Path) -> dict[str, list[str]]:
    return {c.id: c.doc_ids for c in read_jsonl(path, RetrievedContext)}


def with_gold(retrieved: list[str], gold: list[str], top_k: int) -> list[str]:
    """Top-k ids where, if no gold doc was retrieved, the first gold doc takes the last slot.

    Used only for training: a target whose evidence is absent teaches the model to guess.
    """
    top = retrieved[:top_k]
    if not gold or set(gold) & set(top):
        return top
    return [*top[: top_k - 1], gold[0]]


def generation_items(
    records: Iterable[QARecord],
    task: str | Callable[[QARecord], str],
    contexts: dict[str, list[str]],
    docs_by_id: dict[str, Doc],
    top_k: int,
    gold_passage: Literal["retrieved", "insert"] = "retrieved",
) -> list[GenerationItem]:
    """One item per record with its top-k passages; a record without contexts is an error, since
    silently answering it closed-book would flatter or hurt the RAG numbers. `task` is the
    generator task, or the function giving each record's (`tasks.lib.kb.questions`)."""
    items = []
    for record in records:
        if record.id not in contexts:
            raise InputError(f"retrieved contexts: no entry for question id {record.id!r}")
        doc_ids = contexts[record.id][:top_k]
        if gold_passage == "insert":
            doc_ids = with_gold(doc_ids, record.doc_ids, top_k)
        unknown = [d for d in doc_ids if d not in docs_by_id]
        if unknown:
            raise InputError(f"retrieved contexts: {record.id!r} cites unknown docs {unknown}")
        items.append(
            GenerationItem(
                id=record.id,
                task=task(record) if callable(task) else task,
                question=record.question,
                answers=tuple(record.answers),
                passages=tuple(Passage(docs_by_id[d].title, docs_by_id[d].text) for d in doc_ids),
                answerable=record.answerable,
            )
        )
    return items


class _PassageRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: StrictStr
    text: StrictStr


class ItemRow(BaseModel):
    """A `GenerationItem` as a line of a training set file."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr
    task: StrictStr
    question: StrictStr
    answers: list[StrictStr]
    passages: list[_PassageRow]
    answerable: bool | None

    def item(self) -> GenerationItem:
        return GenerationItem(
            id=self.id,
            task=self.task,
            question=self.question,
            answers=tuple(self.answers),
            passages=tuple(Passage(p.title, p.text) for p in self.passages),
            answerable=self.answerable,
        )


def write_items(path: Path, items: Sequence[GenerationItem]) -> None:
    """One item a line, fields in a fixed order: the same items are the same bytes."""
    write_jsonl(path, [asdict(item) for item in items])


def read_items(path: Path) -> list[GenerationItem]:
    return [row.item() for row in read_jsonl(path, ItemRow)]
