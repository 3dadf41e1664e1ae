"""Questions the KB answers itself: "What is <title>?" -> the doc's human-written description.

`kb_questions` makes its generator training and evaluation sets from them (or, for a KB without
descriptions, from generated triples: `tasks.lib.kb.generated`); `refresh_questions` asks them
about the docs a KB change added or modified.
"""

from __future__ import annotations

from tasks.lib.core.answers import answer_in_text
from tasks.lib.core.config import KbQuestionsParams
from tasks.lib.core.records import Doc, QARecord

DESCRIPTION_PREFIX = "kb:"  # id prefix of a description question
GENERATED_PREFIX = "gen:"  # id prefix of a generated (question, answer, passage) triple


def generator_task(record: QARecord) -> str:
    """The generator task (instruction) a question is asked with: a description question wants
    a short description, every other question (real, generated) a short answer."""
    return "describe" if record.id.startswith(DESCRIPTION_PREFIX) else "qa"


def description_of(doc: Doc) -> str:
    return str(getattr(doc, "description", "") or "").strip()


def eligible_docs(docs: list[Doc], params: KbQuestionsParams, excluded: set[str]) -> list[Doc]:
    """Docs whose description is a usable answer: present, of bounded length, not a wiki stub."""
    keep = []
    for doc in docs:
        words = len(description_of(doc).split())
        if doc.id in excluded or not params.min_words <= words <= params.max_words:
            continue
        if "wikimedia" in description_of(doc).lower():
            continue
        keep.append(doc)
    return keep


def title_question(doc: Doc, template: str) -> QARecord:
    """ "What is <title>?" with no reference answer: a retrieval probe for any doc, described
    or not (the retriever must find the doc its question names)."""
    return QARecord(
        id=f"title:{doc.id}",
        question=template.format(title=doc.title),
        answers=[],
        doc_ids=[doc.id],
        group=f"title:{doc.id}",
    )


def description_question(doc: Doc, template: str) -> QARecord:
    description = description_of(doc)
    return QARecord(
        id=f"{DESCRIPTION_PREFIX}{doc.id}",
        question=template.format(title=doc.title),
        answers=[description],
        doc_ids=[doc.id],
        group=f"{DESCRIPTION_PREFIX}{doc.id}",
        answerable=answer_in_text(description, doc.text),
    )
